"""Images on targets whose image tokens attend to their whole image (`use_bidirectional_attention:
"vision"`, the 26B-A4B and 31B), against transformers. Two fixtures, made by
scripts/fixtures/make_media_bidir_fixtures.py: tests/fixtures/media_31b (dense) and
tests/fixtures/media_26b (the 26B-A4B's experts beside the dense MLP), each with window 32, one
60-token image (longer than the window) and 40 greedy tokens that move the image out of the window.

Tolerances (float32): vision tower output atol 2e-4 (measured 2.0e-5 on the 31B, 2.1e-5 on the
26B); logits over the whole prompt atol 2e-3, as for the E2B media fixture (measured 3.7e-5 and
3.1e-5). The causal mask (no image block) misses them by 4.8 and 3.7 (reference.json), so the logits
test fails without the block; ids exact. The quick loop runs every check on the 31B and the cheap
ones on the 26B (tower, logits and ids, k=3); the 26B's heavier runs are slow.
"""

import json

import mlx.core as mx
import numpy as np
import pytest
from typer.testing import CliRunner

from mlx_specdec.cache import PromptCache
from mlx_specdec.cli import app
from mlx_specdec.decode import generate
from mlx_specdec.errors import SpecdecError
from mlx_specdec.media import Media, attach_images, read_image, vision_of
from mlx_specdec.models.image_attention import image_spans, keep_whole
from mlx_specdec.settings import GenerationSettings

from .conftest import FIXTURES
from .helpers.media import media_turn, prefill_chunks, reference, reference_pair

DENSE, MOE = FIXTURES / "media_31b", FIXTURES / "media_26b"
SLOW = pytest.mark.slow
BOTH = pytest.mark.parametrize("folder", [DENSE, MOE], ids=["31b", "26b"], scope="module")
# A heavier check: the 31B in the quick loop, the 26B (whose experts cost the most) in the slow tier.
BOTH_MOE_SLOW = pytest.mark.parametrize(
    "folder", [DENSE, pytest.param(MOE, marks=SLOW)], ids=["31b", "26b"], scope="module"
)
PROMPT, TWO = "Describe it.", "Compare them."
TOL = 2e-3


def images(folder):
    return folder / "image.png", folder / "image2.png"


@pytest.fixture(scope="module")
def ref(folder):
    return reference(folder)


@pytest.fixture(scope="module")
def bundle(folder):
    return reference_pair(folder)


def image_prompt(bundle, folder, count=1, text=PROMPT):
    return media_turn(bundle, text, images(folder)[:count])


def prompt_logits(bundle, ids, media) -> np.ndarray:
    hidden = media.prefill(bundle.target, ids, 0, PromptCache(bundle).cache)
    return np.array(bundle.target.logits(hidden))[0]


@BOTH
def test_vision_tower_matches_transformers(bundle, ref, folder):
    p = read_image(images(folder)[0], 2, 3, 70)
    hidden = vision_of(bundle).vision.vision_tower(mx.array(p.pixels), mx.array(p.positions), p.grid)
    np.testing.assert_allclose(np.array(hidden), ref["vision_hidden"], atol=2e-4, rtol=0)


@BOTH
def test_prompt_logits_with_an_image_match_transformers_and_the_causal_mask_does_not(bundle, ref, folder):
    ids, media = image_prompt(bundle, folder)
    # The expanded ids are the processor's: `<|image>` + 60 x `<|image|>` + `<image|>` in the chat turn.
    assert ids == ref["prompt_ids"].tolist() and media.bidirectional and media.spans == [(7, 67)]
    np.testing.assert_allclose(prompt_logits(bundle, ids, media), ref["logits"], atol=TOL, rtol=0)
    causal = Media(media.positions, media.soft, media.pad_id, bidirectional=False)  # the mutant: no block
    assert np.abs(prompt_logits(bundle, ids, causal) - ref["logits"]).max() > 1000 * TOL


@BOTH_MOE_SLOW
def test_two_images_each_see_only_themselves(bundle, ref, folder):
    ids, media = image_prompt(bundle, folder, 2, TWO)
    assert ids == ref["two/prompt_ids"].tolist() and media.spans == [(7, 67), (69, 133)]
    np.testing.assert_allclose(prompt_logits(bundle, ids, media)[-8:], ref["two/logits"], atol=TOL, rtol=0)


# plain (draft 0): test_chunk_cut_inside_an_image_...; k=3 runs in the quick loop (auto after text: test_decode)
@pytest.mark.parametrize(
    "folder, draft",
    [(DENSE, 3), pytest.param(DENSE, "auto", marks=SLOW), (MOE, 3), pytest.param(MOE, "auto", marks=SLOW)],
    ids=["31b-3", "31b-auto", "26b-3", "26b-auto"],
    scope="module",
)
def test_greedy_after_an_image_equals_transformers_past_the_window(bundle, ref, folder, draft):
    ids, media = image_prompt(bundle, folder)
    out = generate(bundle, ids, GenerationSettings(max_tokens=40, draft=draft), media=media)
    assert out.tokens == ref["greedy_ids"].tolist()
    window = bundle.target.config["sliding_window"]
    assert len(ids) + 39 - media.spans[0][1] > window  # the image leaves the sliding window
    assert out.stats.drafted > 0


@BOTH_MOE_SLOW
def test_chunk_cut_inside_an_image_moves_to_keep_it_whole(bundle, ref, folder, monkeypatch):
    import mlx_specdec.decode as decode

    monkeypatch.setattr(decode, "PREFILL_CHUNK", 16)  # cuts at 16 and 32 fall inside the image [7, 67)
    ids, media = image_prompt(bundle, folder)
    chunks = prefill_chunks(monkeypatch)
    plain = generate(bundle, ids, GenerationSettings(max_tokens=40, draft=0), media=media)
    # Back to the image's start, then the image alone (longer than a chunk), then text again.
    assert chunks == [(0, 7), (7, 67), (67, 81)]
    spec = generate(bundle, ids, GenerationSettings(max_tokens=40, draft=3), media=media)
    assert plain.tokens == spec.tokens == ref["greedy_ids"].tolist()


@SLOW  # ~2 s each: 340-token prompts
@BOTH
@pytest.mark.parametrize("chunk", [16, 512])
def test_greedy_after_a_long_prompt_equals_transformers_in_any_chunks(bundle, ref, folder, monkeypatch, chunk):
    # 260 text ids, then the image: with 16-token chunks it arrives as the sliding caches compact
    # (they keep only the window and the rewind room, then take the whole 60-token image at once).
    import mlx_specdec.decode as decode

    monkeypatch.setattr(decode, "PREFILL_CHUNK", chunk)
    want = ref["long/prompt_ids"].tolist()
    boi, eoi = want.index(509), want.index(511)
    ids, media = attach_images(bundle, want[:boi] + [510] + want[eoi + 1 :], [images(folder)[0]])
    assert ids == want and media.spans == [(261, 321)]
    for draft in (0, 3):
        out = generate(bundle, ids, GenerationSettings(max_tokens=40, draft=draft), media=media)
        assert out.tokens == ref["long/greedy_ids"].tolist()


@pytest.mark.parametrize("folder", [DENSE], ids=["31b"], scope="module")
def test_a_chunk_that_would_cut_an_image_is_refused(bundle, folder):
    ids, media = image_prompt(bundle, folder)
    with pytest.raises(SpecdecError, match="cuts an image in two"):
        media.prefill(bundle.target, ids[:30], 0, PromptCache(bundle).cache)


def test_keep_whole_moves_chunk_ends_out_of_images():
    spans = image_spans(np.array([3, 4, 5, 6, 9, 10]))
    assert spans == [(3, 7), (9, 11)]
    assert keep_whole(spans, 0, 5) == 3  # back to the image's start
    assert keep_whole(spans, 3, 5) == 7  # the image starts the chunk: on to its end
    assert keep_whole(spans, 0, 7) == 7 and keep_whole(spans, 7, 9) == 9  # ends between images stay
    assert keep_whole(spans, 7, 10) == 9


runner = CliRunner()


@BOTH_MOE_SLOW
def test_cli_generate_with_an_image_gives_transformers_prompt_ids_and_tokens(ref, folder):
    cli = ["generate", "--target", str(folder / "target"), "--drafter", str(folder / "assistant")]
    r = runner.invoke(app, cli + ["--image", str(images(folder)[0]), "-p", PROMPT, "-m", "40", "-k", "3", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["prompt_ids"] == ref["prompt_ids"].tolist()
    assert out["token_ids"] == ref["greedy_ids"].tolist()
