"""Audio in `specdec chat`: `/audio PATH` attaches a clip to the next message, which then answers
as `generate --audio` does (transformers' tokens); a bad clip is one error line and the chat goes
on. On the tiny audio fixture (tests/fixtures/media_audio)."""

import io

import mlx.core as mx
import numpy as np
import pytest

from mlx_specdec.chat.session import ChatSession
from mlx_specdec.chat.terminal import run_piped
from mlx_specdec.load import load
from mlx_specdec.settings import GenerationSettings, SamplingParams

from .helpers.paths import FIXTURES

AUDIO = FIXTURES / "media_audio"
CLIP = AUDIO / "clip.wav"
PROMPT = "Transcribe it."


@pytest.fixture(scope="module")
def bundle():
    return load(target=AUDIO / "target", drafter=AUDIO / "assistant")


def test_audio_command_then_a_message_answers_as_transformers(bundle):
    ref = {k: np.array(v) for k, v in mx.load(str(AUDIO / "reference.safetensors")).items()}
    session = ChatSession(bundle, GenerationSettings(max_tokens=8, draft=3, sampling=SamplingParams(temp=0.0)))
    action = session.command(f"/audio {CLIP}")
    assert not action.error and "38 audio tokens" in action.message
    assert session.command("/audio").message == f"attached: {CLIP}"
    tokens = [r.token for r in session.reply(PROMPT)]
    assert session.last.prompt == ref["prompt_ids"].tolist() and tokens == ref["greedy_ids"][:8].tolist()
    assert session.clips == [] and session.messages[0]["audio"] == [str(CLIP)]
    follow = [r for r in session.reply("And now?")]  # the next turn still holds the clip
    assert follow and session.last.prompt[: len(ref["prompt_ids"])] == ref["prompt_ids"].tolist()


def test_bad_audio_in_chat_is_one_error_line_and_the_chat_goes_on(bundle, tmp_path, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_text("not a wav")
    out = io.StringIO()
    run_piped(ChatSession(bundle, GenerationSettings(max_tokens=2, draft=0)), [f"/audio {bad}", PROMPT], out)
    errors = capsys.readouterr().err.strip().splitlines()
    why = "not an audio file that can be read (Format not recognised; WAV, FLAC, MP3 or OGG are)"
    assert errors == [f"error: {bad}: {why}"]
    assert "tokens" in out.getvalue()


def test_audio_in_chat_with_a_target_without_an_audio_tower_says_so():
    media = FIXTURES / "media"
    session = ChatSession(load(target=media / "target"), GenerationSettings(draft=0))
    action = session.command(f"/audio {CLIP}")
    assert action.error and "has no audio tower" in action.message and session.clips == []
