"""Audio into a Gemma 4 target: WAV decoding, log-mel features and the audio tower against
transformers 5.25 (tests/fixtures/media_audio, made by scripts/fixtures/make_media_audio_fixtures.py).

Tolerances (float32): log-mel features exact (the same numpy operations in the same order); audio
tower output atol 1e-5 (seen: 1.1e-6; values up to ~1.6), soft tokens atol 1e-5 (seen: 2.5e-6;
values up to ~3.1).
"""

import json
import wave

import mlx.core as mx
import numpy as np
import pytest

from mlx_specdec.audio_file import MelSpec, log_mel, read_wav, resample
from mlx_specdec.models.audio import Audio, AudioArgs, subsampled_length

from .conftest import FIXTURES

AUDIO = FIXTURES / "media_audio"
CLIP = AUDIO / "clip.wav"


@pytest.fixture(scope="module")
def ref():
    return {k: np.array(v) for k, v in mx.load(str(AUDIO / "reference.safetensors")).items()}


@pytest.fixture(scope="module")
def tower():
    cfg = json.loads((AUDIO / "target" / "config.json").read_text())
    a = Audio(AudioArgs.from_config(cfg))
    a.load_weights(list(Audio.sanitize(mx.load(str(AUDIO / "target" / "model.safetensors"))).items()), strict=True)
    return a


def test_log_mel_frames_equal_the_feature_extractors(ref):
    features = log_mel(read_wav(CLIP), MelSpec.from_folder(AUDIO / "target"))
    valid = int(ref["features_mask"].sum())
    assert features.shape == (valid, 128) and valid == 149 and ref["features_mask"][:valid].all()
    assert np.array_equal(features, ref["features"][:valid])
    assert subsampled_length(valid) == len(ref["audio_hidden"]) == 38


def test_audio_tower_and_soft_tokens_match_transformers(ref, tower):
    hidden = tower.audio_tower(mx.array(log_mel(read_wav(CLIP))))
    np.testing.assert_allclose(np.array(hidden), ref["audio_hidden"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.array(tower.embed_audio(hidden)), ref["soft_tokens"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("mutant", ["no clipping bounds", "no relative position term", "window one frame wider"])
def test_plausible_tower_mistakes_miss_transformers_by_far(ref, tower, monkeypatch, mutant):
    from mlx_specdec.models import audio as audio_model

    features = mx.array(log_mel(read_wav(CLIP)))
    if mutant == "no clipping bounds":
        monkeypatch.setattr(audio_model.ClippedLinear, "__call__", lambda self, x: self.linear(x))
    elif mutant == "no relative position term":
        monkeypatch.setattr(audio_model.Attention, "relative_keys", lambda self, h: mx.zeros((self.heads, 13, 8)))
    else:
        for layer in tower.audio_tower.layers:
            monkeypatch.setattr(layer.self_attn, "left", layer.self_attn.left + 1)
    wrong = np.array(tower.audio_tower(features))
    assert np.abs(wrong - ref["audio_hidden"]).max() > 1e-2


def write_wav(path, samples, rate=16_000, channels=1, width=2):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())


def test_stereo_and_other_rates_become_16_khz_mono(tmp_path):
    t = np.arange(44_100) / 44_100
    tone = np.round(np.sin(2 * np.pi * 440 * t) * 16_000).astype("<i2")
    write_wav(tmp_path / "s.wav", np.stack([tone, tone], axis=1), rate=44_100, channels=2)
    x = read_wav(tmp_path / "s.wav")
    assert x.dtype == np.float32 and len(x) == 16_000
    expected = np.sin(2 * np.pi * 440 * np.arange(16_000) / 16_000) * 16_000 / 32_768
    assert np.abs(x - expected)[100:-100].max() < 1e-3  # band-limited resampling of a clean tone
    assert np.array_equal(resample(x, 16_000), x)
