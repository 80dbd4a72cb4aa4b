"""Images on the 12B (`gemma4_unified`: an encoder-free embedder, the image block on every layer), against
transformers 5.25 (tests/fixtures/media_12b, made by scripts/fixtures/make_media_12b_fixtures.py):
window 16, one 60-token image (longer than the window), 40 greedy tokens that move it out of the window.

Tolerances (float32): the processor's pixel values and position ids exactly (torch's uint8 resize is
integer arithmetic); embedder output atol 1e-4 (measured 1.7e-6); the last 8 prompt logits atol 2e-3
(as for the other media fixtures; measured 1.7e-5). Wrong variants miss by far more (reference.json):
no image block 3.0, the 31B's rule (sliding layers only, window-bounded) 2.9, no position embedding
3.5. Ids exact.
"""

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest
from typer.testing import CliRunner

import weights_convert
from mlx_specdec.cache import PromptCache
from mlx_specdec.cli import app
from mlx_specdec.decode import generate
from mlx_specdec.errors import SpecdecError
from mlx_specdec.load import load
from mlx_specdec.media import Media, attach_images, image_spec, read_image, vision_of
from mlx_specdec.prompt import chat_ids
from mlx_specdec.settings import GenerationSettings

from .conftest import FIXTURES
from .helpers.media import media_turn, prefill_chunks, reference, reference_pair

MEDIA = FIXTURES / "media_12b"
IMAGE = MEDIA / "image.png"
PROMPT = "Describe it."
TOL = 2e-3


@pytest.fixture(scope="module")
def ref():
    return reference(MEDIA)


@pytest.fixture(scope="module")
def bundle():
    return reference_pair(MEDIA)


def image_prompt(bundle, images=(IMAGE,)):
    return media_turn(bundle, PROMPT, images)


def last_logits(bundle, ids, media) -> np.ndarray:
    hidden = media.prefill(bundle.target, ids, 0, PromptCache(bundle).cache)
    return np.array(bundle.target.logits(hidden))[0, -8:]


@pytest.mark.parametrize("name, key", [("image.png", ""), ("odd.png", "odd/")])
def test_processor_port_gives_transformers_pixels_and_positions_exactly(ref, name, key):
    spec = image_spec(MEDIA / "target")  # config files only: no weights, no mlx
    assert spec.unified and spec.bidirectional and spec.max_soft_tokens == 70
    # What spec.read does before it checks the grid against the position table (odd.png's 17
    # columns are more than the fixture's table of 16 holds).
    p = read_image(MEDIA / name, 6, 1, 70, like_torch=True)
    assert p.soft_tokens == len(ref[key + "pixel_values"]) and p.pixels.dtype == np.float32
    np.testing.assert_array_equal(p.pixels, ref[key + "pixel_values"])  # 97 x 23 -> 102 x 24 upscales
    np.testing.assert_array_equal(p.positions, ref[key + "position_ids"])


def test_embedder_matches_transformers(bundle, ref):
    p = image_spec(MEDIA / "target").read(IMAGE)
    soft = vision_of(bundle).vision(mx.array(p.pixels), mx.array(p.positions), p.grid)
    np.testing.assert_allclose(np.array(soft), ref["soft_tokens"], atol=1e-4, rtol=0)


def test_prompt_ids_and_logits_match_transformers_and_wrong_variants_do_not(bundle, ref):
    ids, media = image_prompt(bundle)
    assert ids == ref["prompt_ids"].tolist() and media.spans == [(7, 67)] and media.every_layer
    np.testing.assert_allclose(last_logits(bundle, ids, media), ref["logits"], atol=TOL, rtol=0)
    causal = Media(media.positions, media.soft, media.pad_id)  # no image block
    sliding_only = Media(media.positions, media.soft, media.pad_id, bidirectional=True)  # the 31B's rule
    for wrong in (causal, sliding_only):
        assert np.abs(last_logits(bundle, ids, wrong) - ref["logits"]).max() > 100 * TOL
    embedder = vision_of(bundle).vision.vision_embedder
    table = embedder.pos_embedding
    embedder.pos_embedding = mx.zeros_like(table)  # no position embedding
    try:
        _, no_pos = image_prompt(bundle)
    finally:
        embedder.pos_embedding = table
    assert np.abs(last_logits(bundle, ids, no_pos) - ref["logits"]).max() > 100 * TOL


@pytest.mark.parametrize("draft", [0, 3, "auto"])
def test_greedy_after_an_image_equals_transformers_past_the_window(bundle, ref, draft):
    ids, media = image_prompt(bundle)
    out = generate(bundle, ids, GenerationSettings(max_tokens=40, draft=draft), media=media)
    assert out.tokens == ref["greedy_ids"].tolist()
    assert len(ids) + 39 - media.spans[0][1] > bundle.target.config["sliding_window"]  # the image leaves it
    assert draft == 0 or out.stats.drafted > 0


def test_prefill_in_short_chunks_keeps_the_image_whole_and_gives_the_same_tokens(bundle, ref, monkeypatch):
    import mlx_specdec.decode as decode

    monkeypatch.setattr(decode, "PREFILL_CHUNK", 16)  # cuts at 16, 32, 48, 64 fall inside the image [7, 67)
    ids, media = image_prompt(bundle)
    chunks = prefill_chunks(monkeypatch)
    out = generate(bundle, ids, GenerationSettings(max_tokens=40, draft=3), media=media)
    assert chunks == [(0, 7), (7, 67), (67, 81)] and out.tokens == ref["greedy_ids"].tolist()


def test_text_never_reads_the_embedder():
    b = load(target=MEDIA / "target", drafter=MEDIA / "assistant")
    generate(b, chat_ids(b.tokenizer, [{"role": "user", "content": PROMPT}]), GenerationSettings(max_tokens=4))
    assert b.vision is None


def test_a_grid_past_the_position_table_is_one_line(tmp_path):
    from PIL import Image

    strip = tmp_path / "strip.png"
    Image.new("RGB", (600, 6), (90, 120, 30)).save(strip)  # 1 x 70 patches; the fixture's table has 16
    with pytest.raises(SpecdecError, match=r"strip.png: 1 x 70 patches exceed the position table \(16\)$"):
        image_spec(MEDIA / "target").read(strip)


runner = CliRunner()


def test_cli_generate_with_an_image_gives_the_processors_prompt_ids_and_transformers_tokens(ref):
    cli = ["generate", "--target", str(MEDIA / "target"), "--drafter", str(MEDIA / "assistant")]
    r = runner.invoke(app, cli + ["--image", str(IMAGE), "--prompt", PROMPT, "-m", "40", "-k", "3", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["prompt_ids"] == ref["prompt_ids"].tolist()
    assert out["token_ids"] == ref["greedy_ids"].tolist()


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("m12")
    for bits in (4, 16):
        weights_convert.convert(
            str(MEDIA / "target"), str(MEDIA / "assistant"), root / f"b{bits}", bits=bits, group_size=32
        )
    return root


@pytest.mark.slow  # the module's two conversions, ~1 s more
def test_converted_16_bit_bundle_keeps_the_embedder_and_answers_as_transformers(bundles, ref):
    b = load(bundles / "b16")
    b.tokenizer.eos_token_ids = []
    ids, media = image_prompt(b)
    out = generate(b, ids, GenerationSettings(max_tokens=40, draft=3), media=media)
    assert ids == ref["prompt_ids"].tolist() and out.tokens == ref["greedy_ids"].tolist()
    manifest = json.loads((bundles / "b16" / "manifest.json").read_text())
    assert manifest["sizes"]["vision"]["tensors"] == 10 and "vision/model.safetensors" in manifest["files"]
    assert (bundles / "b16" / "vision" / "processor_config.json").is_file()


@pytest.mark.slow
def test_4_bit_bundle_drafts_exactly_after_an_image(bundles):
    b = load(bundles / "b4")
    ids, media = image_prompt(b)
    plain = generate(b, ids, GenerationSettings(max_tokens=24, draft=0), media=media)
    spec = generate(b, ids, GenerationSettings(max_tokens=24, draft=3), media=media)
    assert spec.tokens == plain.tokens and spec.stats.drafted > 0


@pytest.mark.slow
def test_a_bundle_converted_without_the_embedder_says_to_convert_again(bundles, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(bundles / "b4", old)
    shutil.rmtree(old / "vision")  # what `specdec convert` wrote for a 12B before it kept the embedder
    b = load(old)
    ids = chat_ids(b.tokenizer, [{"role": "user", "content": "<|image|>" + PROMPT}])
    with pytest.raises(SpecdecError, match=r"has no vision tower .*convert the bundle again$"):
        attach_images(b, ids, [IMAGE])
