"""Images into a Gemma 4 target: tower, preprocessing, prompt expansion, prefill and the loop,
against transformers 5.24 (tests/fixtures/media, made by scripts/fixtures/make_media_fixtures.py).

Tolerances (float32): vision tower output atol 2e-4 (values up to ~24), soft tokens atol 5e-5,
logits over the whole prompt atol 2e-3 (as for the text fixtures); pixels, positions and ids exact.
"""

import json

import mlx.core as mx
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mlx_specdec.cache import PromptCache
from mlx_specdec.cli import app
from mlx_specdec.decode import generate
from mlx_specdec.errors import SpecdecError
from mlx_specdec.load import load
from mlx_specdec.media import attach_images, read_image, resized_size, vision_of
from mlx_specdec.models.vision import Vision, VisionArgs
from mlx_specdec.prompt import chat_ids
from mlx_specdec.settings import GenerationSettings

from .conftest import FIXTURES, TARGET
from .helpers.media import media_turn, reference, reference_pair

MEDIA = FIXTURES / "media"
IMAGE = MEDIA / "image.png"
PROMPT = "Describe it."


@pytest.fixture(scope="module")
def ref():
    return reference(MEDIA)


@pytest.fixture(scope="module")
def bundle():
    return reference_pair(MEDIA)


def image_prompt(bundle, images=(IMAGE,)):
    return media_turn(bundle, PROMPT, images)


def test_image_patches_equal_the_processors(ref):
    p = read_image(IMAGE, patch=2, pooling=3, max_soft_tokens=70)
    assert p.pixels.dtype == np.float32 and np.array_equal(p.pixels, ref["pixel_values"])
    assert np.array_equal(p.positions, ref["position_ids"])
    assert p.soft_tokens == 60 and p.grid == (18, 30)


def test_vision_tower_and_soft_tokens_match_transformers(ref):
    cfg = json.loads((MEDIA / "target" / "config.json").read_text())
    v = Vision(VisionArgs.from_config(cfg))
    v.load_weights(list(Vision.sanitize(mx.load(str(MEDIA / "target" / "model.safetensors"))).items()), strict=True)
    p = read_image(IMAGE, 2, 3, 70)
    hidden = v.vision_tower(mx.array(p.pixels), mx.array(p.positions), p.grid)
    np.testing.assert_allclose(np.array(hidden), ref["vision_hidden"], atol=2e-4, rtol=0)
    np.testing.assert_allclose(np.array(v.embed_vision(hidden)), ref["soft_tokens"], atol=5e-5, rtol=0)
    # The clipping bounds matter on this fixture: without them the tower gives something else.
    v.update({"vision_tower": {"encoder": {"layers": [{"mlp": {"up_proj": {"output_max": mx.array(np.inf)}}}] * 2}}})
    unclipped = v.vision_tower(mx.array(p.pixels), mx.array(p.positions), p.grid)
    assert np.abs(np.array(unclipped) - ref["vision_hidden"]).max() > 1e-2


def test_expanded_prompt_ids_equal_the_processors(bundle, ref):
    ids, media = image_prompt(bundle)
    assert ids == ref["prompt_ids"].tolist()
    assert media.positions.tolist() == [i for i, t in enumerate(ids) if t == 510]


def test_prompt_logits_with_an_image_match_transformers(bundle, ref):
    ids, media = image_prompt(bundle)
    hidden = media.prefill(bundle.target, ids, 0, PromptCache(bundle).cache)
    logits = np.array(bundle.target.logits(hidden))[0]
    np.testing.assert_allclose(logits, ref["logits"], atol=2e-3, rtol=0)


@pytest.mark.parametrize("draft", [0, 3, pytest.param("auto", marks=pytest.mark.slow)])  # auto calibrates: ~9 s
def test_greedy_after_an_image_equals_transformers(bundle, ref, draft):
    ids, media = image_prompt(bundle)
    out = generate(bundle, ids, GenerationSettings(max_tokens=40, draft=draft), media=media)
    assert out.tokens == ref["greedy_ids"].tolist()


@pytest.mark.slow  # the quick loop keeps a cheaper check of this idea
def test_speculative_equals_plain_after_an_image_split_over_prefill_chunks(bundle, monkeypatch):
    import mlx_specdec.decode as decode

    monkeypatch.setattr(decode, "PREFILL_CHUNK", 7)  # the image spans several chunks
    ids, media = image_prompt(bundle)
    plain = generate(bundle, ids, GenerationSettings(max_tokens=40, draft=0), media=media)
    spec = generate(bundle, ids, GenerationSettings(max_tokens=40, draft=3), media=media)
    assert spec.tokens == plain.tokens
    assert spec.stats.drafted > 0


def test_reused_prompt_cache_does_not_keep_an_earlier_images_kv(bundle, tmp_path):
    other = tmp_path / "other.png"
    Image.open(IMAGE).transpose(Image.FLIP_LEFT_RIGHT).save(other)  # same size: same placeholder ids
    pc = PromptCache(bundle)
    ids_a, media_a = image_prompt(bundle)
    generate(bundle, ids_a, GenerationSettings(max_tokens=4, draft=0), media=media_a, prompt_cache=pc)
    ids_b, media_b = image_prompt(bundle, [other])
    assert ids_b == ids_a
    reused = generate(bundle, ids_b, GenerationSettings(max_tokens=12, draft=0), media=media_b, prompt_cache=pc)
    fresh = generate(bundle, ids_b, GenerationSettings(max_tokens=12, draft=0), media=media_b)
    assert reused.tokens == fresh.tokens
    assert reused.stats.prompt_tokens == len(ids_b) - int(media_b.positions[0])


def test_text_only_run_never_loads_the_vision_tower():
    b = load(target=MEDIA / "target", drafter=MEDIA / "assistant")
    ids = chat_ids(b.tokenizer, [{"role": "user", "content": PROMPT}])
    ids2, media = attach_images(b, ids, [])
    generate(b, ids2, GenerationSettings(max_tokens=4, draft=3), media=media)
    assert media is None and b.vision is None


def test_huge_image_is_downscaled_within_the_budget(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (1500, 1000), (200, 10, 30)).save(path)
    p = read_image(path, patch=2, pooling=3, max_soft_tokens=70)
    rows, cols = p.grid
    assert rows * cols <= 70 * 9 and rows % 3 == 0 and cols % 3 == 0
    assert (rows, cols) == (18, 30) and p.soft_tokens == 60
    # A strip: one row of 3 x 3 blocks, as long as the 2520-patch budget allows (3 x 840 patches).
    assert resized_size(10, 4000, 16, 3, 280) == (48, 13440)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"hello, not a picture\n", "not an image Pillow can read"),
        (None, "cannot decode the image, truncated or corrupt"),
    ],
)
def test_bad_image_file_is_one_line(tmp_path, content, message):
    path = tmp_path / "bad.png"
    if content is None:  # a PNG cut in half
        data = IMAGE.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(SpecdecError, match=message) as e:
        read_image(path, 2, 3, 70)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_missing_and_empty_images_are_one_line(tmp_path):
    import struct
    import zlib

    with pytest.raises(SpecdecError, match="no such image file"):
        read_image(tmp_path / "nope.png", 2, 3, 70)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path = tmp_path / "zero.png"  # a well-formed PNG header that says 0 x 5 pixels
    ihdr = struct.pack(">IIBBBBB", 0, 5, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    # Pillow refuses 0-pixel files when it opens them, before our own 0-pixel check can run.
    with pytest.raises(SpecdecError, match=r"zero\.png: (the image has 0 pixels|not an image)") as e:
        read_image(path, 2, 3, 70)
    assert "\n" not in str(e.value)


def test_image_to_a_target_without_a_vision_tower_says_how_to_fix_it():
    b = load(target=TARGET)
    with pytest.raises(SpecdecError, match="has no vision tower .*--target"):
        attach_images(b, [2, 5, 6], [IMAGE])
    b = load(target=FIXTURES / "families" / "e2b" / "target")
    with pytest.raises(SpecdecError, match="has no vision tower"):
        vision_of(b)


def test_placeholder_count_must_match_the_images(bundle):
    ids = chat_ids(bundle.tokenizer, [{"role": "user", "content": PROMPT}])
    with pytest.raises(SpecdecError, match=r"has 0 image placeholder\(s\) \(id 510\) for 1 image\(s\)"):
        attach_images(bundle, ids, [IMAGE])


runner = CliRunner()
CLI = ["generate", "--target", str(MEDIA / "target"), "--drafter", str(MEDIA / "assistant")]


def test_cli_generate_with_an_image_prints_expanded_prompt_ids(ref):
    r = runner.invoke(app, CLI + ["--image", str(IMAGE), "-p", PROMPT, "-m", "6", "-k", "3", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["prompt_ids"] == ref["prompt_ids"].tolist()
    assert out["token_ids"] == ref["greedy_ids"][:6].tolist()


def test_cli_generate_bad_image_is_one_line_error(tmp_path):
    bad = tmp_path / "x.jpg"
    bad.write_text("not a jpeg")
    r = runner.invoke(app, CLI + ["--image", str(bad), "-p", PROMPT, "-m", "4"])
    assert r.exit_code == 1
    assert r.output.strip().splitlines()[-1].startswith(f"error: {bad}: not an image")


@pytest.mark.slow  # the quick loop keeps a cheaper check of this idea
def test_cli_prompt_ids_with_a_placeholder_take_an_image(ref):
    ids = ref["prompt_ids"].tolist()
    user = ids[:6] + [510] + ids[68:]  # the prompt before expansion: one placeholder
    r = runner.invoke(app, CLI + ["--image", str(IMAGE), "--prompt-ids", ",".join(map(str, user)), "-m", "3", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["prompt_ids"] == ids and out["token_ids"] == ref["greedy_ids"][:3].tolist()
