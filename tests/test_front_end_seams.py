"""The library calls the front ends share: the prompt decision (`prompt.PromptInput`), the bench's
options (`bench.command.BenchOptions`), MODEL -> folder (`provision.model_folder`), the common
prefix of two id lists (`cache.common_prefix`), and `specdec generate`'s one call (`oneshot`)."""

import inspect
import json
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from mlx_specdec import provision
from mlx_specdec.bench import protocol
from mlx_specdec.bench.command import SYNTHETIC_ONLY, BenchOptions
from mlx_specdec.cache import common_prefix
from mlx_specdec.cli import app, bench
from mlx_specdec.errors import SpecdecError
from mlx_specdec.prompt import PromptInput
from mlx_specdec.settings import GenerationSettings

from .conftest import DRAFTERS, TARGET


class FakeTokenizer:
    """A template that wraps the user text in markers, and an encoder of one id per character."""

    chat_template = "fake"

    def encode(self, text):
        return [ord(c) for c in text]

    def apply_chat_template(self, messages, add_generation_prompt=True, **extra):
        return self.encode("<" + messages[-1]["content"] + ">")


# --- the prompt: text, raw text or ids -> ids, decided in one place ------------------------------
def test_prompt_text_goes_through_the_chat_template_and_raw_text_does_not():
    tok = FakeTokenizer()
    assert PromptInput(text="hi").encode(tok) == tok.encode("<hi>")
    assert PromptInput(text="hi", raw=True).encode(tok) == tok.encode("hi")


def test_prompt_ids_as_text_are_parsed_at_construction_and_used_as_they_are():
    source = PromptInput(ids="2, 100,200")
    assert source.ids == [2, 100, 200]
    assert source.encode(FakeTokenizer()) == [2, 100, 200]
    assert PromptInput(ids=(5, 6)).encode(FakeTokenizer()) == [5, 6]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "give exactly one of --prompt TEXT or --prompt-ids 1,2,3"),
        ({"text": "hi", "ids": "2"}, "give exactly one of --prompt TEXT or --prompt-ids 1,2,3"),
        ({"ids": "2", "raw": True}, "--raw applies to --prompt text; token ids never get the chat template"),
        ({"ids": "2,,3"}, "--prompt-ids has an empty entry in '2,,3'; separate the ids with single commas"),
    ],
)
def test_prompt_input_refuses_a_bad_combination_in_one_line(kwargs, message):
    with pytest.raises(SpecdecError) as e:
        PromptInput(**kwargs)
    assert str(e.value) == message


def test_bench_encodes_its_prompts_as_generate_does():
    bundle = SimpleNamespace(tokenizer=FakeTokenizer())
    for raw in (False, True):
        assert protocol.encode_prompt(bundle, "abc", raw) == PromptInput(text="abc", raw=raw).encode(bundle.tokenizer)


# --- bench options: one record checks how they combine -------------------------------------------
def test_bench_options_defaults_are_the_commands_defaults():
    cli = {p.name: p.default for p in inspect.signature(bench).parameters.values()}
    opts = BenchOptions()
    # The command line spells a few options as their negation (--no-mlx-lm, --no-auto).
    assert (opts.mlx_lm, opts.auto) == (not cli["no_mlx_lm"], not cli["no_auto"])
    for name in ("ks", "max_tokens", "trials", "bits", "prompt_tokens", "acceptance", "synthetic", "raw"):
        assert getattr(opts, name) == cli[name], name


@pytest.mark.parametrize("field, value", [("acceptance", "0.5"), ("auto", False), ("bits", 8), ("prompt_tokens", 9)])
def test_a_synthetic_only_option_without_synthetic_is_refused(field, value):
    assert set(SYNTHETIC_ONLY) == {"acceptance", "auto", "bits", "prompt_tokens"}
    with pytest.raises(SpecdecError) as e:
        BenchOptions(demo=True, **{field: value})
    assert str(e.value) == "--acceptance, --no-auto, --bits and --prompt-tokens need --synthetic NAME"
    BenchOptions(synthetic="e2b", **{field: value})  # with --synthetic: accepted


@pytest.mark.parametrize("model", [{"model": "e2b"}, {"target": TARGET}, {"drafter": TARGET}, {"demo": True}])
def test_synthetic_with_a_model_is_refused(model):
    with pytest.raises(SpecdecError, match=r"^give either --synthetic NAME or a model .*, not both$"):
        BenchOptions(synthetic="e2b", **model)


# --- MODEL -> folder ------------------------------------------------------------------------------
def test_model_folder_leaves_no_model_to_the_caller():
    assert provision.model_folder(None) is None


def test_model_folder_refuses_a_folder_that_does_not_fit_the_memory_given():
    with pytest.raises(SpecdecError) as e:
        provision.model_folder(str(TARGET), max_context=64, available=1 << 20)
    assert str(e.value).startswith(f"{TARGET} with a 64-token context needs 0.5 GB")


# --- the common prefix the prompt cache and the server's pool both use ----------------------------
@pytest.mark.parametrize(
    "a, b, n", [([], [1], 0), ([1, 2, 3], [1, 2, 3], 3), ([1, 2, 3], [1, 2], 2), ([1, 2], [1, 3, 2], 1), ([4], [5], 0)]
)
def test_common_prefix_counts_the_leading_ids_both_share(a, b, n):
    assert common_prefix(a, b) == n


# --- specdec generate's one call -----------------------------------------------------------------
def test_generate_command_prints_what_the_library_call_returns():
    from mlx_specdec.oneshot import generate_records, json_document

    settings = GenerationSettings(max_tokens=6, draft=2)
    records = list(generate_records(PromptInput(ids="2,40,41"), settings, target=TARGET, drafter=DRAFTERS["dense"]))
    args = ["generate", "--target", str(TARGET), "--drafter", str(DRAFTERS["dense"]), "--prompt-ids", "2,40,41"]
    r = CliRunner().invoke(app, args + ["-m", "6", "-k", "2", "--json", "--trace"])
    assert r.exit_code == 0, r.output
    out, doc = json.loads(r.stdout), json_document(records, trace=True)
    assert out["token_ids"] == doc["token_ids"] and out["text"] == doc["text"]
    assert [x["drafted"] for x in out["rounds"]] == [x["drafted"] for x in doc["rounds"]]
