"""Expert parallelism in the tensor split of an MoE target (models/shard.py), without a real
collective: each of two fake ranks holds half of every layer's experts, and the partial
feed-forwards the ranks would all-reduce add up to the whole layer's.

The fixture is the 26b-a4b family's (float32: 4 experts, top 2, MLP width 32); a second model
with the same config at 4 bits (group 32) and an MLP width of 3 groups checks the quantised cuts:
whole groups, one more on rank 0.
"""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlx_specdec import registry
from mlx_specdec.errors import SpecdecError
from mlx_specdec.load import load, read_config
from mlx_specdec.models import quantise, shard
from mlx_specdec.models.target import make_model, text_config

from .conftest import FIXTURES

MOE = FIXTURES / "families" / "26b-a4b" / "target"
PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


class _Group:
    """A stand-in for an mx.distributed group (only rank and size are read)."""

    def __init__(self, rank, size):
        self._rank, self._size = rank, size

    def rank(self):
        return self._rank

    def size(self):
        return self._size


def _fixture(rank=None):
    """The fixture's gemma4_text model, whole (rank None) or as `rank` of 2 holds it."""
    split = None if rank is None else (lambda m, c: shard.shard_tensor(m, c, _Group(rank, 2)))
    return load(target=MOE, split=split).target.model


def _quantised_config() -> dict:
    return {**read_config(MOE), "text_config": {**read_config(MOE)["text_config"], "intermediate_size": 96}}


def _quantised(rank=None):
    """The fixture's config with an MLP width of 96 (3 groups of 32), random weights quantised as
    `convert` would at 4 bits, group 32 (the router at 8); whole or as `rank` of 2 holds it."""
    cfg = text_config(_quantised_config())
    mx.random.seed(3)
    model = make_model(cfg)
    plan = quantise.plan(model, quantise.TARGET_RULES, 4, 32)
    nn.quantize(model, class_predicate=lambda path, _: plan.get(path, False))
    mx.eval(model.parameters())
    if rank is not None:
        shard.shard_tensor(model, cfg, _Group(rank, 2))
    return model


def _tokens() -> mx.array:
    """Hidden states [1, 12, 64] after attention, for one layer's feed-forward."""
    return mx.random.normal((1, 12, 64), key=mx.random.key(0))


def _whole_feed_forward(layer, h):
    """mlx-lm's Gemma 4 MoE block (its DecoderLayer's lines) before post_feedforward_layernorm."""
    dense = layer.post_feedforward_layernorm_1(layer.mlp(layer.pre_feedforward_layernorm(h)))
    routed = layer.experts(layer.pre_feedforward_layernorm_2(h), *layer.router(h))
    return dense + layer.post_feedforward_layernorm_2(routed)


def _summed_feed_forward(ranks, i, h, monkeypatch) -> list:
    """Each rank's feed-forward of layer `i`, its one all-reduce replaced by the sum of the
    partials the ranks hand to it (a first pass records them)."""
    partials = []
    monkeypatch.setattr(shard, "_all_sum", lambda x, group: partials.append(x) or x)
    for model in ranks:
        model.model.layers[i].feed_forward(h)
    assert not mx.allclose(partials[0], partials[1]).item()  # each rank computes a different part
    monkeypatch.setattr(shard, "_all_sum", lambda x, group: partials[0] + partials[1])
    return [model.model.layers[i].feed_forward(h) for model in ranks]


def test_each_rank_holds_its_half_of_the_experts_and_the_whole_router():
    whole, ranks = _fixture(), [_fixture(r) for r in (0, 1)]
    for i, layer in enumerate(whole.model.layers):
        for r, model in enumerate(ranks):
            part = model.model.layers[i]
            assert (part.experts.first, part.experts.count) == (2 * r, 2)
            for name in PROJECTIONS:
                got = getattr(part.experts.switch_glu, name).weight
                full = getattr(layer.experts.switch_glu, name).weight
                assert got.shape == (2, *full.shape[1:])
                assert mx.array_equal(got, full[2 * r : 2 * r + 2]).item()
            assert mx.array_equal(part.router.proj.weight, layer.router.proj.weight).item()
            assert part.mlp.gate_proj.weight.shape == (16, 64) and part.mlp.down_proj.weight.shape == (64, 16)


@pytest.mark.parametrize("build", [_fixture, _quantised], ids=["float32", "4-bit"])
def test_the_ranks_partial_feed_forwards_sum_to_the_whole_layers(build, monkeypatch):
    whole, ranks, h = build(), [build(r) for r in (0, 1)], _tokens()
    for i, layer in enumerate(whole.model.layers):
        routed = set(np.array(layer.router(h)[0]).flatten().tolist())
        assert routed & {0, 1} and routed & {2, 3}, routed  # tokens routed to experts of both ranks
        want = _whole_feed_forward(layer, h)
        for got in _summed_feed_forward(ranks, i, h, monkeypatch):
            assert mx.allclose(got, want, atol=1e-5, rtol=1e-5).item(), (i, mx.abs(got - want).max().item())


def test_without_the_mask_an_expert_held_elsewhere_would_count_and_the_sum_differs(monkeypatch):
    def unmasked(indices, weights, first, count):  # the mutant: remapped ids, weights kept
        held = (indices >= first) & (indices < first + count)
        return mx.where(held, indices - first, 0), weights

    whole, ranks, h = _fixture(), [_fixture(r) for r in (0, 1)], _tokens()
    monkeypatch.setattr(shard, "_route_locally", unmasked)
    got = _summed_feed_forward(ranks, 0, h, monkeypatch)[0]
    assert not mx.allclose(got, _whole_feed_forward(whole.model.layers[0], h), atol=1e-3).item()


def test_a_quantised_mlp_width_of_3_groups_splits_2_and_1_and_the_estimate_is_rank_0s_bytes():
    held = [sum(v.nbytes for _, v in tree_flatten(_quantised(r).parameters())) for r in (0, 1)]
    down = [_quantised(r).model.layers[0].mlp.down_proj for r in (0, 1)]
    assert [d.scales.shape[1] for d in down] == [2, 1]  # groups of 32 columns
    each = registry.config_bytes(_quantised_config(), None, 4, group_size=32, itemsize=4, machines=2)[0]
    assert held[0] == each > held[1]


def test_experts_that_do_not_split_evenly_are_one_clear_error():
    text = {**read_config(MOE)["text_config"], "num_experts": 6}
    cfg = text_config({**read_config(MOE), "text_config": text})
    want = r"^layer 0: 6 experts cannot be split over 4 processes; use a divisor of 6$"
    with pytest.raises(SpecdecError, match=want):
        shard.tensor_cuts(make_model(cfg), cfg, 4, 0)


def test_the_real_26b_splits_experts_in_half_and_its_4_bit_mlp_by_whole_groups():
    """2112 = 33 groups of 64: 17 on rank 0, 16 on rank 1; 128 experts: 64 each. Shapes only."""
    pair = registry.PAIRS[[p.name for p in registry.PAIRS].index("26b-a4b")]
    cfg = text_config(pair.target_config())
    model = make_model(cfg)  # lazy: nothing is allocated
    plan = quantise.plan(model, quantise.TARGET_RULES, 4, 64)
    cuts = [shard.tensor_cuts(model, cfg, 2, r, plan) for r in (0, 1)]
    assert [(c["model.layers.0.mlp.down_proj"].start, c["model.layers.0.mlp.down_proj"].stop) for c in cuts] == [
        (0, 1088),
        (1088, 2112),
    ]
    experts = [c["model.layers.29.experts.switch_glu.down_proj"] for c in cuts]
    assert [(e.start, e.stop) for e in experts] == [(0, 64), (64, 128)]
