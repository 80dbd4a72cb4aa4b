"""Structured output: grammar masks on the target's rows, advanced along accepted drafts (grammar.py)."""

import json

import jsonschema
import mlx.core as mx
import numpy as np
import pytest

from mlx_specdec.cache import PromptCache
from mlx_specdec.decode import generate, stream_generate
from mlx_specdec.errors import SpecdecError
from mlx_specdec.gemma_format import TOOL_END, Markup, parse, tool_call_grammar
from mlx_specdec.grammar import Constraint
from mlx_specdec.prompt import chat_ids
from mlx_specdec.sampling import SamplingParams
from mlx_specdec.serve.api import parse_chat
from mlx_specdec.settings import GenerationSettings

from .helpers.stats import chi2_critical, two_sample_chi_square

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def demo():
    from mlx_specdec.load import load

    return load(demo=True)


def ask(demo, text="Give me a person as JSON with a name and an age."):
    return chat_ids(demo.tokenizer, [{"role": "user", "content": text}])


def test_greedy_constrained_speculative_output_equals_constrained_plain_and_validates(demo):
    grammar = ("json_schema", json.dumps(PERSON))
    plain = generate(demo, ask(demo), GenerationSettings(max_tokens=60, draft=0, grammar=grammar))
    jsonschema.validate(json.loads(plain.text), PERSON)
    for k in (1, 3, 8):
        spec = generate(demo, ask(demo), GenerationSettings(max_tokens=60, draft=k, grammar=grammar))
        assert spec.tokens == plain.tokens, k


def test_a_finished_schema_ends_the_output_and_json_mode_starts_an_object(demo):
    grammar = ("json_schema", json.dumps(PERSON))
    records = list(stream_generate(demo, ask(demo), GenerationSettings(max_tokens=80, draft=3, grammar=grammar)))
    assert records[-1].finish_reason == "stop" and len(records) < 80
    jsonschema.validate(json.loads("".join(r.text for r in records)), PERSON)
    text = generate(demo, ask(demo), GenerationSettings(max_tokens=8, draft=3, grammar=("json", ""))).text
    assert text.startswith("{")


def test_seeded_constrained_output_is_the_same_whatever_the_draft_schedule(demo):
    def run(k):
        sampling = SamplingParams(temp=0.8, seed=4)
        settings = GenerationSettings(max_tokens=40, draft=k, sampling=sampling, grammar=("regex", r"[a-z ]{5,60}\."))
        return generate(demo, ask(demo, "Describe the sea."), settings)

    plain = run(0)
    assert [run(k).tokens for k in (2, 6)] == [plain.tokens] * 2
    assert plain.text[-1] == "." or len(plain.tokens) == 40


def test_drafts_the_grammar_forbids_are_cut_and_the_state_is_kept(demo):
    c = Constraint(demo.tokenizer, demo.target.vocab_size, "json", "", demo.tokenizer.eos_token_id)
    ok = demo.tokenizer.encode('{"a":1', add_special_tokens=False)
    bad = demo.tokenizer.encode("zz", add_special_tokens=False)
    v, masks = c.masks(ok + bad + ok)
    assert v == len(ok) and masks.shape == (len(ok) + 1, demo.target.vocab_size)
    assert bool(masks[0, ok[0]]) and not bool(masks[-1, bad[0]])
    assert c.masks(ok)[0] == len(ok)  # rolled back: the same drafts are allowed again


@pytest.mark.parametrize(
    "grammar, message",
    [
        (("yaml", ""), "grammar kind must be one of json, json_schema, regex, lark, not 'yaml'"),
        (
            ("json_schema", "{not json"),
            "the JSON schema is not JSON (Expecting property name enclosed in double quotes",
        ),
        (("json_schema", "[1]"), "a JSON schema is an object, not list"),
        ("json", "grammar must be (kind, text), not 'json'"),
    ],
)
def test_a_bad_grammar_is_one_line_before_any_model(grammar, message):
    with pytest.raises(SpecdecError) as e:
        GenerationSettings(grammar=grammar)
    assert str(e.value).startswith(message)


def test_a_grammar_that_does_not_compile_is_one_line(demo):
    with pytest.raises(SpecdecError, match="^the grammar does not compile"):
        Constraint(demo.tokenizer, demo.target.vocab_size, "lark", "start: ???", demo.tokenizer.eos_token_id)


# --- strict tool parameters: a forced call in Gemma 4's syntax, its arguments from the schema ---
WEATHER = {
    "type": "object",
    "properties": {"days": {"type": "integer"}, "unit": {"enum": ["c", "f"]}},
    "required": ["days", "unit"],
    "additionalProperties": False,
}
ZONE = {"type": "object", "properties": {"zone": {"enum": ["utc", "cet"]}}, "required": ["zone"]}
NESTED = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 4},
        "at": {"type": "object", "properties": {"h": {"type": "number"}}, "required": ["h"]},
        "tags": {"type": "array", "items": {"type": ["string", "null"]}},
        "ok": {"type": "boolean"},
    },
    "required": ["city", "ok"],
    "additionalProperties": False,
}


def forced_call(demo, tool_choice, strict=True, schemas=(("get_weather", WEATHER), ("get_time", ZONE))):
    """(request, prompt ids with the forced start, grammar) of a chat request forcing a tool call."""
    tools = [{"type": "function", "function": {"name": n, "parameters": p, "strict": strict}} for n, p in schemas]
    body = {"messages": [{"role": "user", "content": "Weather?"}], "tools": tools, "tool_choice": tool_choice}
    req = parse_chat(body, "demo")
    ids = chat_ids(demo.tokenizer, req.messages, tools=req.tools)
    ids += demo.tokenizer.encode(req.forced_prefix, add_special_tokens=False)
    return req, ids, req.tool_grammar(Markup.for_tokenizer(demo.tokenizer))


@pytest.mark.slow  # the quick loop keeps a cheaper check of this idea
def test_a_forced_strict_tool_call_validates_against_its_schema_and_speculative_equals_plain(demo):
    choice = {"type": "function", "function": {"name": "get_weather"}}
    req, ids, grammar = forced_call(demo, choice, schemas=[("get_weather", WEATHER)])
    pc = PromptCache(demo)  # the prompt is prefilled once
    plain = generate(demo, ids, GenerationSettings(max_tokens=40, draft=0, grammar=grammar), prompt_cache=pc)
    spec = generate(demo, ids, GenerationSettings(max_tokens=40, draft=3, grammar=grammar), prompt_cache=pc)
    assert spec.tokens == plain.tokens
    assert plain.text.endswith(TOOL_END)  # the grammar closed the call, and ended the output
    [call] = parse(req.forced_prefix + plain.text).tool_calls
    assert call.name == "get_weather"
    jsonschema.validate(json.loads(call.arguments), WEATHER)


@pytest.mark.slow  # the quick loop keeps a cheaper check of this idea
def test_tool_choice_required_with_strict_tools_calls_one_of_them_with_valid_arguments(demo):
    req, ids, grammar = forced_call(demo, "required")
    out = generate(demo, ids, GenerationSettings(max_tokens=40, draft=3, grammar=grammar))
    [call] = parse(req.forced_prefix + out.text).tool_calls
    jsonschema.validate(json.loads(call.arguments), {"get_weather": WEATHER, "get_time": ZONE}[call.name])


@pytest.mark.parametrize(
    "arguments, valid",
    [
        ('city:<|"|>a b<|"|>,ok:true,tags:[<|"|>x<y<|"|>]}', True),
        ('at:{h:-1.5e3},city:<|"|><|"|>,ok:false,tags:[<|"|>x<|"|>,null]}', True),
        ('city:<|"|>Paris<|"|>,ok:true}', False),  # longer than maxLength
        ("ok:true}", False),  # a required property missing
        ('ok:true,city:<|"|>a<|"|>}', False),  # not in the template's (sorted) order
        ('city:<|"|>a<|"|>,ok:true,x:1}', False),  # a property not in the schema
        ('at:{},city:<|"|>a<|"|>,ok:true}', False),  # the nested required property missing
    ],
)
def test_a_strict_tool_grammar_takes_exactly_the_gemma_arguments_that_validate(demo, arguments, valid):
    _, _, grammar = forced_call(demo, {"type": "function", "function": {"name": "f"}}, schemas=[("f", NESTED)])
    c = Constraint(demo.tokenizer, demo.target.vocab_size, *grammar, demo.tokenizer.eos_token_id)
    ids = demo.tokenizer.encode(arguments + TOOL_END, add_special_tokens=False)
    assert all(c.matcher.consume_token(t) for t in ids) == valid
    if valid:
        assert c.done
        jsonschema.validate(json.loads(parse("<|tool_call>call:f{" + arguments).tool_calls[0].arguments), NESTED)


def special_marker_tokenizer(demo):
    """The demo's tokenizer with <|"|>, <|tool_call> and <tool_call|> as special tokens, as Gemma 4's
    has them (the demo's spells them out): a grammar must ask for those tokens."""
    import copy

    hf = copy.deepcopy(demo.tokenizer._tokenizer)
    hf.add_special_tokens({"additional_special_tokens": ['<|"|>', "<|tool_call>", TOOL_END]})
    return hf


def takes(tokenizer, n_vocab, grammar, text) -> bool:
    """Whether a fresh matcher of `grammar` takes `text` and then the end of output (id 1).
    tokenizer: a transformers one."""
    import llguidance.hf

    ll = llguidance.hf.from_tokenizer(tokenizer, n_vocab=n_vocab, eos_token=1)
    matcher = llguidance.LLMatcher(ll, llguidance.grammar_from("lark", grammar))
    ids = tokenizer.encode(text, add_special_tokens=False)
    return all(matcher.consume_token(t) for t in ids) and matcher.consume_token(1)


def test_the_strict_grammar_reads_markers_that_are_special_tokens_as_those_tokens(demo):
    hf = special_marker_tokenizer(demo)
    markup = Markup.for_tokenizer(hf)
    assert sorted(markup.one_token.values()) == [len(hf) - 3, len(hf) - 2, len(hf) - 1]
    grammar = tool_call_grammar({"f": NESTED}, "f", markup)
    assert takes(hf, len(hf), grammar, 'city:<|"|>a b<|"|>,ok:true,tags:[<|"|>x<y<|"|>]}' + TOOL_END)
    assert not takes(hf, len(hf), grammar, "ok:true}" + TOOL_END)


AUTO_CASES = [
    ("No call here, only <| text and <tool_call|>.", True),
    ('<|channel>thought\nhm<channel|>Sure.<|tool_call>call:t{zone:<|"|>utc<|"|>}<tool_call|>Done.', True),
    ('<|tool_call>call:f{city:<|"|>ab<|"|>,ok:true}<tool_call|><|tool_call>call:any{x:[1]}<tool_call|>', True),
    ('Sure.<|tool_call>call:t{zone:<|"|>mars<|"|>}<tool_call|>', False),  # not in the enum
    ("Sure.<|tool_call>call:nope{}<tool_call|>", False),  # not one of the tools
    ("Sure.<|tool_call>call:t{}<tool_call|>", False),  # a required property missing
]


@pytest.mark.parametrize("special_markers", [False, True])
def test_with_tool_choice_auto_text_stays_free_and_every_call_follows_its_tools_schema(demo, special_markers):
    tok = special_marker_tokenizer(demo) if special_markers else demo.tokenizer._tokenizer
    n_vocab = len(tok) if special_markers else demo.target.vocab_size
    grammar = tool_call_grammar({"f": NESTED, "t": ZONE, "any": None}, None, Markup.for_tokenizer(tok), free_text=True)
    assert [takes(tok, n_vocab, grammar, text) for text, _ in AUTO_CASES] == [valid for _, valid in AUTO_CASES]


def test_with_tool_choice_auto_and_strict_tools_speculative_free_text_equals_unconstrained_plain(demo):
    req, ids, grammar = forced_call(demo, "auto", schemas=[("get_time", ZONE)])
    assert grammar[0] == "lark"
    pc = PromptCache(demo)  # the prompt is prefilled once
    free = generate(demo, ids, GenerationSettings(max_tokens=24, draft=0), prompt_cache=pc)
    spec = generate(demo, ids, GenerationSettings(max_tokens=24, draft=3, grammar=grammar), prompt_cache=pc)
    assert spec.tokens == free.tokens


def test_a_forced_call_to_a_tool_that_is_not_strict_is_not_constrained(demo):
    assert forced_call(demo, {"type": "function", "function": {"name": "get_weather"}}, strict=False)[2] is None
    assert forced_call(demo, "auto", strict=False)[2] is None


@pytest.mark.slow
def test_constrained_speculative_sampling_keeps_the_masked_target_distribution(demo):
    """Two-sample chi-square at p = 0.001 on tokens 2 and 3 (speculative rounds), unseeded
    (rejection sampling against the masked target), plain against k = 3."""
    ids, runs = ask(demo, "Describe the sea."), 100
    grammar = ("regex", r"[a-z]+ [a-z]+ [a-z ]+")

    def outputs(k):
        out, pc = [], PromptCache(demo)  # the prompt is prefilled once per k
        for seed in range(runs):
            mx.random.seed(10_000 * k + seed)
            sampling = SamplingParams(temp=1.0, top_k=4)
            settings = GenerationSettings(max_tokens=3, draft=k, sampling=sampling, grammar=grammar)
            out.append(generate(demo, ids, settings, prompt_cache=pc).tokens)
        return np.array(out)

    plain, spec = outputs(0), outputs(3)
    for col in (1, 2):
        stat, n = two_sample_chi_square(plain[:, col], spec[:, col])
        assert n >= 3
        assert stat < chi2_critical(n - 1), col
