"""The split of one Gemma 4 target across the processes of an `mx.distributed` group.

mlx-lm 0.32.2 has `model.shard(group)` for many families but not for `gemma4_text`, so the
split is ours. Tensor parallel (Megatron): in every decoder layer

* attention: `q_proj` keeps this rank's query heads (rows), `o_proj` becomes sharded-to-all
  (`mlx.nn.layers.distributed.shard_linear`: this rank's input columns, then one all-reduce);
  `k_proj`/`v_proj` keep the K/V heads this rank's query heads read (GQA). With fewer K/V heads
  than ranks (E2B has 1; the 31B's full layers 4) several ranks keep the same head.
* the drafter's source layers (`kv_source_layers`: the last non-shared layer of each attention
  type) keep ALL K/V heads on every rank: the drafter reads their cache, and every rank's drafter
  must read the same K/V as one process's would. Their attention (and that of the KV-shared
  layers that reuse their K/V) then reads only the heads its own queries need.
* MLP: `gate_proj`/`up_proj` keep this rank's rows of the intermediate width, `down_proj`
  becomes sharded-to-all. Two all-reduces per layer.
* MoE (26B-A4B): the router and the experts stay whole on every rank (each computes every
  expert it routes to: simple and exact, no memory saved there; the 4-bit expert widths 704 and
  2112 are not whole groups of 64 when halved, so splitting them needs expert parallelism).
* embeddings, per-layer inputs (PLE), norms and the head stay whole; so does the drafter.

Every rank then computes the same hidden states (all-reduced), so the loop runs unchanged on
every rank (SPMD). Only the order of a sum changes (partial products all-reduced), never which
numbers are summed.

Call `shard_tensor` on a model whose weights are loaded but not yet evaluated (load.py's `split`
hook): only this rank's slices are then kept, read one layer at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
from mlx.nn.layers.distributed import shard_linear
from mlx_lm.models import gemma4_text
from mlx_lm.models.base import scaled_dot_product_attention

from ..errors import SpecdecError, UsageError
from .pipeline import shard_pipeline
from .target import kv_source_layers

PARALLEL_MODES = ("tensor", "pipeline")


class ShardedAttention(gemma4_text.Attention):
    """mlx-lm's Gemma 4 attention over this rank's query heads. `kv_heads_read` = (lo, hi): the
    K/V heads (global indices) those queries read; K/V with more heads than this rank computes
    (a whole source layer's, or one shared from it) are sliced to them before attention."""

    kv_heads_read: tuple[int, int]

    def __call__(self, x, mask=None, cache=None, shared_kv=None, offset=None):
        B, L, _ = x.shape
        queries = self.q_norm(self.q_proj(x).reshape(B, L, self.n_heads, self.head_dim))
        if shared_kv is not None:
            keys, values = shared_kv
        else:
            keys = self.k_proj(x).reshape(B, L, -1, self.head_dim)
            values = keys if self.use_k_eq_v else self.v_proj(x).reshape(B, L, -1, self.head_dim)
            offset = mx.array(cache.offset) if cache is not None else 0
            keys = self.rope(self.k_norm(keys).transpose(0, 2, 1, 3), offset=offset)
            values = self.v_norm(values).transpose(0, 2, 1, 3)
        queries = self.rope(queries.transpose(0, 2, 1, 3), offset=offset)
        if cache is not None:
            keys, values = cache.update_and_fetch(keys, values)
        lo, hi = self.kv_heads_read
        read_k, read_v = (keys, values) if keys.shape[1] == hi - lo else (keys[:, lo:hi], values[:, lo:hi])
        out = scaled_dot_product_attention(queries, read_k, read_v, cache=cache, scale=self.scale, mask=mask)
        out = out.transpose(0, 2, 1, 3).reshape(B, L, -1)
        # The full K/V go on: a KV-shared layer slices them to its own heads the same way.
        return self.o_proj(out), (keys, values), offset


def _keep_rows(linear: nn.Module, start: int, stop: int) -> None:
    """Keep output rows start..stop-1 of a Linear or QuantizedLinear (weight, scales, biases and
    bias all have the output on axis 0), in place."""
    # A copy, not a view: a view would keep the whole tensor's memory alive.
    linear.update({k: mx.contiguous(v[start:stop]) for k, v in linear.parameters().items()})


def _sharded_to_all(linear: nn.Module, group, what: str) -> nn.Module:
    try:
        return shard_linear(linear, "sharded-to-all", group=group)
    except ValueError as e:  # e.g. a quantised width that is not whole groups per rank
        raise SpecdecError(f"cannot split {what} over {group.size()} processes ({e}); use fewer processes") from None


def _query_heads(attn, N: int, r: int, where: str) -> tuple[int, int, int, int]:
    """-> (first query head, query heads per rank, lo, hi): the K/V heads they read."""
    n, n_kv = attn.n_heads, attn.n_kv_heads
    if n % N:
        raise SpecdecError(f"{where}: {n} attention heads cannot be split over {N} processes; use a divisor of {n}")
    per, ratio = n // N, n // n_kv
    q0 = r * per
    lo, hi = q0 // ratio, (q0 + per - 1) // ratio + 1
    # The attention kernel pairs local query head j with local K/V head j // (per // (hi - lo)).
    if per % (hi - lo) or any((q0 + j) // ratio != lo + j // (per // (hi - lo)) for j in range(per)):
        raise SpecdecError(f"{where}: {n} query heads over {n_kv} K/V heads cannot be split over {N} processes")
    return q0, per, lo, hi


@dataclass(frozen=True)
class Cut:
    """The part of one Linear a rank keeps: output rows [start, stop) (axis 0), or input columns
    [start, stop) (axis 1: the layer becomes sharded-to-all, one all-reduce after it)."""

    axis: int
    start: int
    stop: int


def _layer_cuts(layer, N: int, r: int, keep_kv: bool, where: str) -> dict[str, Cut]:
    """{path inside the layer: Cut} for rank `r` of `N`; what is not named stays whole."""
    attn = layer.self_attn
    q0, per, lo, hi = _query_heads(attn, N, r, where)
    hd = attn.head_dim
    heads = Cut(0, q0 * hd, (q0 + per) * hd)
    cuts = {"self_attn.q_proj": heads, "self_attn.o_proj": Cut(1, heads.start, heads.stop)}
    if attn.has_kv and not keep_kv:
        cuts["self_attn.k_proj"] = Cut(0, lo * hd, hi * hd)
        if not attn.use_k_eq_v:
            cuts["self_attn.v_proj"] = Cut(0, lo * hd, hi * hd)
    width = layer.mlp.gate_proj.weight.shape[0]
    if width % N:
        raise SpecdecError(f"{where}: MLP width {width} cannot be split over {N} processes; use a divisor of it")
    rows = Cut(0, r * width // N, (r + 1) * width // N)
    cuts |= {"mlp.gate_proj": rows, "mlp.up_proj": rows, "mlp.down_proj": Cut(1, rows.start, rows.stop)}
    return cuts


def tensor_cuts(model: gemma4_text.Model, config: dict, size: int, rank: int) -> dict[str, Cut]:
    """{module path in `model`: Cut} of every Linear the tensor-parallel split cuts for `rank` of
    `size`; every other parameter is whole on every rank. Reads only shapes and head counts, so
    `model` may be unevaluated (the memory estimate's). Raises SpecdecError when a width does not split."""
    sources = set(kv_source_layers(config).values())
    return {
        f"model.layers.{i}.{path}": cut
        for i, layer in enumerate(model.model.layers)
        for path, cut in _layer_cuts(layer, size, rank, i in sources, f"layer {i}").items()
    }


def shard_tensor(model: gemma4_text.Model, config: dict, group) -> None:
    """Split `model` (mlx-lm's gemma4_text, normalised text `config`) in place, tensor parallel
    over `group`, as `tensor_cuts` says; the drafter's source layers keep all their K/V heads."""
    N, r = group.size(), group.rank()
    sources = set(kv_source_layers(config).values())
    for i, layer in enumerate(model.model.layers):
        where = f"layer {i}"
        for path, cut in _layer_cuts(layer, N, r, i in sources, where).items():
            owner, name = path.split(".")
            parent = getattr(layer, owner)
            if cut.axis == 0:
                _keep_rows(getattr(parent, name), cut.start, cut.stop)
            else:  # sharded-to-all keeps input columns r/N of the way along: the cut's own
                setattr(parent, name, _sharded_to_all(getattr(parent, name), group, f"{where}.{name}"))
        attn = layer.self_attn
        _, attn.n_heads, lo, hi = _query_heads(attn, N, r, where)
        attn.n_kv_heads, attn.kv_heads_read = hi - lo, (lo, hi)
        attn.__class__ = ShardedAttention
        # One layer at a time: reading a slice reads its whole tensor, so peak memory is this
        # rank's part plus one layer's tensors, not this rank's part plus the whole model.
        mx.eval(layer.parameters())


def split(mode: str, group) -> Optional[callable]:
    """The split for `mode` ("tensor", or "pipeline": models/pipeline.py) over `group`, as load.py's
    hook (model, config) -> None; None for a group of one."""
    if mode not in PARALLEL_MODES:
        raise UsageError(f"--parallel must be one of {', '.join(PARALLEL_MODES)}, not {mode!r}")
    if group is None or group.size() == 1:
        return None
    shard = shard_pipeline if mode == "pipeline" else shard_tensor
    return lambda model, config: shard(model, config, group)
