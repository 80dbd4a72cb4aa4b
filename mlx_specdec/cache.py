"""Target KV caches that rewind exactly, at every context length.

Invariants:
* Full-attention layers use mlx-lm's `KVCache` (it rewinds by moving its offset).
* Sliding-window layers use `SlidingKVCache` below, not mlx-lm's `RotatingKVCache`: once the
  window fills, the rotating cache cannot be trimmed and `trim_prompt_cache` silently trims
  nothing, so speculative decoding diverges from plain decoding (DESIGN.md). Ours keeps the
  last `window + 1 + max_rewind` positions (plus the tokens of the current forward pass), so
  memory is bounded by the window plus the draft length, never by the context.
* The drafter reads W + 1 sliding entries (positions p-W-1 .. p-1); the target reads W.
* `rewind` is all or nothing: it checks every layer before trimming any, and a rewind that
  cannot happen raises, it never passes silently.
* `PromptCache.tokens` lists exactly the tokens whose K/V the caches hold.
* Split pipeline parallel (models/pipeline.py), a layer another process computes has an
  `ElsewhereCache`: no K/V, only the offset, which moves and rewinds with every other layer's.
"""

from __future__ import annotations

from collections.abc import Sequence

import mlx.core as mx
from mlx_lm.models.cache import KVCache, _BaseCache

from .settings import MAX_DRAFT


class RewindError(RuntimeError):
    """The cache cannot drop the requested number of positions."""


class SlidingKVCache(_BaseCache):
    """Sliding-window KV cache that can rewind up to `max_rewind` positions past its window.

    Buffer layout: entries 0.._len-1 hold absolute positions `offset-_len .. offset-1`.
    """

    step = 256

    def __init__(self, window: int, max_rewind: int = 16):
        self.window = window
        self.keep = window + 1 + max_rewind
        self.keys = None
        self.values = None
        self.offset = 0
        self._len = 0

    # -- layout shared by make_mask and update_and_fetch (make_mask runs first) --------------
    def _compacts(self, n: int) -> bool:
        return self.keys is not None and self._len + n > self.keys.shape[2]

    def _first_visible(self, n: int) -> int:
        """Buffer index (after writing n entries) of the oldest key any of the n queries sees."""
        length = (min(self._len, self.keep) if self._compacts(n) else self._len) + n
        # Query at position `offset` sees keys > offset - window.
        return max(0, length - n - (self.window - 1))

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        n = keys.shape[2]
        if self.keys is None or self._compacts(n):
            kept = min(self._len, self.keep)
            B, H, _, Dk = keys.shape
            Dv = values.shape[3]
            cap = kept + n + self.step  # room to spare after every write: a snapshot taken after
            # a long prefill still holds its positions for the next write (prompt_cache.keep_for)
            new_k = mx.zeros((B, H, cap, Dk), keys.dtype)
            new_v = mx.zeros((B, H, cap, Dv), values.dtype)
            if kept:
                new_k[..., :kept, :] = self.keys[..., self._len - kept : self._len, :]
                new_v[..., :kept, :] = self.values[..., self._len - kept : self._len, :]
            self.keys, self.values, self._len = new_k, new_v, kept
        start = self._first_visible(n)
        self.keys[..., self._len : self._len + n, :] = keys
        self.values[..., self._len : self._len + n, :] = values
        self._len += n
        self.offset += n
        return self.keys[..., start : self._len, :], self.values[..., start : self._len, :]

    def make_mask(self, N: int, window_size=None, return_array: bool = False):
        """Mask for N queries over the keys `update_and_fetch` will return for them."""
        if N == 1:
            return None  # one query sees exactly the returned (last <= W) keys
        start = self._first_visible(N)
        length = (min(self._len, self.keep) if self._compacts(N) else self._len) + N
        kpos = mx.arange(start, length) - (length - N)  # relative to the first query
        qpos = mx.arange(N)[:, None]
        return (kpos[None] <= qpos) & (qpos - kpos[None] < self.window)

    def drafter_kv(self) -> tuple[mx.array, mx.array]:
        """The last W + 1 entries (positions p-W-1 .. p-1), as the drafter attends to them."""
        first = max(0, self._len - (self.window + 1))
        return self.keys[..., first : self._len, :], self.values[..., first : self._len, :]

    def is_trimmable(self) -> bool:
        return True

    def can_trim(self, n: int) -> bool:
        """Whether dropping the newest n positions still leaves the window the next query needs."""
        return n <= self._len and self._len - n >= min(self.offset - n, self.window + 1)

    def trim(self, n: int) -> int:
        """Drop the newest n positions; raises RewindError when the window would be left short."""
        if n <= 0:
            return 0
        left = self._len - n
        if not self.can_trim(n):
            raise RewindError(f"sliding cache holds {self._len} positions; cannot rewind {n} and keep the window")
        self._len = left
        self.offset -= n
        return n

    @property
    def state(self):
        if self.keys is None:
            return None, None
        return self.keys[..., : self._len, :], self.values[..., : self._len, :]

    @property
    def nbytes(self) -> int:
        return 0 if self.keys is None else self.keys.nbytes + self.values.nbytes

    def empty(self) -> bool:
        return self.keys is None


class ElsewhereCache:
    """The cache of a layer another process computes (pipeline parallel): it holds no K/V, only
    the offset, which its stand-in layer advances. A mask is the one `twin` (a cache of this
    process of the same layer type, in step with it) makes; None when there is none to ask."""

    def __init__(self, twin=None):
        self.offset = 0
        self.twin = twin
        self.keys = self.values = None

    def advance(self, n: int) -> None:
        self.offset += n

    def make_mask(self, N: int, window_size=None, return_array: bool = False):
        if self.twin is None:
            return None  # no layer of this type runs here: the mask is never read
        return self.twin.make_mask(N, window_size=window_size, return_array=return_array)

    def is_trimmable(self) -> bool:
        return True

    def can_trim(self, n: int) -> bool:
        return n <= self.offset

    def trim(self, n: int) -> int:
        n = min(max(n, 0), self.offset)
        self.offset -= n
        return n

    @property
    def state(self):
        return None, None

    nbytes = 0

    def empty(self) -> bool:
        return True


def make_target_cache(config: dict, max_rewind: int = 16, elsewhere=frozenset()) -> list:
    """One cache per non-shared target layer (KV-shared layers read their source's cache); an
    `ElsewhereCache` for the layers in `elsewhere` (computed by another process)."""
    first_shared = config["num_hidden_layers"] - config.get("num_kv_shared_layers", 0)
    types = config["layer_types"][:first_shared]
    here = {
        i: KVCache() if t == "full_attention" else SlidingKVCache(config["sliding_window"], max_rewind)
        for i, t in enumerate(types)
        if i not in elsewhere
    }
    twins = {}  # per type, the cache here that an ElsewhereCache asks for masks (one type moves in step)
    for i, c in here.items():
        twins.setdefault(types[i], c)
    return [here[i] if i in here else ElsewhereCache(twins.get(t)) for i, t in enumerate(types)]


def cache_offset(cache: list) -> int:
    return cache[0].offset


def _can_trim(c, n: int) -> bool:
    if hasattr(c, "can_trim"):
        return c.can_trim(n)
    return c.is_trimmable() and c.offset >= n


def rewind(cache: list, n: int) -> None:
    """Drop the newest n positions from every layer, or from none: every layer is checked before
    any is trimmed, and a layer that trims fewer than n raises. Raises RewindError."""
    if n <= 0:
        return
    for i, c in enumerate(cache):
        if not _can_trim(c, n):
            raise RewindError(f"cache layer {i} holds {c.offset} positions; cannot rewind {n}")
    for c in cache:
        done = c.trim(n)
        if done != n:
            raise RewindError(f"cache rewound {done} of {n} positions")


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading ids `a` and `b` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class PromptCache:
    """The target's caches plus the token ids whose K/V they hold; reusable across requests.

    Invariant: `tokens` lists exactly the positions the caches hold, in order.
    """

    def __init__(self, bundle, max_rewind: int = 2 * MAX_DRAFT):
        self._config = bundle.target.config
        self._elsewhere = getattr(bundle.target, "elsewhere", frozenset())  # pipeline parallel
        self._max_rewind = max_rewind
        self.reset()

    def reset(self) -> None:
        self.cache = make_target_cache(self._config, self._max_rewind, self._elsewhere)
        self.tokens: list[int] = []

    @property
    def nbytes(self) -> int:
        return sum(getattr(c, "nbytes", 0) for c in self.cache)

    def reuse(self, ids: Sequence[int]) -> int:
        """Keep the longest cached prefix of ids[:-1] (the last id always runs again: its logits
        and hidden state are needed); returns how many ids the cache now holds."""
        self.truncate(common_prefix(self.tokens, ids[:-1]))
        return len(self.tokens)

    def copy(self, n: int) -> PromptCache:
        """A new PromptCache holding this one's first n tokens; this one is left as it is (another
        request may still extend it). The copy's arrays are views until its first write, which
        moves them to buffers of its own. Empty when a sliding window no longer holds position n."""
        out = PromptCache.__new__(PromptCache)
        out._config, out._max_rewind, out._elsewhere = self._config, self._max_rewind, self._elsewhere
        out.reset()
        n = min(n, len(self.tokens))
        if n == 0:
            return out
        for src, dst in zip(self.cache, out.cache):
            drop = src.offset - n
            if isinstance(src, SlidingKVCache):
                if not src.can_trim(drop):
                    out.reset()
                    return out
                dst._len = src._len - drop
                dst.keys, dst.values = src.keys[..., : dst._len, :], src.values[..., : dst._len, :]
            elif isinstance(src, ElsewhereCache):
                pass  # only the offset
            else:
                dst.keys, dst.values = src.keys[..., :n, :], src.values[..., :n, :]
            dst.offset = n
        out.tokens = self.tokens[:n]
        return out

    def truncate(self, n: int) -> None:
        """Keep the first n tokens (rewinding the caches); start afresh when the window forbids it."""
        try:
            rewind(self.cache, cache_offset(self.cache) - n)
        except RewindError:
            self.reset()  # the sliding window no longer holds those positions: prefill again
            return
        del self.tokens[n:]


def drafter_kv(cache: list, kv_layers: dict) -> dict:
    """{"full_attention": (K, V) for 0..p-1, "sliding_attention": (K, V) for the last W+1}."""
    out = {}
    for layer_type, i in kv_layers.items():
        c = cache[i]
        if isinstance(c, SlidingKVCache):
            out[layer_type] = c.drafter_kv()
        else:
            out[layer_type] = (c.keys[..., : c.offset, :], c.values[..., : c.offset, :])
    return out
