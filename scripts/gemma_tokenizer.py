"""Build a small Gemma 4-style tokenizer (sentencepiece BPE, byte fallback) from plain text.

Shared by the scripts that make real-but-tiny Gemma 4 checkpoints: scripts/train_demo_pair.py
and scripts/make_reference_fixtures.py. The result loads offline with
`transformers.AutoTokenizer.from_pretrained(folder)` and `mlx_lm.tokenizer_utils.load(folder)`.

Conventions (Gemma's, at a small scale):
- ids 0..3 are `<pad>`, `<eos>`, `<bos>`, `<unk>`, then USER_SYMBOLS in order: `<mask>` 4,
  `<|turn>` 5, `<turn|>` 6 (end of turn), `<|channel>` 7, `<channel|>` 8. Real Gemma 4 puts the
  turn tokens at other ids: read ids from the tokenizer or config, never hard-code them;
- Gemma 4's turn format (transformers/cli/serving/utils.py, gemma4 entry):
  `<bos><|turn>user\\n{content}<turn|>\\n<|turn>model\\n` (CHAT_TEMPLATE, stored inside
  tokenizer_config.json), with the real template's system turn, tool declarations, tool calls,
  tool responses and `enable_thinking` (see CHAT_TEMPLATE);
- no normalisation, no dummy prefix, digits split, whitespace-only pieces allowed; a newline
  is the byte-fallback piece `<0x0A>` (sentencepiece trains on single lines).
Deterministic: seeded trainer, one thread, input order kept, relative paths in the model file,
no run-specific keys in tokenizer_config.json. The stop ids are [<eos>, <turn|>]
(`end_of_turn_ids`); callers write them into config.json / generation_config.json.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

TURN_START, TURN_END = "<|turn>", "<turn|>"
USER_SYMBOLS = ["<mask>", TURN_START, TURN_END, "<|channel>", "<channel|>"]
# Gemma 4's chat template, reduced to what the tiny checkpoints need but with the real one's
# structure (google/gemma-4-*-it chat_template.jinja): a system turn for the system prompt, tool
# declarations and `<|think|>` (enable_thinking); assistant tool calls
# `<|tool_call>call:NAME{key:<|"|>text<|"|>}<tool_call|>` followed in the same model turn by the
# `role: tool` answers `<|tool_response>response:NAME{value:<|"|>...<|"|>}<tool_response|>`;
# thinking stripped from earlier answers; no generation prompt after tool responses (the model
# continues its turn). Simplified: declarations render `parameters` with format_argument (the
# real template upper-cases types); no images. Without tools and thinking it renders exactly
# the turns `<|turn>ROLE\n{content}<turn|>\n` of the first version.
CHAT_TEMPLATE = """\
{%- macro format_argument(argument) -%}
{%- if argument is string -%}{{- '<|"|>' + argument + '<|"|>' -}}
{%- elif argument is boolean -%}{{- 'true' if argument else 'false' -}}
{%- elif argument is mapping -%}{{- '{' -}}
{%- for key, value in argument | dictsort -%}{{- key + ':' + format_argument(value) -}}{{- ',' if not loop.last -}}{%- endfor -%}
{{- '}' -}}
{%- elif argument is iterable -%}{{- '[' -}}
{%- for item in argument -%}{{- format_argument(item) -}}{{- ',' if not loop.last -}}{%- endfor -%}
{{- ']' -}}
{%- else -%}{{- argument -}}{%- endif -%}
{%- endmacro -%}
{%- macro strip_thinking(text) -%}
{%- set ns = namespace(result='') -%}
{%- for part in text.split('<channel|>') -%}
{%- if '<|channel>' in part -%}{%- set ns.result = ns.result + part.split('<|channel>')[0] -%}
{%- else -%}{%- set ns.result = ns.result + part -%}{%- endif -%}
{%- endfor -%}
{{- ns.result | trim -}}
{%- endmacro -%}
{%- set ns = namespace(prev_message_type=None) -%}
{%- set loop_messages = messages -%}
{{- bos_token -}}
{%- if (enable_thinking is defined and enable_thinking) or tools or messages[0]['role'] in ['system', 'developer'] -%}
{{- '<|turn>system\\n' -}}
{%- if enable_thinking is defined and enable_thinking -%}{{- '<|think|>\\n' -}}{%- endif -%}
{%- if messages[0]['role'] in ['system', 'developer'] -%}
{{- messages[0]['content'] | trim -}}
{%- set loop_messages = messages[1:] -%}
{%- endif -%}
{%- for tool in tools or [] -%}
{{- '<|tool>declaration:' + tool['function']['name'] + '{description:<|"|>' + (tool['function']['description'] or '') + '<|"|>' -}}
{%- if tool['function']['parameters'] -%}{{- ',parameters:' + format_argument(tool['function']['parameters']) -}}{%- endif -%}
{{- '}<tool|>' -}}
{%- endfor -%}
{{- '<turn|>\\n' -}}
{%- endif -%}
{%- for message in loop_messages -%}
{%- if message['role'] != 'tool' -%}
{%- set ns.prev_message_type = None -%}
{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
{%- set prev = namespace(role=None) -%}
{%- for j in range(loop.index0) -%}{%- if loop_messages[j]['role'] != 'tool' -%}{%- set prev.role = loop_messages[j]['role'] -%}{%- endif -%}{%- endfor -%}
{%- if not (role == 'model' and prev.role == 'assistant') -%}{{- '<|turn>' + role + '\\n' -}}{%- endif -%}
{%- set responded = namespace(flag=false, scan=true) -%}
{%- if message['tool_calls'] -%}
{%- for tool_call in message['tool_calls'] -%}
{%- set function = tool_call['function'] -%}
{{- '<|tool_call>call:' + function['name'] + '{' -}}
{%- if function['arguments'] is mapping -%}
{%- for key, value in function['arguments'] | dictsort -%}{{- key + ':' + format_argument(value) -}}{{- ',' if not loop.last -}}{%- endfor -%}
{%- elif function['arguments'] is string -%}{{- function['arguments'] -}}
{%- endif -%}
{{- '}<tool_call|>' -}}
{%- endfor -%}
{%- set ns.prev_message_type = 'tool_call' -%}
{%- for k in range(loop.index0 + 1, loop_messages | length) -%}
{%- if responded.scan and loop_messages[k]['role'] == 'tool' -%}
{%- set follow = loop_messages[k] -%}
{%- set tname = namespace(name=follow.get('name') or 'unknown') -%}
{%- for tc in message['tool_calls'] -%}{%- if tc.get('id') and tc.get('id') == follow.get('tool_call_id') -%}{%- set tname.name = tc['function']['name'] -%}{%- endif -%}{%- endfor -%}
{{- '<|tool_response>response:' + tname.name + '{value:' + format_argument(follow['content']) + '}<tool_response|>' -}}
{%- set responded.flag = true -%}
{%- set ns.prev_message_type = 'tool_response' -%}
{%- else -%}{%- set responded.scan = false -%}
{%- endif -%}
{%- endfor -%}
{%- endif -%}
{%- set content = (strip_thinking(message['content']) if role == 'model' else message['content'] | trim) if message['content'] is string else '' -%}
{{- content -}}
{%- if ns.prev_message_type == 'tool_call' and not responded.flag -%}{{- '<|tool_response>' -}}
{%- elif not (responded.flag and not content) -%}{{- '<turn|>\\n' -}}
{%- endif -%}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt and ns.prev_message_type != 'tool_response' and ns.prev_message_type != 'tool_call' -%}
{{- '<|turn>model\\n' -}}
{%- endif -%}
"""


def train_sentencepiece(lines: Iterable[str], vocab_size: int, work: Path, seed: int) -> Path:
    """Train the sentencepiece BPE model on `lines` (one sentence each, no newlines).

    vocab_size counts every piece (specials, 256 bytes, merges). Returns work/tokenizer.model.
    """
    import sentencepiece as spm

    spm.set_random_generator_seed(seed)  # the trainer otherwise seeds from the clock
    corpus = Path(work) / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    # Relative paths: the trainer records them in the model file, which must not vary per run.
    with contextlib.chdir(work):
        spm.SentencePieceTrainer.train(
            input="corpus.txt",
            model_prefix="tokenizer",
            model_type="bpe",
            vocab_size=vocab_size,
            byte_fallback=True,
            character_coverage=1.0,
            pad_id=0,
            eos_id=1,
            bos_id=2,
            unk_id=3,
            pad_piece="<pad>",
            eos_piece="<eos>",
            bos_piece="<bos>",
            unk_piece="<unk>",
            user_defined_symbols=USER_SYMBOLS,
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            normalization_rule_name="identity",
            num_threads=1,
            shuffle_input_sentence=False,
            input_sentence_size=0,
            seed_sentencepiece_size=100_000,
            minloglevel=2,
        )
    return Path(work) / "tokenizer.model"


def build_hf_tokenizer(sp_model: Path, work: Path):
    """Convert the sentencepiece model into a transformers GemmaTokenizer with a chat template."""
    from transformers import AutoTokenizer

    src = Path(work) / "tok_src"
    src.mkdir()
    shutil.copy(sp_model, src / "tokenizer.model")
    (src / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "GemmaTokenizer",
                "bos_token": "<bos>",
                "eos_token": "<eos>",
                "pad_token": "<pad>",
                "unk_token": "<unk>",
                "mask_token": "<mask>",
                "add_bos_token": True,
                "add_eos_token": False,
            }
        )
    )
    tok = AutoTokenizer.from_pretrained(str(src))
    tok.add_special_tokens({"additional_special_tokens": USER_SYMBOLS[1:]})
    tok.chat_template = CHAT_TEMPLATE
    return tok


def save_tokenizer(tok, sp_model: Path, folder: Path) -> None:
    """tokenizer.model + tokenizer.json + tokenizer_config.json (chat template inside it)."""
    tok.save_pretrained(str(folder))
    shutil.copy(sp_model, folder / "tokenizer.model")
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    for k in ("vocab_file", "is_local", "local_files_only"):  # run-specific paths and flags
        cfg.pop(k, None)
    cfg["chat_template"] = CHAT_TEMPLATE
    cfg["add_bos_token"] = True
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    (folder / "chat_template.jinja").unlink(missing_ok=True)


def end_of_turn_ids(tok) -> list[int]:
    """The ids that end a generation: [<eos>, <turn|>]."""
    return [tok.eos_token_id, tok.convert_tokens_to_ids(TURN_END)]


def build_tokenizer(lines: Iterable[str], vocab_size: int, out_dir: str | Path, seed: int = 0):
    """Train, convert and save a tokenizer into out_dir; returns the transformers tokenizer."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        sp_model = train_sentencepiece(lines, vocab_size, Path(work), seed)
        tok = build_hf_tokenizer(sp_model, Path(work))
        save_tokenizer(tok, sp_model, out_dir)
    return tok
