"""Sliding caches rewind exactly past the window, stay bounded, and refuse impossible rewinds."""

import mlx.core as mx
import pytest
from mlx_lm.models.cache import KVCache, RotatingKVCache, trim_prompt_cache

from mlx_specdec.cache import RewindError, SlidingKVCache, make_target_cache, rewind
from mlx_specdec.load import load_target

from .helpers.paths import TARGET


def kv(positions):
    """Keys/values whose value is their absolute position: [1, 1, n, 1]."""
    x = mx.array(positions, dtype=mx.float32).reshape(1, 1, -1, 1)
    return x, x


def test_sliding_cache_returns_the_window_for_one_query_and_rewinds_past_it():
    c = SlidingKVCache(window=4, max_rewind=2)
    for i in range(20):
        k, _ = c.update_and_fetch(*kv([i]))
        assert k.reshape(-1).tolist() == list(range(max(0, i - 3), i + 1))
    # A verify of 3 tokens, then a rewind of 2, is exact past the window.
    c.update_and_fetch(*kv([20, 21, 22]))
    assert c.trim(2) == 2 and c.offset == 21
    k, _ = c.update_and_fetch(*kv([21]))
    assert k.reshape(-1).tolist() == [18, 19, 20, 21]
    assert c.drafter_kv()[0].reshape(-1).tolist() == [17, 18, 19, 20, 21]  # W + 1 entries


def test_sliding_cache_memory_is_bounded_by_window_not_context():
    c = SlidingKVCache(window=8, max_rewind=4)
    for i in range(3000):
        c.update_and_fetch(*kv([i]))
    assert c.keys.shape[2] <= 8 + 1 + 4 + 1 + SlidingKVCache.step  # kept + the last write + a step of room


def test_rewind_that_would_cut_into_the_window_raises():
    c = SlidingKVCache(window=4, max_rewind=0)
    for i in range(300):  # past a compaction: older positions are gone
        c.update_and_fetch(*kv([i]))
    with pytest.raises(RewindError):
        c.trim(c._len - 2)  # would leave fewer than W + 1 entries
    assert c.offset == 300


def test_mlx_lm_rotating_cache_silently_trims_nothing_past_window():
    """The trap our cache exists for (DESIGN.md): if mlx-lm fixes it, this test tells us."""
    c = RotatingKVCache(max_size=4)
    for i in range(10):
        c.update_and_fetch(*kv([i]))
    assert trim_prompt_cache([c], 2) == 0 and c.offset == 10


def test_target_cache_rewind_trims_every_layer():
    target = load_target(TARGET)
    cache = make_target_cache(target.config)
    target(mx.array([[2, 3, 4, 5]]), cache)
    with pytest.raises(RewindError, match="cannot rewind 5"):
        rewind(cache, 5)
    rewind(cache, 2)
    assert all(c.offset == 2 for c in cache)


def test_rewind_is_all_or_nothing_when_only_a_later_layer_refuses():
    full = KVCache()
    full.update_and_fetch(*kv(list(range(300))))
    sliding = SlidingKVCache(window=4, max_rewind=0)
    for i in range(300):  # past a compaction: it holds too few positions for a long rewind
        sliding.update_and_fetch(*kv([i]))
    cache = [full, sliding]
    n = sliding._len - 2
    assert full.offset >= n  # the first layer alone could rewind
    with pytest.raises(RewindError, match=r"^cache layer 1 holds 300 positions; cannot rewind"):
        rewind(cache, n)
    assert full.offset == 300 and sliding.offset == 300  # nothing was trimmed


def test_prompt_cache_copy_shares_the_prefix_and_leaves_the_original_to_extend():
    from types import SimpleNamespace

    from mlx_specdec.cache import PromptCache

    target = load_target(TARGET)
    ids = [2, 3, 4, 5, 6, 7, 8, 9]
    original = PromptCache(SimpleNamespace(target=target))
    logits, _ = target(mx.array([ids]), original.cache)
    original.tokens = list(ids)
    copy = original.copy(5)
    assert copy.tokens == ids[:5] and all(c.offset == 5 for c in copy.cache)
    diverged, _ = target(mx.array([[11, 12, 13]]), copy.cache)  # the copy goes its own way
    fresh = make_target_cache(target.config)
    assert mx.allclose(diverged[0, -1], target(mx.array([ids[:5] + [11, 12, 13]]), fresh)[0][0, -1], atol=1e-4)
    assert original.tokens == ids and all(c.offset == 8 for c in original.cache)
    more, _ = target(mx.array([[10]]), original.cache)  # the original still extends as if never copied
    assert mx.allclose(
        more[0, -1], target(mx.array([ids + [10]]), make_target_cache(target.config))[0][0, -1], atol=1e-4
    )
    assert logits.shape[1] == len(ids)
