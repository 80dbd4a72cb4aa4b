"""Pipeline parallel: each process of an `mx.distributed` group holds one contiguous block of the
target's decoder layers, so each holds about 1/N of the layers' weights. It saves memory only:
the blocks run one after another, so one stream is no faster than on one machine.

* Blocks: contiguous, balanced by the bytes of their weights (`blocks`), not by layer count: a
  full-attention layer, a double-wide or MoE layer weigh more than a sliding one.
* Replicated on every rank: embeddings, per-layer inputs (PLE), the final norm, the head, the
  drafter. Another rank's layer is an `Elsewhere` stand-in with no weights; the split replaces the
  layers before the weights are evaluated, so a rank never reads the others' tensors.
* SPMD: every rank runs the same loop on the same hidden states. The last layer of each block
  hands its output on with an `all_sum` in which the other ranks contribute zeros (x + 0 == x
  exactly): every rank then goes on with the block's owner's hidden state. A collective, not a
  send/recv pair: each rank's collectives form one chain of data dependencies (a stand-in's zeros
  depend on its input, its output on the collective's result), so they run in the same order on
  every rank whatever is evaluated early (target.py's issuing early) and nothing can deadlock. A
  prefill chunk evaluates only the caches; every rank caches the last source layer's K/V, so on
  every rank they depend on the same first part of the chain, and the same collectives run.
* K/V: the drafter reads the caches of the `kv_source_layers`, and Gemma 4's KV-shared layers
  (E2B/E4B) read the K/V of those same layers, which may sit in another rank's block. So a source
  layer's new K/V are handed over the same way (its owner's, all-summed with the others' zeros)
  and cached by every rank, exactly as one process caches them: the block cuts stay free, and a
  KV-shared layer on any rank reads them. Other layers' K/V stay with their owner; the other ranks
  keep only the offset (cache.py's `ElsewhereCache`), so rewinds stay in step.

Every rank's final hidden states, logits and caches the drafter reads are those of one process,
bit for bit: the owner computes each layer as one process does, and a sum with zeros is exact.
"""

from __future__ import annotations

import functools
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.models import gemma4_text
from mlx_lm.models.base import scaled_dot_product_attention

from ..errors import SpecdecError
from .target import kv_source_layers


def blocks(sizes: list[int], n: int) -> list[tuple[int, int]]:
    """Layer sizes (bytes) -> `n` contiguous blocks [start, stop), each of at least one layer,
    whose largest sum of sizes is the smallest possible. Raises SpecdecError when n > layers."""
    layers = len(sizes)
    if n > layers:
        raise SpecdecError(f"{layers} decoder layers cannot be split over {n} processes; use at most {layers}")
    prefix = [0]
    for s in sizes:
        prefix.append(prefix[-1] + s)
    inf = float("inf")
    # best[k][i]: the smallest largest block when the first i layers form k blocks; cut[k][i]: where the last starts
    best = [[inf] * (layers + 1) for _ in range(n + 1)]
    cut = [[0] * (layers + 1) for _ in range(n + 1)]
    best[0][0] = 0
    for k in range(1, n + 1):
        for i in range(k, layers - (n - k) + 1):
            for j in range(k - 1, i):
                worst = max(best[k - 1][j], prefix[i] - prefix[j])
                if worst < best[k][i]:
                    best[k][i], cut[k][i] = worst, j
    out, stop = [], layers
    for k in range(n, 0, -1):
        out.append((cut[k][stop], stop))
        stop = cut[k][stop]
    return out[::-1]


def layer_bytes(model: gemma4_text.Model) -> list[int]:
    """Bytes of each decoder layer's weights as the model holds them (lazy arrays: shapes only)."""
    return [sum(v.nbytes for _, v in tree_flatten(layer.parameters())) for layer in model.model.layers]


def _zeros_after(x: mx.array, shape) -> mx.array:
    """Zeros of `shape` in x's dtype that come after x (an elementwise op of it, which picks 0
    whatever x holds, NaN too): this rank's share of another's hand-off."""
    return mx.where(mx.array(False), x.reshape(-1)[:1], mx.zeros(shape, x.dtype))


class Elsewhere(nn.Module):
    """Decoder layer `layer_type` that another rank computes: no weights. Its hidden state only
    carries the order of the collectives; at its block's end it takes the owner's by an all_sum.
    `kv` = (K/V heads, head_dim) for a drafter source layer: its K/V come from the owner and are
    cached here as one process caches them. Otherwise its cache (if any) only counts positions."""

    def __init__(self, layer_type: str, group, ends_block: bool, kv: Optional[tuple[int, int]] = None):
        super().__init__()
        self.layer_type = layer_type
        self._group, self._ends_block, self._kv = group, ends_block, kv

    def __call__(self, x, mask=None, cache=None, per_layer_input=None, shared_kv=None, offset=None):
        kvs = None
        if self._kv is not None:
            (B, L, _), (heads, dim) = x.shape, self._kv
            kv = mx.distributed.all_sum(_zeros_after(x, (B, heads, L, 2 * dim)), group=self._group)
            keys, values = kv[..., :dim], kv[..., dim:]
            offset = mx.array(cache.offset) if cache is not None else 0
            if cache is not None:
                keys, values = cache.update_and_fetch(keys, values)
            kvs, x = (keys, values), mx.depends(x, kv)
        elif cache is not None:
            cache.advance(x.shape[1])
        if self._ends_block:
            x = mx.distributed.all_sum(_zeros_after(x, x.shape), group=self._group)
        return x, kvs, offset


class HandedKVAttention(gemma4_text.Attention):
    """mlx-lm's attention for a drafter source layer this rank owns: its new K/V (after norm and
    RoPE) go to every rank in one all_sum (K and V side by side), and this rank attends to the
    summed ones too, so what follows depends on the hand-off (one chain of collectives)."""

    def __call__(self, x, mask=None, cache=None, shared_kv=None, offset=None):
        B, L, _ = x.shape
        queries = self.q_norm(self.q_proj(x).reshape(B, L, self.n_heads, self.head_dim))
        keys = self.k_proj(x).reshape(B, L, self.n_kv_heads, self.head_dim)
        values = keys if self.use_k_eq_v else self.v_proj(x).reshape(B, L, self.n_kv_heads, self.head_dim)
        offset = mx.array(cache.offset) if cache is not None else 0
        keys = self.rope(self.k_norm(keys).transpose(0, 2, 1, 3), offset=offset)
        values = self.v_norm(values).transpose(0, 2, 1, 3)
        # x's dtype: what the other ranks' zeros are made in (the keys' own in every Gemma 4)
        kv = mx.concatenate([keys, values], axis=-1).astype(x.dtype)
        kv = mx.distributed.all_sum(kv, group=self._group)
        keys, values = kv[..., : self.head_dim], kv[..., self.head_dim :]
        queries = self.rope(queries.transpose(0, 2, 1, 3), offset=offset)
        if cache is not None:
            keys, values = cache.update_and_fetch(keys, values)
        out = scaled_dot_product_attention(queries, keys, values, cache=cache, scale=self.scale, mask=mask)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, L, -1)), (keys, values), offset


class _HandOn:
    """Mixed into the class of the last layer of this rank's block: its output goes to every rank."""

    def __call__(self, x, *args, **kwargs):
        h, kvs, offset = super().__call__(x, *args, **kwargs)
        return mx.distributed.all_sum(h, group=self._group), kvs, offset


@functools.cache
def _hand_on_class(cls: type) -> type:
    return type(f"HandOn{cls.__name__}", (_HandOn, cls), {})


def shard_pipeline(model: gemma4_text.Model, config: dict, group) -> None:
    """Keep this rank's block of `model`'s decoder layers (normalised text `config`), in place;
    the others become `Elsewhere` stand-ins before any weight is read. Sets
    `model.model.elsewhere`: the layers whose cache this rank keeps no K/V for (cache.py)."""
    size, rank = group.size(), group.rank()
    cuts = blocks(layer_bytes(model), size)
    mine = range(*cuts[rank])
    ends = {stop - 1 for _, stop in cuts}
    sources = set(kv_source_layers(config).values())
    layers = model.model.layers
    for i, layer in enumerate(layers):
        if i in mine:
            layer._group = group
            if i in sources:
                layer.self_attn.__class__ = HandedKVAttention
                layer.self_attn._group = group
            if i in ends:
                layer.__class__ = _hand_on_class(type(layer))
        else:
            attn = layer.self_attn
            kv = (attn.n_kv_heads, attn.head_dim) if i in sources else None
            layers[i] = Elsewhere(layer.layer_type, group, i in ends, kv)
    model.model.elsewhere = frozenset(i for i in range(len(layers)) if i not in mine and i not in sources)
