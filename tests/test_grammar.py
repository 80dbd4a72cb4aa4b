"""Structured output: grammar masks on the target's rows, advanced along accepted drafts (grammar.py)."""

import json

import jsonschema
import mlx.core as mx
import numpy as np
import pytest

from mlx_specdec.cache import PromptCache
from mlx_specdec.decode import generate, stream_generate
from mlx_specdec.errors import SpecdecError
from mlx_specdec.grammar import Constraint
from mlx_specdec.prompt import chat_ids
from mlx_specdec.sampling import SamplingParams
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
