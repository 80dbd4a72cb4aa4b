"""The MLX target and drafter compute what transformers computes (float32, stated tolerances)."""

import mlx.core as mx
import numpy as np
import pytest

from mlx_specdec.cache import drafter_kv, make_target_cache
from mlx_specdec.load import load_drafter, load_target

from .helpers.paths import DRAFTERS, TARGET, TARGET_MM

LOGIT_ATOL = 2e-3  # fixtures README: torch's own one-pass vs incremental spread is 1.5e-4
HIDDEN_ATOL = 5e-4
DRAFTER_ATOL = 1e-4


@pytest.fixture(scope="module", params=["text", "multimodal"])
def target(request):
    return load_target(TARGET if request.param == "text" else TARGET_MM)


def test_target_whole_prompt_matches_reference(target, reference):
    for i in (0, 1):
        ids = reference[f"target/prompt{i}/ids"]
        logits, hidden = target(ids[None], make_target_cache(target.config))
        np.testing.assert_allclose(
            np.array(logits[0]), np.array(reference[f"target/prompt{i}/logits"]), atol=LOGIT_ATOL, rtol=0
        )
        np.testing.assert_allclose(
            np.array(hidden[0]), np.array(reference[f"target/prompt{i}/hidden"]), atol=HIDDEN_ATOL, rtol=0
        )


def test_target_incremental_past_sliding_window_matches_reference(target, reference):
    ids = reference["target/incremental/ids"]
    assert ids.shape[0] > 2 * target.sliding_window
    cache = make_target_cache(target.config)
    logits, hidden = [], []
    for i in range(ids.shape[0]):
        lg, h = target(ids[None, i : i + 1], cache)
        logits.append(lg[0, 0])
        hidden.append(h[0, 0])
    np.testing.assert_allclose(
        np.array(mx.stack(logits)), np.array(reference["target/incremental/logits"]), atol=LOGIT_ATOL, rtol=0
    )
    np.testing.assert_allclose(
        np.array(mx.stack(hidden)), np.array(reference["target/incremental/hidden"]), atol=HIDDEN_ATOL, rtol=0
    )


def test_target_chunked_prefill_across_window_matches_reference(target, reference):
    ids = reference["target/incremental/ids"]
    cache = make_target_cache(target.config)
    pieces = []
    for a, b in [(0, 7), (7, 20), (20, 23), (23, 48)]:
        lg, _ = target(ids[None, a:b], cache)
        pieces.append(lg[0])
    np.testing.assert_allclose(
        np.array(mx.concatenate(pieces)), np.array(reference["target/incremental/logits"]), atol=LOGIT_ATOL, rtol=0
    )


def test_both_target_layouts_load_the_same_weights():
    a, b = load_target(TARGET), load_target(TARGET_MM)
    ids = mx.array([[2, 10, 20, 30]])
    la, _ = a(ids, make_target_cache(a.config))
    lb, _ = b(ids, make_target_cache(b.config))
    assert mx.array_equal(la, lb)
    assert b.config["global_head_dim"] == 64 and b.config["vocab_size"] == 512


@pytest.mark.parametrize("head", ["dense", "centroid"])
@pytest.mark.parametrize("p", [5, 16, 17, 30])
def test_drafter_steps_match_reference_from_explicit_inputs(head, p, reference):
    target = load_target(TARGET)
    drafter = load_drafter(DRAFTERS[head], target.config)
    pre = f"drafter_{head}/p{p}/"
    W = drafter.sliding_window
    swa = slice(max(0, p - (W + 1)), p)  # the drafter attends to the last W + 1 sliding entries
    assert np.array(reference[pre + "swa_mask"]).nonzero()[0].tolist() == list(range(p))[swa]
    kv = {
        "full_attention": (reference[pre + "full_k"][None], reference[pre + "full_v"][None]),
        "sliding_attention": (reference[pre + "swa_k"][None, :, swa], reference[pre + "swa_v"][None, :, swa]),
    }
    tokens = reference[pre + "tokens"]
    for step in range(3):
        x = target.embed(tokens[step].reshape(1, 1))
        h = reference[pre + "hidden_in"][step].reshape(1, 1, -1)
        logits, nxt = drafter(x, h, kv, p)
        np.testing.assert_allclose(
            np.array(logits[0, 0]), np.array(reference[pre + "logits"][step]), atol=DRAFTER_ATOL, rtol=0
        )
        np.testing.assert_allclose(
            np.array(nxt[0, 0]), np.array(reference[pre + "hidden_out"][step]), atol=DRAFTER_ATOL, rtol=0
        )


def test_drafter_reads_target_cache_like_reference(reference):
    """Our cache hands the drafter the same K/V transformers passed (sliding: last W+1)."""
    target = load_target(TARGET)
    drafter = load_drafter(DRAFTERS["dense"], target.config)
    ids = reference["target/incremental/ids"]
    for p in (5, 17, 30):
        cache = make_target_cache(target.config)
        for i in range(p):  # one token at a time: the sliding cache wraps past its window
            target(ids[None, i : i + 1], cache)
        kv = drafter_kv(cache, target.kv_layers)
        pre = f"drafter_dense/p{p}/"
        first = max(0, p - (drafter.sliding_window + 1))
        np.testing.assert_allclose(
            np.array(kv["sliding_attention"][0][0]), np.array(reference[pre + "swa_k"][:, first:]), atol=HIDDEN_ATOL
        )
        np.testing.assert_allclose(
            np.array(kv["full_attention"][1][0]), np.array(reference[pre + "full_v"]), atol=HIDDEN_ATOL
        )


def test_centroid_head_gives_real_logits_to_exactly_the_selected_clusters(reference):
    target = load_target(TARGET)
    drafter = load_drafter(DRAFTERS["centroid"], target.config)
    for p in (5, 30):
        pre = f"drafter_centroid/p{p}/"
        want = reference[pre + "logits"]
        for step in range(3):
            y_ids = set(np.array(reference[pre + "selected_ids"][step]).tolist())
            row = np.array(want[step])
            fill = row.min()
            real = set(np.nonzero(row != fill)[0].tolist())
            assert real == y_ids  # the reference itself: only selected tokens are real
            h = reference[pre + "hidden_in"][step].reshape(1, 1, -1)
            x = target.embed(reference[pre + "tokens"][step].reshape(1, 1))
            W = drafter.sliding_window
            kv = {
                "full_attention": (reference[pre + "full_k"][None], reference[pre + "full_v"][None]),
                "sliding_attention": (
                    reference[pre + "swa_k"][None, :, -(W + 1) :],
                    reference[pre + "swa_v"][None, :, -(W + 1) :],
                ),
            }
            logits, _ = drafter(x, h, kv, p)
            ours = np.array(logits[0, 0])
            ours_real = set(np.nonzero(ours != ours.min())[0].tolist())
            assert ours_real == y_ids
            assert np.all(ours[list(y_ids)] > ours.min())
            assert ours.min() == pytest.approx(ours[list(y_ids)].min() - 1.0, abs=1e-5)
