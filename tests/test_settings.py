"""Settings are validated once, in one line that names the option, before any model loads."""

import math

import mlx.core as mx
import numpy as np
import pytest

from mlx_specdec.errors import SpecdecError
from mlx_specdec.sampling import probs
from mlx_specdec.settings import GenerationSettings, SamplingParams, parse_draft


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temp": -1.0}, "--temp must be a number >= 0 (0 is greedy), not -1.0"),
        ({"temp": math.nan}, "--temp must be a number >= 0 (0 is greedy), not nan"),
        ({"temp": math.inf}, "--temp must be a number >= 0 (0 is greedy), not inf"),
        ({"top_p": 0.0}, "--top-p must be in (0, 1] (1 turns it off), not 0.0"),
        ({"top_p": 2.0}, "--top-p must be in (0, 1] (1 turns it off), not 2.0"),
        ({"min_p": 1.5}, "--min-p must be in [0, 1] (0 turns it off), not 1.5"),
        ({"top_k": -3}, "--top-k must be a whole number >= 0 (0 turns it off), not -3"),
        ({"seed": -1}, "--seed must be a whole number from 0 to 2^64 - 1, not -1"),
        ({"seed": 2**64}, f"--seed must be a whole number from 0 to 2^64 - 1, not {2**64}"),
    ],
)
def test_sampling_params_refuse_out_of_range_values_in_one_line(kwargs, message):
    with pytest.raises(SpecdecError) as e:
        SamplingParams(**kwargs)
    assert str(e.value) == message


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_tokens": 0}, "--max-tokens must be a whole number >= 1, not 0"),
        ({"max_tokens": -5}, "--max-tokens must be a whole number >= 1, not -5"),
        ({"max_context": 0}, "--max-context must be a whole number >= 2 (or left out for the model's limit), not 0"),
        ({"max_context": -5}, "--max-context must be a whole number >= 2 (or left out for the model's limit), not -5"),
        ({"draft": 9}, "draft tokens must be 0-8, 'auto' or 'off', not '9'"),
    ],
)
def test_generation_settings_refuse_bad_values_in_one_line(kwargs, message):
    with pytest.raises(SpecdecError) as e:
        GenerationSettings(**kwargs)
    assert str(e.value) == message


def test_context_above_the_models_limit_is_refused():
    s = GenerationSettings(max_context=5000)
    with pytest.raises(
        SpecdecError, match=r"^--max-context 5000 is more than the model's 4096 positions; use at most 4096$"
    ):
        s.context_limit({"max_position_embeddings": 4096})
    assert GenerationSettings().context_limit({"max_position_embeddings": 4096}) == 4096
    assert GenerationSettings(max_context=100).context_limit({"max_position_embeddings": 4096}) == 100


def test_largest_seed_and_extreme_valid_values_are_accepted():
    SamplingParams(seed=2**64 - 1, top_p=1.0, min_p=1.0, temp=1e-30)
    mx.random.seed(2**64 - 1)


def test_parse_draft_reads_k_auto_and_off():
    assert parse_draft("auto") == "auto" and parse_draft("off") == 0 and parse_draft(" 4 ") == 4
    with pytest.raises(SpecdecError, match=r"^draft tokens must be 0-8, 'auto' or 'off', not 'many'$"):
        parse_draft("many")


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temp=1e-30),  # logits / temp would overflow without the shift
        SamplingParams(temp=1.0, min_p=1.0),  # keeps the top token(s) only
        SamplingParams(temp=1.0, top_p=1e-9),  # keeps the first token only
        SamplingParams(temp=50.0, top_k=1),
    ],
)
def test_filtered_distribution_is_never_empty_or_nan(params):
    logits = mx.array([[3.0, 1.0, 2.9, -4.0, 0.0]])
    p = np.array(probs(logits, params))
    assert np.isfinite(p).all() and p.sum() == pytest.approx(1.0)
    assert p[0, 0] == p.max()  # the most likely token always survives
