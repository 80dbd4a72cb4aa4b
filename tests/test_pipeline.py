"""Pipeline parallel (models/pipeline.py, cache.py's ElsewhereCache) without a launch: the block
cuts, a group of one computing what mlx-lm computes, the caches of layers kept elsewhere. The
two-process run is tests/test_distributed.py's launch test."""

import json

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten

from mlx_specdec import provision, registry
from mlx_specdec.cache import ElsewhereCache, RewindError, SlidingKVCache, make_target_cache, rewind
from mlx_specdec.errors import SpecdecError
from mlx_specdec.load import load, read_config
from mlx_specdec.models.pipeline import Elsewhere, blocks, layer_bytes, shard_pipeline
from mlx_specdec.models.target import kv_source_layers

from .conftest import FIXTURES


class _Group:
    """A stand-in for an mx.distributed group of `size`, as rank `rank` (no collective is run)."""

    def __init__(self, rank, size):
        self._rank, self._size = rank, size

    def rank(self):
        return self._rank

    def size(self):
        return self._size


def test_blocks_balance_bytes_not_layer_counts():
    assert blocks([4, 1, 1, 1, 1], 2) == [(0, 1), (1, 5)]  # by count it would be 3 + 2 layers: 6 vs 2
    assert blocks([1, 1, 1, 1], 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert blocks([2, 3, 2, 3, 2, 3], 3) == [(0, 2), (2, 4), (4, 6)]


def test_more_processes_than_layers_is_one_clear_error():
    with pytest.raises(SpecdecError, match="6 decoder layers cannot be split over 7 processes; use at most 6"):
        blocks([1] * 6, 7)


@pytest.mark.parametrize("fam", ["e2b", "26b-a4b"])
def test_pipeline_split_over_a_group_of_one_computes_what_mlx_lm_computes(fam):
    """The K/V hand-off attention and the block-end hand-off give mlx-lm's numbers, with a cache."""
    folder = FIXTURES / "families" / fam / "target"
    whole = load(target=folder)
    split = load(target=folder, split=lambda m, c: shard_pipeline(m, c, mx.distributed.init()))
    caches = [make_target_cache(b.target.config, 16, b.target.elsewhere) for b in (whole, split)]
    ids = mx.array([[3, 5, 7, 9, 11, 2]])
    for tokens in (ids, ids[:, :1]):  # a prefill, then a decode step on the same caches
        (a, _), (b, _) = whole.target(tokens, caches[0]), split.target(tokens, caches[1])
        assert mx.array_equal(a, b).item()


def test_each_rank_keeps_only_its_block_and_the_kv_sources_caches():
    folder = FIXTURES / "families" / "e2b" / "target"
    held = []
    for rank in (0, 1):
        target = load(target=folder, split=lambda m, c, r=rank: shard_pipeline(m, c, _Group(r, 2))).target
        layers = target.model.model.layers
        mine = [i for i, layer in enumerate(layers) if not isinstance(layer, Elsewhere)]
        held.append(mine)
        assert all(not layers[i].parameters() for i in range(len(layers)) if i not in mine)
        sources = set(kv_source_layers(target.config).values())
        caches = make_target_cache(target.config, 16, target.elsewhere)
        for i, c in enumerate(caches):  # the drafter's sources: real caches on every rank
            assert isinstance(c, ElsewhereCache) == (i not in mine and i not in sources), (rank, i)
    assert held[0] + held[1] == list(range(6))


def test_layers_kept_elsewhere_rewind_with_the_others_and_ask_a_twin_for_masks():
    cfg = load(target=FIXTURES / "families" / "e2b" / "target").target.config  # layer 0, 1 sliding; 2 full
    caches = make_target_cache(cfg, 4, elsewhere={0, 2})
    assert [type(c) for c in caches] == [ElsewhereCache, SlidingKVCache, ElsewhereCache, SlidingKVCache]
    for n in (5, 1):
        for c in caches:
            if isinstance(c, ElsewhereCache):
                c.advance(n)
            else:
                c.update_and_fetch(mx.zeros((1, 1, n, 8)), mx.zeros((1, 1, n, 8)))
        assert caches[0].make_mask(3, window_size=cfg["sliding_window"]) is not None
    assert caches[2].twin is None and caches[2].make_mask(3) is None  # no full layer's cache here
    assert caches[0].twin is caches[1]
    rewind(caches, 2)
    assert [c.offset for c in caches] == [4] * 4
    with pytest.raises(RewindError):
        rewind(caches, 5)
    assert [c.offset for c in caches] == [4] * 4  # all or nothing


def test_layer_bytes_are_what_each_layer_holds():
    model = load(target=FIXTURES / "families" / "31b" / "target").target.model
    sizes = layer_bytes(model)
    assert sum(sizes) == sum(v.nbytes for k, v in tree_flatten(model.parameters()) if k.startswith("model.layers."))


def _rank_target(fam: str, rank: int, size: int = 2):
    """The family fixture's target as rank `rank` of `size` holds it, split pipeline parallel."""
    folder = FIXTURES / "families" / fam / "target"
    return load(target=folder, split=lambda m, c: shard_pipeline(m, c, _Group(rank, size))).target


@pytest.mark.parametrize("fam", ["e2b", "31b", "26b-a4b"])
def test_pipeline_memory_estimate_per_machine_is_the_bytes_each_rank_holds(fam):
    cfg = read_config(FIXTURES / "families" / fam / "target")  # float32 fixtures: itemsize 4
    whole = registry.config_bytes(cfg, None, 16, itemsize=4)[0]
    each = [
        registry.config_bytes(cfg, None, 16, itemsize=4, machines=2, parallel="pipeline", rank=r)[0] for r in (0, 1)
    ]
    for rank in (0, 1):
        held = sum(v.nbytes for _, v in tree_flatten(_rank_target(fam, rank).model.parameters()))
        assert held == each[rank] < whole, (fam, rank)
    assert registry.config_bytes(cfg, None, 16, itemsize=4, machines=2, parallel="pipeline")[0] == max(each)


@pytest.mark.parametrize("fam", ["e2b", "31b"])
def test_pipeline_kv_estimate_counts_the_caches_each_rank_keeps(fam):
    """The estimate's blocks are the split's; a rank caches its block's layers and the drafter's
    source layers (31B: 4 and 5, both ranks), the others' K/V are elsewhere."""
    cfg = read_config(FIXTURES / "families" / fam / "target")
    _, sizes = registry.layer_bytes(cfg, 16, itemsize=4)  # what the estimate weighs
    for rank, (start, stop) in enumerate(blocks(sizes, 2)):
        target = _rank_target(fam, rank)
        mine = [i for i, layer in enumerate(target.model.model.layers) if not isinstance(layer, Elsewhere)]
        assert mine == list(range(start, stop)), rank
        caches = make_target_cache(target.config, 16, target.elsewhere)
        kept = [i for i, c in enumerate(caches) if not isinstance(c, ElsewhereCache)]
        expected = 0
        for i in kept:  # each layer alone, as a one-layer model
            one = {**target.config, "num_hidden_layers": 1, "num_kv_shared_layers": 0}
            expected += provision.kv_bytes({**one, "layer_types": [target.config["layer_types"][i]]}, 40, itemsize=4)
        assert provision.kv_bytes(target.config, 40, itemsize=4, layers=range(start, stop)) == expected, rank


def test_models_shows_memory_per_machine_split_pipeline_parallel():
    from typer.testing import CliRunner

    from mlx_specdec.cli import app

    done = CliRunner().invoke(app, ["models", "--json", "--machines", "2", "--parallel", "pipeline"])
    assert done.exit_code == 0, done.output
    rows = {r["name"]: r for r in json.loads(done.output)["models"]}
    need = provision.estimate("31b", machines=2, parallel="pipeline")
    assert rows["31b"]["memory_bytes"] == need.total < provision.estimate("31b").total
    assert rows["31b"]["parallel"] == "pipeline"
    assert provision.check_memory_fit("31b", 4, available=need.total, machines=2, parallel="pipeline") == need
    assert CliRunner().invoke(app, ["models", "--parallel", "diagonal"]).exit_code != 0
