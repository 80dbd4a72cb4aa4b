"""Bidirectional attention over an image's soft tokens (Gemma 4 12B, 26B-A4B and 31B).

A target whose text config has `use_bidirectional_attention: "vision"` lets each image soft token
also attend to the LATER soft tokens of the same image. On 26B-A4B and 31B (`gemma4`) that holds on
sliding-window layers only: transformers' `create_masks_for_vision_model` (5.24-5.25):

    sliding layers   AND(kv > q - window, OR(kv <= q, same_image(q, kv)))
    full layers      kv <= q (causal)

The 12B (`gemma4_unified`, 5.25) builds its masks with `block_sequence_ids` instead, on every layer,
and the window does not bound an image (`every_layer`):

    sliding layers   OR(AND(kv > q - window, kv <= q), same_image(q, kv))
    full layers      OR(kv <= q, same_image(q, kv))

An image is a run of consecutive soft-token positions (`<|image>` and `<image|>` are text, so two
images never touch); text, audio and the image markers stay causal. The window bounds only the
past: a query near an image's start sees every later token of its image, even past the window.

So a prefill chunk must hold a whole image (`keep_whole`), and the overlay is added to the mask
the sliding cache makes for that chunk (`with_image_blocks`); the cache then returns every key of
the chunk, so an image longer than the window is seen whole as in transformers. Decoding after the
prompt is plain causal: the K/V written here are all the drafter and the loop ever read.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np


def image_spans(positions: np.ndarray) -> list[tuple[int, int]]:
    """Soft-token positions (sorted) -> one [first, end) span per image (a run of consecutive positions)."""
    if len(positions) == 0:
        return []
    breaks = np.nonzero(np.diff(positions) != 1)[0] + 1
    return [(int(run[0]), int(run[-1]) + 1) for run in np.split(positions, breaks)]


def keep_whole(spans: list[tuple[int, int]], lo: int, hi: int) -> int:
    """The end of a prefill chunk [lo, hi), moved so that it cuts no image: back to the start of
    the image it would cut, or, when that image starts at (or before) lo, on to the image's end
    (an image longer than a chunk goes alone in one chunk)."""
    for first, end in spans:
        if first < hi < end:
            return first if first > lo else end
    return hi


def block_ids(spans: list[tuple[int, int]], start: int, n: int) -> np.ndarray:
    """[n] int32: the image index of each position start..start+n-1, -1 for text."""
    out = np.full(n, -1, dtype=np.int32)
    for index, (first, end) in enumerate(spans):
        lo, hi = max(first, start), min(end, start + n)
        if lo < hi:
            out[lo - start : hi - start] = index
    return out


class _ImageBlocks:
    """A cache whose prefill mask also lets each image token see its image's later tokens (`whole`:
    every token of its image, also those the window leaves out). Everything else (update_and_fetch,
    offset, state) is the wrapped cache's own."""

    def __init__(self, cache, blocks: np.ndarray, whole: bool = False):
        self._cache = cache
        self._blocks = blocks
        self._whole = whole

    def __getattr__(self, name):
        return getattr(self._cache, name)

    def make_mask(self, N: int, window_size=None, return_array: bool = False):
        base = self._cache.make_mask(N, window_size=window_size, return_array=True)
        if base is None:  # one query: nothing of its image lies after it in this chunk
            return None
        if not isinstance(base, mx.array) or base.dtype != mx.bool_:
            raise TypeError(f"image attention needs a boolean mask array from {type(self._cache).__name__}")
        K = base.shape[-1]
        past = K - N  # the keys before the chunk: earlier positions, never of a later image
        q_block = mx.array(self._blocks)[:, None]
        k_block = mx.array(np.concatenate([np.full(past, -1, dtype=np.int32), self._blocks]))[None]
        same = (q_block >= 0) & (q_block == k_block)
        if self._whole:  # the chunk holds the whole image (keep_whole), so every key of it is here
            return base | same
        return base | (same & ((mx.arange(K) - past)[None] > mx.arange(N)[:, None]))


def with_image_blocks(cache: list, layer_types: list, blocks: np.ndarray, every_layer: bool = False) -> list:
    """The target's caches for one prefill chunk whose positions have image indices `blocks`
    [chunk] (-1 text): sliding layers get the image overlay, full layers stay as they are;
    `every_layer` (the 12B): every layer gets it, and an image is seen whole."""
    if not (blocks >= 0).any():
        return cache
    if every_layer:
        return [_ImageBlocks(c, blocks, whole=True) for c in cache]
    return [_ImageBlocks(c, blocks) if layer_types[i] == "sliding_attention" else c for i, c in enumerate(cache)]
