"""`specdec convert` keeps the audio tower: BUNDLE/audio, loaded on the first clip only.

On the tiny audio fixture (tests/fixtures/media_audio): a 16-bit bundle answers a clip exactly as
the Hugging Face folders do (transformers' prompt ids and 40 greedy tokens, speculative k=3), and a
text-only turn never reads the tower.
"""

import json

import mlx.core as mx
import numpy as np
import pytest

import weights_convert
from mlx_specdec.decode import generate
from mlx_specdec.load import load
from mlx_specdec.media_audio import attach_media, audio_placeholders
from mlx_specdec.prompt import chat_ids
from mlx_specdec.settings import GenerationSettings

from .helpers.paths import FIXTURES

AUDIO = FIXTURES / "media_audio"


@pytest.mark.slow  # a conversion: ~2.5 s
def test_converted_bundle_keeps_the_audio_tower_and_answers_a_clip_as_transformers(tmp_path):
    out = tmp_path / "b16"
    weights_convert.convert(str(AUDIO / "target"), str(AUDIO / "assistant"), out, bits=16, group_size=32)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sizes"]["audio"]["tensors"] > 0 and "audio/model.safetensors" in manifest["files"]
    assert (out / "audio" / "processor_config.json").is_file() and (out / "vision" / "config.json").is_file()
    b = load(out)
    b.tokenizer.eos_token_ids = []  # the reference runs 40 tokens whatever they are
    generate(b, chat_ids(b.tokenizer, [{"role": "user", "content": "Hi"}]), GenerationSettings(max_tokens=3))
    assert b.audio is None  # text only: the tower is never read
    ids = chat_ids(b.tokenizer, [{"role": "user", "content": audio_placeholders(b, 1) + "Transcribe it."}])
    ids, media = attach_media(b, ids, [], [AUDIO / "clip.wav"])
    tokens = generate(b, ids, GenerationSettings(max_tokens=40, draft=3), media=media).tokens
    ref = {k: np.array(v) for k, v in mx.load(str(AUDIO / "reference.safetensors")).items()}
    assert ids == ref["prompt_ids"].tolist() and tokens == ref["greedy_ids"].tolist()


@pytest.mark.slow  # a conversion: ~2.5 s
def test_convert_command_reports_the_kept_audio_tower(tmp_path):
    from typer.testing import CliRunner

    from mlx_specdec.cli import app

    args = ["convert", "--target", str(AUDIO / "target"), "--drafter", str(AUDIO / "assistant")]
    r = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "b"), "--bits", "16"])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip().endswith("MiB (read for audio only)") and "vision tower" in r.stdout


@pytest.mark.slow  # a conversion: ~2.5 s
def test_4_bit_bundle_hands_the_prompt_the_audio_towers_floats_and_drafts_exactly(tmp_path):
    """The target's embedding table is quantised (packed uint32); the clip's soft tokens stay floats."""
    from mlx_specdec.media_audio import expand_audio

    out = tmp_path / "b4"
    weights_convert.convert(str(AUDIO / "target"), str(AUDIO / "assistant"), out, bits=4, group_size=32)
    b = load(out)
    ids = chat_ids(b.tokenizer, [{"role": "user", "content": audio_placeholders(b, 1) + "Transcribe it."}])
    _, prompt = expand_audio(b, ids, [AUDIO / "clip.wav"])
    _, soft = prompt.encode(b)
    tower = b.audio[0](mx.array(prompt.features[0]))
    assert mx.issubdtype(soft.dtype, mx.floating) and np.array_equal(np.array(soft), np.array(tower))
    ids, media = attach_media(b, ids, [], [AUDIO / "clip.wav"])
    plain, spec = (generate(b, ids, GenerationSettings(max_tokens=12, draft=k), media=media).tokens for k in (0, 3))
    assert spec == plain
