"""Audio into a Gemma 4 target: WAV decoding, log-mel features and the audio tower against
transformers 5.25 (tests/fixtures/media_audio, made by scripts/fixtures/make_media_audio_fixtures.py).

Tolerances (float32): log-mel features exact (the same numpy operations in the same order); audio
tower output atol 1e-5 (seen: 1.2e-6; values up to ~1.2), soft tokens atol 1e-5 (seen: 3.0e-6;
values up to ~2.5); logits over the whole prompt atol 2e-3 as for the text fixtures (seen: 1.0e-4,
logits up to ~11.6; an earlier draw of the fixture's weights showed 2.2e-3 at one soft-token
position); with an image before the clip, the last logits (seen: 4.8e-5); ids exact.
"""

import json
import wave

import mlx.core as mx
import numpy as np
import pytest

from mlx_specdec.audio_file import MelSpec, log_mel, read_audio, resample
from mlx_specdec.models.audio import Audio, AudioArgs, subsampled_length

from .conftest import FIXTURES
from .helpers.media import media_turn, reference, reference_pair

AUDIO = FIXTURES / "media_audio"
CLIP = AUDIO / "clip.wav"


@pytest.fixture(scope="module")
def ref():
    return reference(AUDIO)


@pytest.fixture(scope="module")
def tower():
    cfg = json.loads((AUDIO / "target" / "config.json").read_text())
    a = Audio(AudioArgs.from_config(cfg))
    a.load_weights(list(Audio.sanitize(mx.load(str(AUDIO / "target" / "model.safetensors"))).items()), strict=True)
    return a


def test_log_mel_frames_equal_the_feature_extractors(ref):
    features = log_mel(read_audio(CLIP), MelSpec.from_folder(AUDIO / "target"))
    valid = int(ref["features_mask"].sum())
    assert features.shape == (valid, 128) and valid == 149 and ref["features_mask"][:valid].all()
    assert np.array_equal(features, ref["features"][:valid])
    assert subsampled_length(valid) == len(ref["audio_hidden"]) == 38


def test_audio_tower_and_soft_tokens_match_transformers(ref, tower):
    hidden = tower.audio_tower(mx.array(log_mel(read_audio(CLIP))))
    np.testing.assert_allclose(np.array(hidden), ref["audio_hidden"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.array(tower.embed_audio(hidden)), ref["soft_tokens"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("mutant", ["no clipping bounds", "no relative position term", "window one frame wider"])
def test_plausible_tower_mistakes_miss_transformers_by_far(ref, tower, monkeypatch, mutant):
    from mlx_specdec.models import audio as audio_model

    features = mx.array(log_mel(read_audio(CLIP)))
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
    x = read_audio(tmp_path / "s.wav")
    assert x.dtype == np.float32 and len(x) == 16_000
    expected = np.sin(2 * np.pi * 440 * np.arange(16_000) / 16_000) * 16_000 / 32_768
    assert np.abs(x - expected)[100:-100].max() < 1e-3  # band-limited resampling of a clean tone
    assert np.array_equal(resample(x, 16_000), x)


# --- the prompt, the prefill and the loop ---------------------------------------------------------
PROMPT = "Transcribe it."


@pytest.fixture(scope="module")
def bundle():
    return reference_pair(AUDIO)


def audio_prompt(bundle, clips=(CLIP,)):
    return media_turn(bundle, PROMPT, clips=clips)


def test_expanded_prompt_ids_equal_the_processors(bundle, ref):
    ids, media = audio_prompt(bundle)
    assert ids == ref["prompt_ids"].tolist()
    assert media.positions.tolist() == [i for i, t in enumerate(ids) if t == 507]


def test_prompt_logits_with_a_clip_match_transformers(bundle, ref):
    from mlx_specdec.cache import PromptCache

    ids, media = audio_prompt(bundle)
    hidden = media.prefill(bundle.target, ids, 0, PromptCache(bundle).cache)
    logits = np.array(bundle.target.logits(hidden))[0]
    np.testing.assert_allclose(logits, ref["logits"], atol=2e-3, rtol=0)


@pytest.mark.parametrize("draft", [0, 3, pytest.param("auto", marks=pytest.mark.slow)])  # auto calibrates
def test_greedy_after_a_clip_equals_transformers(bundle, ref, draft):
    from mlx_specdec.decode import generate
    from mlx_specdec.settings import GenerationSettings

    ids, media = audio_prompt(bundle)
    out = generate(bundle, ids, GenerationSettings(max_tokens=40, draft=draft), media=media)
    assert out.tokens == ref["greedy_ids"].tolist()


@pytest.mark.slow  # two more 40-token runs: ~0.6 s
def test_speculative_equals_plain_after_a_clip_split_over_prefill_chunks(bundle, monkeypatch):
    import mlx_specdec.decode as decode
    from mlx_specdec.decode import generate
    from mlx_specdec.settings import GenerationSettings

    monkeypatch.setattr(decode, "PREFILL_CHUNK", 7)  # the clip's 38 soft tokens span several chunks
    ids, media = audio_prompt(bundle)
    plain = generate(bundle, ids, GenerationSettings(max_tokens=40, draft=0), media=media)
    spec = generate(bundle, ids, GenerationSettings(max_tokens=40, draft=3), media=media)
    assert spec.tokens == plain.tokens and spec.stats.drafted > 0


def test_text_only_run_never_loads_the_audio_tower(bundle):
    from mlx_specdec.load import load
    from mlx_specdec.media_audio import attach_media
    from mlx_specdec.prompt import chat_ids

    b = load(target=AUDIO / "target", drafter=AUDIO / "assistant")
    ids, media = attach_media(b, chat_ids(b.tokenizer, [{"role": "user", "content": PROMPT}]), [], [])
    assert media is None and b.audio is None


CLI = ["generate", "--target", str(AUDIO / "target"), "--drafter", str(AUDIO / "assistant")]


def test_cli_generate_with_a_clip_gives_transformers_prompt_ids_and_tokens(ref):
    from typer.testing import CliRunner

    from mlx_specdec.cli import app

    r = CliRunner().invoke(app, CLI + ["--audio", str(CLIP), "-p", PROMPT, "-m", "40", "-k", "3", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["prompt_ids"] == ref["prompt_ids"].tolist()
    assert out["token_ids"] == ref["greedy_ids"].tolist()  # no end-of-turn id among them


# --- bad audio: one `error:` line each ----------------------------------------------------------
def run_cli(args):
    from typer.testing import CliRunner

    from mlx_specdec.cli import app

    r = CliRunner().invoke(app, args)
    return r, r.output.strip().splitlines()[-1] if r.output.strip() else ""


def not_audio(path):
    path.write_text("hello, not a sound\n")
    return path


def truncated(path):
    data = CLIP.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the header still says 24000 frames
    return path


def samples(n):
    def make(path):
        write_wav(path, np.zeros(n, "<i2"))
        return path

    return make


@pytest.mark.parametrize(
    "make, message",
    [
        (not_audio, r"not an audio file that can be read \(Format not recognised; WAV, FLAC, MP3 or OGG are\)"),
        (truncated, r"truncated WAV file \(\d+ of 24000 frames\)"),
        (lambda p: p.parent / "missing.wav", "no such audio file"),
        (samples(0), "the audio file holds no samples"),
        (samples(50), "too short to encode"),
    ],
    ids=["not audio", "truncated", "missing", "empty", "too short"],
)
def test_cli_bad_audio_is_one_error_line(tmp_path, make, message):
    path = make(tmp_path / "x.wav")
    r, last = run_cli(CLI + ["--audio", str(path), "-p", PROMPT, "-m", "3"])
    assert r.exit_code == 1, r.output
    assert last.startswith(f"error: {path}: ") and __import__("re").search(message, last), last


def test_cli_audio_to_a_target_without_an_audio_tower_says_how_to_fix_it():
    media = FIXTURES / "media"
    args = ["generate", "--target", str(media / "target"), "--drafter", str(media / "assistant")]
    r, last = run_cli(args + ["--audio", str(CLIP), "-p", PROMPT, "-m", "3"])
    assert r.exit_code == 1 and last.startswith(f"error: {media / 'target'} has no audio tower"), r.output
    assert "--target" in last


def test_cli_more_soft_tokens_than_the_context_holds_is_one_error_line():
    r, last = run_cli(CLI + ["--audio", str(CLIP), "-p", PROMPT, "-m", "3", "--max-context", "48"])
    assert r.exit_code == 2, r.output  # a usage error: the fix is an option
    assert last == "error: the prompt has 63 tokens but the context holds 48; shorten it or raise --max-context"


def test_cli_audio_placeholders_must_match_the_clips(ref):
    ids = ",".join(map(str, ref["prompt_ids"][:5].tolist() + ref["prompt_ids"][-8:].tolist()))
    r, last = run_cli(CLI + ["--audio", str(CLIP), "--prompt-ids", ids, "-m", "3"])
    assert r.exit_code == 1 and last == "error: the prompt has 0 audio placeholder(s) (id 507) for 1 clip(s)", last


@pytest.mark.parametrize("draft", [pytest.param(0, marks=pytest.mark.slow), 3])
def test_an_image_then_a_clip_then_text_equals_transformers(bundle, ref, draft):
    from mlx_specdec.cache import PromptCache
    from mlx_specdec.decode import generate
    from mlx_specdec.media import image_placeholders
    from mlx_specdec.media_audio import attach_media, audio_placeholders
    from mlx_specdec.prompt import chat_ids
    from mlx_specdec.settings import GenerationSettings

    text = image_placeholders(bundle, 1) + audio_placeholders(bundle, 1) + "Say what you see and hear."
    ids = chat_ids(bundle.tokenizer, [{"role": "user", "content": text}])
    ids, media = attach_media(bundle, ids, [FIXTURES / "media" / "image.png"], [CLIP])
    assert ids == ref["mixed_prompt_ids"].tolist() and len(media.positions) == 60 + 38
    if draft == 3:
        hidden = media.prefill(bundle.target, ids, 0, PromptCache(bundle).cache)
        last = np.array(bundle.target.logits(hidden))[0, -1]
        np.testing.assert_allclose(last, ref["mixed_last_logits"], atol=2e-3, rtol=0)
    out = generate(bundle, ids, GenerationSettings(max_tokens=40, draft=draft), media=media)
    assert out.tokens == ref["mixed_greedy_ids"].tolist()
