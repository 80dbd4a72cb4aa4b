"""The media towers in the memory estimate (media_memory.py, provision): counted only for a run
given images or clips, never below what encoding one really costs, and named in a refusal."""

import wave

import mlx.core as mx
import numpy as np
import pytest
from PIL import Image

from mlx_specdec import provision
from mlx_specdec.errors import SpecdecError
from mlx_specdec.load import load
from mlx_specdec.media import image_placeholders
from mlx_specdec.media_audio import audio_placeholders, expand_media
from mlx_specdec.media_memory import media_bytes, published_media_bytes
from mlx_specdec.prompt import chat_ids

from .conftest import FIXTURES

AUDIO = FIXTURES / "media_audio"  # E2B-shaped, both towers


def encode_peak(bundle, images=(), clips=()) -> int:
    """MLX's peak memory above what was allocated, over encoding these images and clips."""
    places = image_placeholders(bundle, len(images)) + (audio_placeholders(bundle, len(clips)) if clips else "")
    ids = chat_ids(bundle.tokenizer, [{"role": "user", "content": places + "x"}])
    _, pending = expand_media(bundle, ids, list(images), list(clips))
    bundle.vision = bundle.audio = None  # the towers load inside the measurement
    mx.clear_cache()
    mx.reset_peak_memory()
    before = mx.get_active_memory()
    mx.eval(pending.encode(bundle).soft)
    return mx.get_peak_memory() - before


def noise_clip(path):
    """31 s of 16-bit noise at 16 kHz: more than the 30 s a clip is cut to."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes((np.random.default_rng(1).uniform(-0.3, 0.3, 16_000 * 31) * 32767).astype("<i2").tobytes())
    return path


@pytest.mark.slow
def test_the_estimate_is_never_below_encoding_a_full_image_or_a_30_second_clip(tmp_path):
    bundle = load(target=AUDIO / "target", drafter=AUDIO / "assistant")
    big = tmp_path / "big.png"  # downscaled to the processor's budget
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1500, 2000, 3), dtype=np.uint8)).save(big)
    clip = noise_clip(tmp_path / "long.wav")
    image_peak, clip_peak = encode_peak(bundle, images=[big]), encode_peak(bundle, clips=[clip])
    image_est, clip_est = media_bytes(AUDIO / "target", True, False), media_bytes(AUDIO / "target", False, True)
    # measured here: image 3.5 MB peak, 6.8 MB estimated; clip 367 MB peak, 418 MB estimated
    assert image_peak <= image_est <= 4 * image_peak
    assert clip_peak <= clip_est <= 4 * clip_peak


@pytest.mark.slow
def test_a_bfloat16_audio_tower_is_counted_with_its_float32_convolutions(tmp_path):
    """MLX's CPU backend runs a 16-bit convolution in float32: half the float32 estimate was too little."""
    import shutil

    folder = tmp_path / "target"
    shutil.copytree(AUDIO / "target", folder)
    weights = mx.load(str(folder / "model.safetensors"))
    weights = {k: v.astype(mx.bfloat16) if mx.issubdtype(v.dtype, mx.floating) else v for k, v in weights.items()}
    mx.save_safetensors(str(folder / "model.safetensors"), weights)
    clip = noise_clip(tmp_path / "long.wav")
    peak = encode_peak(load(target=folder, drafter=AUDIO / "assistant"), clips=[clip])
    estimate = media_bytes(folder, False, True)
    # measured here: 466 MB peak, 627 MB estimated (209 MB without the float32 working set)
    assert peak <= estimate <= 4 * peak


def test_a_text_run_counts_no_tower_and_a_run_with_media_counts_its_own():
    text = provision.estimate(AUDIO / "target")
    images = provision.estimate(AUDIO / "target", media=(True, False))
    both = provision.estimate(AUDIO / "target", media=(True, True))
    assert text.media == 0 and 0 < images.media < both.media
    assert both.total == text.total + both.media
    assert provision.estimate(FIXTURES / "families" / "e2b" / "target", media=(True, True)).media == 0  # no towers
    assert media_bytes(FIXTURES / "media" / "target", False, True) == 0  # no audio tower there
    assert media_bytes(FIXTURES / "media_12b" / "target", True, False) > 0  # the 12B's embedder


def test_a_converted_bundle_counts_what_its_source_folder_counts(tmp_path):
    """`convert` keeps the towers in the source's floats: the same tensors, the same estimate."""
    import weights_convert

    out = tmp_path / "b"
    weights_convert.convert(str(AUDIO / "target"), str(AUDIO / "assistant"), out, bits=4, group_size=32)
    for media in ((True, False), (False, True), (True, True)):
        assert media_bytes(out, *media) == media_bytes(AUDIO / "target", *media) > 0


def test_a_refusal_with_media_names_the_towers():
    text = provision.estimate(AUDIO / "target").total
    provision.check_memory_fit(AUDIO / "target", available=text)  # text alone fits
    with pytest.raises(SpecdecError) as e:
        provision.check_memory_fit(AUDIO / "target", available=text, media=(False, True))
    assert "+ image/audio towers 0.4 GB)" in str(e.value)


def test_models_lists_the_published_towers_as_estimates():
    rows = {r["name"]: r for r in provision.model_rows()}
    assert rows["e2b"]["media_bytes"] == published_media_bytes("e2b") > rows["31b"]["media_bytes"] * 0.5
    assert rows["12b"]["media_bytes"] is None  # an encoder-free embedder: not counted
    assert provision.estimate("31b", media=(True, False)).media == published_media_bytes("31b")
