"""Issuing early (models/target.py): a short pass hands every N-th layer's output to the device
while the host builds the rest. Only the order of evaluation may change, never a value."""

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten

from mlx_specdec.cache import make_target_cache
from mlx_specdec.decode import generate
from mlx_specdec.models.target import ISSUE_MAX_TOKENS
from mlx_specdec.settings import GenerationSettings as S
from mlx_specdec.settings import SamplingParams


def passes(target):
    """Logits and hidden states of a prefill, a one-token step and a five-token verify."""
    cache = make_target_cache(target.config)
    out = []
    for tokens in ([2, 40, 41, 42, 43, 44, 45], [46], [47, 48, 49, 50, 51]):
        logits, hidden = target(mx.array(tokens)[None], cache)
        out += [logits, hidden]
    mx.eval(out)
    return out


@pytest.mark.parametrize("every", [1, 3, 8])
def test_issuing_early_changes_no_value(bundles, every):
    with bundles["dense"].target.issuing(0) as target:
        want = passes(target)
    with bundles["dense"].target.issuing(every) as target:
        got = passes(target)
    assert all(mx.array_equal(a, b).item() for a, b in zip(want, got))


def test_issue_early_keeps_the_module_tree_and_can_be_undone(bundles):
    target = bundles["dense"].target
    names = lambda: [(k, v.shape) for k, v in tree_flatten(target.model.parameters())]  # noqa: E731
    with bundles["dense"].target.issuing(0):
        before = names()
        plain_classes = {type(layer).__name__ for layer in target.model.model.layers}
    with bundles["dense"].target.issuing(2):
        assert names() == before
        hooked = [i for i, layer in enumerate(target.model.model.layers) if type(layer).__name__ != "DecoderLayer"]
        assert hooked == [1, 3, 5, 7]  # every second layer, never the last (9)
    with bundles["dense"].target.issuing(0):
        assert {type(layer).__name__ for layer in target.model.model.layers} == plain_classes == {"DecoderLayer"}


def test_short_passes_hand_off_early_and_prefill_chunks_do_not(bundles):
    with bundles["dense"].target.issuing(4) as target:
        cache = make_target_cache(target.config)
        target(mx.array([[3] * (ISSUE_MAX_TOKENS + 1)]), cache)  # a prefill chunk
        assert target.handed_at is None
        target(mx.array([[3] * 5]), cache)  # a verify
        assert target.handed_at is not None
        target(mx.array([[3]]), cache)
        assert target.handed_at is not None
    with bundles["dense"].target.issuing(0) as target:
        target(mx.array([[3]]), make_target_cache(target.config))
        assert target.handed_at is None


@pytest.mark.slow  # the quick loop checks the logits bit for bit above
@pytest.mark.parametrize("draft", [0, 3])
def test_greedy_and_seeded_sampled_output_is_the_same_issued_early_or_not(bundles, draft):
    prompt = [2] + [37 * i % 500 + 9 for i in range(30)]  # past the fixture's window of 16
    runs = {}
    for every in (0, 1):
        with bundles["centroid"].target.issuing(every):
            greedy = generate(bundles["centroid"], prompt, S(max_tokens=40, draft=draft))[1]
            sampled = S(max_tokens=40, draft=draft, sampling=SamplingParams(temp=0.9, seed=7))
            runs[every] = (greedy, generate(bundles["centroid"], prompt, sampled)[1])
    assert runs[0] == runs[1]
