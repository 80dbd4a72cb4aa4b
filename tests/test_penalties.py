"""logit_bias, presence_penalty and frequency_penalty change the target's and the drafter's rows
alike (sampling.Penalties): greedy speculative output still equals plain output, and a reference
decode that applies them to plain logits by hand gives the same tokens."""

import mlx.core as mx
import pytest

from mlx_specdec.cache import PromptCache
from mlx_specdec.decode import generate
from mlx_specdec.errors import SpecdecError
from mlx_specdec.sampling import Penalties
from mlx_specdec.settings import GenerationSettings

IDS = [2, 40, 41, 42, 43, 44]


def run(b, k, **kw):
    return generate(b, IDS, GenerationSettings(max_tokens=30, draft=k, **kw)).tokens


def by_hand(b, n, bias=None, presence=0.0, frequency=0.0):
    """Plain greedy decoding with the OpenAI rule written out on the target's own logits."""
    pc, out, counts = PromptCache(b), [], {}
    logits, _ = b.target(mx.array(IDS)[None], pc.cache)
    for _ in range(n):
        row = logits[0, -1].astype(mx.float32)
        adjust = [0.0] * row.shape[0]
        for t, c in counts.items():
            adjust[t] -= frequency * c + presence
        for t, v in (bias or {}).items():
            adjust[t] += v
        tok = int(mx.argmax(row + mx.array(adjust)).item())
        out.append(tok)
        counts[tok] = counts.get(tok, 0) + 1
        logits, _ = b.target(mx.array([[tok]]), pc.cache)
    return out


@pytest.mark.slow  # the quick loop keeps a cheaper check of the same idea
def test_penalties_follow_the_openai_rule_and_speculative_equals_plain(bundles):
    b = bundles["dense"]
    plain = run(b, 0, presence_penalty=1.5, frequency_penalty=0.8)
    assert plain == by_hand(b, 30, presence=1.5, frequency=0.8)
    assert plain != run(b, 0)  # they change the output
    assert all(run(b, k, presence_penalty=1.5, frequency_penalty=0.8) == plain for k in (1, 4, 8))


def test_logit_bias_forbids_and_forces_tokens_exactly_as_plain_decoding_does(bundles):
    b = bundles["centroid"]
    usual = run(b, 0)
    forbid = run(b, 3, logit_bias=((usual[0], -100.0), (usual[1], -100.0)))
    assert usual[0] not in forbid and usual[1] not in forbid
    assert forbid == run(b, 0, logit_bias=((usual[0], -100.0), (usual[1], -100.0)))
    assert run(b, 4, logit_bias=((77, 100.0),)) == [77] * 30


def test_a_draft_counts_for_the_rows_after_it():
    p = Penalties(8, presence=1.0, frequency=0.5)
    p.consume([3])
    rows = p.apply(mx.zeros((3, 8)), mx.array([3, 5]))  # rows after x_p, d1 = 3, d2 = 5
    assert rows[:, 3].tolist() == [-1.5, -2.0, -2.0] and rows[:, 5].tolist() == [0.0, 0.0, -1.5]


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(presence_penalty=3), "presence_penalty must be a number from -2 to 2, not 3"),
        (dict(frequency_penalty="x"), "frequency_penalty must be a number from -2 to 2, not 'x'"),
        (dict(logit_bias=((5, 101),)), "logit_bias maps token ids (>= 0) to numbers from -100 to 100"),
        (dict(logit_bias="oops"), "logit_bias maps token ids to numbers from -100 to 100"),
    ],
)
def test_bad_penalties_are_one_line(kw, message):
    with pytest.raises(SpecdecError) as e:
        GenerationSettings(**kw)
    assert str(e.value) == message
