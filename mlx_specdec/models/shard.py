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
* MoE layers (26B-A4B: a dense MLP beside 128 experts, top 8), expert parallel: rank r keeps
  experts [r*E/N, (r+1)*E/N) whole (all their rows: 4-bit groups are untouched; the expert widths
  704 and 1408 are not whole groups of 64 when halved). The router stays whole, so every rank
  routes every token alike; `ShardedExperts` computes the routed experts it holds (ids made
  local) and gives the others weight 0. The dense MLP keeps its rows in whole quantisation
  groups (the 26B's 2112 = 33 groups of 64: 17 and 16 over two ranks) and `down_proj` keeps the
  matching input columns with no collective of its own: `ShardedMoELayer` sums both partial
  outputs across ranks with ONE all-reduce of their concatenation (each has its own RMSNorm
  after it, so they cannot be added first). Two all-reduces per layer, as in a dense one.
* embeddings, per-layer inputs (PLE), norms and the head stay whole; so does the drafter.

Every rank then computes the same hidden states (all-reduced), so the loop runs unchanged on
every rank (SPMD). Only the order of a sum changes (partial products all-reduced; an expert held
elsewhere adds an exact 0), never which numbers are summed.

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


def _all_sum(x: mx.array, group) -> mx.array:
    return mx.distributed.all_sum(x, group=group)


def _route_locally(indices: mx.array, weights: mx.array, first: int, count: int) -> tuple[mx.array, mx.array]:
    """Routed expert ids [..., K] (global) and their weights [..., K] -> (ids among this rank's
    experts first..first+count-1, weights): an expert held elsewhere becomes local expert 0 with
    weight 0, so it adds an exact 0 here and is added by the rank that holds it."""
    held = (indices >= first) & (indices < first + count)
    return mx.where(held, indices - first, 0), mx.where(held, weights, 0)


class ShardedExperts(gemma4_text.Experts):
    """mlx-lm's Gemma 4 experts over this rank's experts first..first+count-1 (their weights on
    axis 0): the part of the routed sum those experts give, [B, L, hidden]."""

    first: int
    count: int

    def __call__(self, x, top_k_indices, top_k_weights):
        local, weights = _route_locally(top_k_indices, top_k_weights, self.first, self.count)
        return super().__call__(x, local, weights)


class ShardedMoELayer(gemma4_text.DecoderLayer):
    """mlx-lm's Gemma 4 MoE decoder layer (our copy of its __call__) whose feed-forward is this
    rank's part: the dense MLP's rows and `ShardedExperts`, summed across `group` by one all-reduce."""

    group: object

    def __call__(self, x, mask=None, cache=None, per_layer_input=None, shared_kv=None, offset=None):
        h, shared_kv, offset = self.self_attn(self.input_layernorm(x), mask, cache, shared_kv=shared_kv, offset=offset)
        h = x + self.post_attention_layernorm(h)
        h = h + self.post_feedforward_layernorm(self.feed_forward(h))
        if self.per_layer_input_gate is not None and per_layer_input is not None:
            gate = nn.gelu_approx(self.per_layer_input_gate(h)) * per_layer_input
            h = h + self.post_per_layer_input_norm(self.per_layer_projection(gate))
        if self.layer_scalar is not None:
            h = h * self.layer_scalar
        return h, shared_kv, offset

    def feed_forward(self, h: mx.array) -> mx.array:
        """h [B, L, hidden] after attention -> the whole layer's MLP + experts, before its last norm."""
        dense = self.mlp(self.pre_feedforward_layernorm(h))  # this rank's rows: a partial sum
        routed = self.experts(self.pre_feedforward_layernorm_2(h), *self.router(h))
        # One collective for both: each has an RMSNorm after it, so they cannot be added first.
        both = _all_sum(mx.concatenate([dense, routed], axis=-1), self.group)
        n = h.shape[-1]
        return self.post_feedforward_layernorm_1(both[..., :n]) + self.post_feedforward_layernorm_2(both[..., n:])


def _keep_rows(linear: nn.Module, start: int, stop: int) -> None:
    """Keep output rows start..stop-1 of a Linear or QuantizedLinear (weight, scales, biases and
    bias all have the output on axis 0), in place; of an expert projection ([experts, out, in]),
    experts start..stop-1."""
    # A copy, not a view: a view would keep the whole tensor's memory alive.
    linear.update({k: mx.contiguous(v[start:stop]) for k, v in linear.parameters().items()})


def _keep_columns(linear: nn.Module, start: int, stop: int, width: int) -> None:
    """Keep input columns start..stop-1 of `width` of a bias-free Linear or QuantizedLinear, in
    place: its packed weight, scales and biases keep the same fraction of their columns (start and
    stop whole quantisation groups). It then computes this rank's partial output, no collective."""
    kept = {k: v[:, start * v.shape[1] // width : stop * v.shape[1] // width] for k, v in linear.parameters().items()}
    linear.update({k: mx.contiguous(v) for k, v in kept.items()})


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
    """The part of one Linear a rank keeps: output rows [start, stop) (axis 0; of an expert
    projection, experts), or input columns [start, stop) (axis 1: its partial output is
    all-reduced, by the layer itself (sharded-to-all) or, in an MoE layer, with the experts')."""

    axis: int
    start: int
    stop: int


def _moe_cuts(layer, N: int, r: int, where: str, unit: int) -> dict[str, Cut]:
    """An MoE layer's MLP and expert cuts for rank `r` of `N`: the MLP's rows in whole `unit`s (its
    `down_proj`'s quantisation group; the first ranks take one more when they do not divide
    evenly), and experts [r*E/N, (r+1)*E/N)."""
    width, n = layer.mlp.gate_proj.weight.shape[0], layer.experts.switch_glu.gate_proj.weight.shape[0]
    if n % N:
        raise SpecdecError(f"{where}: {n} experts cannot be split over {N} processes; use a divisor of {n}")
    if width // unit < N:
        raise SpecdecError(f"{where}: MLP width {width} is fewer than {N} groups of {unit}; use fewer processes")
    start, stop = (-(-(width // unit) * k // N) * unit for k in (r, r + 1))
    rows, experts = Cut(0, start, stop), Cut(0, r * n // N, (r + 1) * n // N)
    cuts = {"mlp.gate_proj": rows, "mlp.up_proj": rows, "mlp.down_proj": Cut(1, start, stop)}
    return cuts | {f"experts.switch_glu.{name}": experts for name in ("gate_proj", "up_proj", "down_proj")}


def _layer_cuts(layer, N: int, r: int, keep_kv: bool, where: str, unit: int = 1) -> dict[str, Cut]:
    """{path inside the layer: Cut} for rank `r` of `N`; what is not named stays whole. `unit`: the
    MLP `down_proj`'s quantisation group (1: floats)."""
    attn = layer.self_attn
    q0, per, lo, hi = _query_heads(attn, N, r, where)
    hd = attn.head_dim
    heads = Cut(0, q0 * hd, (q0 + per) * hd)
    cuts = {"self_attn.q_proj": heads, "self_attn.o_proj": Cut(1, heads.start, heads.stop)}
    if attn.has_kv and not keep_kv:
        cuts["self_attn.k_proj"] = Cut(0, lo * hd, hi * hd)
        if not attn.use_k_eq_v:
            cuts["self_attn.v_proj"] = Cut(0, lo * hd, hi * hd)
    if layer.enable_moe:
        return cuts | _moe_cuts(layer, N, r, where, unit)
    width = layer.mlp.gate_proj.weight.shape[0]
    if width % N:
        raise SpecdecError(f"{where}: MLP width {width} cannot be split over {N} processes; use a divisor of it")
    rows = Cut(0, r * width // N, (r + 1) * width // N)
    cuts |= {"mlp.gate_proj": rows, "mlp.up_proj": rows, "mlp.down_proj": Cut(1, rows.start, rows.stop)}
    return cuts


def _mlp_group(layer, i: int, plan: Optional[dict]) -> int:
    """The quantisation group of layer `i`'s MLP `down_proj` (1: floats), from `plan`
    (quantise.plan: the estimate's unquantised model) or else the module itself."""
    params = (plan or {}).get(f"model.layers.{i}.mlp.down_proj")
    return params["group_size"] if params else getattr(layer.mlp.down_proj, "group_size", 1)


def tensor_cuts(
    model: gemma4_text.Model, config: dict, size: int, rank: int, plan: Optional[dict] = None
) -> dict[str, Cut]:
    """{module path in `model`: Cut} of every Linear (and expert projection) the tensor-parallel
    split cuts for `rank` of `size`; every other parameter is whole on every rank. Reads only
    shapes, head counts and quantisation groups (`plan` when `model` is not quantised yet), so
    `model` may be unevaluated (the memory estimate's). Rank 0 keeps at least as much as any other.
    Raises SpecdecError when a width or the experts do not split."""
    sources = set(kv_source_layers(config).values())
    return {
        f"model.layers.{i}.{path}": cut
        for i, layer in enumerate(model.model.layers)
        for path, cut in _layer_cuts(layer, size, rank, i in sources, f"layer {i}", _mlp_group(layer, i, plan)).items()
    }


def shard_tensor(model: gemma4_text.Model, config: dict, group) -> None:
    """Split `model` (mlx-lm's gemma4_text, normalised text `config`) in place, tensor parallel
    over `group`, as `tensor_cuts` says; the drafter's source layers keep all their K/V heads."""
    N, r = group.size(), group.rank()
    sources = set(kv_source_layers(config).values())
    for i, layer in enumerate(model.model.layers):
        where = f"layer {i}"
        cuts = _layer_cuts(layer, N, r, i in sources, where, _mlp_group(layer, i, None))
        width = layer.mlp.gate_proj.weight.shape[0]  # before its rows are cut
        for path, cut in cuts.items():
            owner, _, name = path.rpartition(".")
            parent = layer
            for part in owner.split("."):
                parent = getattr(parent, part)
            if cut.axis == 0:
                _keep_rows(getattr(parent, name), cut.start, cut.stop)
            elif layer.enable_moe and path == "mlp.down_proj":  # all-reduced with the experts
                _keep_columns(getattr(parent, name), cut.start, cut.stop, width)
            else:  # sharded-to-all keeps input columns r/N of the way along: the cut's own
                setattr(parent, name, _sharded_to_all(getattr(parent, name), group, f"{where}.{name}"))
        attn = layer.self_attn
        _, attn.n_heads, lo, hi = _query_heads(attn, N, r, where)
        attn.n_kv_heads, attn.kv_heads_read = hi - lo, (lo, hi)
        attn.__class__ = ShardedAttention
        if layer.enable_moe:
            held = cuts["experts.switch_glu.gate_proj"]
            layer.experts.first, layer.experts.count = held.start, held.stop - held.start
            layer.experts.__class__, layer.group, layer.__class__ = ShardedExperts, group, ShardedMoELayer
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
