"""Audio files beyond integer-PCM WAV (audio_file.read_audio): FLAC, float WAV, MP3 and OGG through
soundfile (libsndfile), the same samples where the format is lossless, the same answer end to end,
only the first 30 s read of a long file, and one line for each bad file. The files are written at
test time from the fixture's clip (tests/fixtures/media_audio/clip.wav, 16-bit PCM, 1.5 s)."""

import base64
import json

import numpy as np
import pytest
import soundfile

from mlx_specdec.audio_file import read_audio, resample
from mlx_specdec.chat.session import pasted_path

from .conftest import FIXTURES

AUDIO = FIXTURES / "media_audio"
CLIP = AUDIO / "clip.wav"
PCM, RATE = soundfile.read(CLIP, dtype="int16")


def written(path, data, rate=RATE, **kw):
    soundfile.write(path, data, rate, **kw)
    return path


@pytest.mark.parametrize(
    "name, data, kw",
    [
        ("c.flac", PCM, {"subtype": "PCM_16"}),
        ("c.wav", PCM / 32768.0, {"subtype": "FLOAT"}),
        ("c.aiff", PCM, {"subtype": "PCM_16"}),
    ],
    ids=["flac", "float wav", "aiff"],
)
def test_lossless_formats_give_the_wav_clips_samples_exactly(tmp_path, name, data, kw):
    assert np.array_equal(read_audio(written(tmp_path / name, data, **kw)), read_audio(CLIP))


@pytest.mark.parametrize("name, subtype", [("c.mp3", "MPEG_LAYER_III"), ("c.ogg", "VORBIS")], ids=["mp3", "ogg"])
def test_lossy_formats_decode_close_to_the_wav_clip(tmp_path, name, subtype):
    got, want = read_audio(written(tmp_path / name, PCM, subtype=subtype)), read_audio(CLIP)
    assert len(got) == len(want)
    assert np.corrcoef(got, want)[0, 1] > 0.98  # measured: 0.990 (MP3 at libsndfile's default), 0.996 (Vorbis)


@pytest.mark.slow
def test_a_long_file_gives_its_first_30_seconds_as_reading_it_whole_would(tmp_path):
    rng = np.random.default_rng(0)
    stereo = rng.uniform(-0.5, 0.5, (8_000 * 31, 2)).astype(np.float32)
    path = written(tmp_path / "long.flac", stereo, rate=8_000, subtype="PCM_24")
    whole, _ = soundfile.read(path, dtype="float32")
    want = resample(whole.mean(axis=1, dtype=np.float32), 8_000)[:480_000]  # all of it, then cut
    assert np.array_equal(read_audio(path), want)


def bad(tmp_path, kind):
    flac = written(tmp_path / "ok.flac", PCM, subtype="PCM_16").read_bytes()
    path = tmp_path / f"{kind}.flac"
    if kind == "not audio":
        path.write_text("hello")
    elif kind == "cut":
        path.write_bytes(flac[: len(flac) // 3])
    elif kind == "mp3 cut in its first frame":
        path = tmp_path / "cut.mp3"
        path.write_bytes(written(tmp_path / "c.mp3", PCM, subtype="MPEG_LAYER_III").read_bytes()[:200])
    elif kind == "m4a":  # an MP4 box header, as a Mac's voice memo starts
        path = tmp_path / "memo.m4a"
        path.write_bytes(b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00M4A mp42isom" + bytes(200))
    elif kind == "empty":  # float samples: past the stdlib reader, to libsndfile
        path = written(tmp_path / "empty.wav", np.zeros(0, np.float32), subtype="FLOAT")
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("not audio", "not an audio file that can be read (Format not recognised; WAV, FLAC, MP3 or OGG are)"),
        ("cut", "not an audio file that can be read (Error : flac decoder lost sync; WAV, FLAC, MP3 or OGG are)"),
        ("empty", "the audio file holds no samples"),
        ("mp3 cut in its first frame", "a truncated or damaged MP3 file (no frame in it decodes)"),
        (
            "m4a",
            "an MP4/M4A audio file, which cannot be read here: convert it to WAV or FLAC "
            "(macOS: afconvert -f WAVE -d LEI16 IN.m4a OUT.wav; elsewhere: ffmpeg -i IN.m4a OUT.flac)",
        ),
    ],
)
def test_bad_files_are_one_error_line_each(tmp_path, capfd, kind, message):
    from mlx_specdec.errors import SpecdecError

    path = bad(tmp_path, kind)
    capfd.readouterr()
    with pytest.raises(SpecdecError) as e:
        read_audio(path)
    assert str(e.value) == f"{path}: {message}"
    assert capfd.readouterr().err == ""  # nothing else on stderr: the one line is the caller's to print


def test_a_damaged_mp3_gives_what_decodes_and_keeps_libmpg123s_warnings_off_stderr(tmp_path, capfd):
    whole = written(tmp_path / "c.mp3", PCM, subtype="MPEG_LAYER_III").read_bytes()
    half = tmp_path / "half.mp3"
    half.write_bytes(whole[: len(whole) // 2])  # its Xing header still counts the whole stream
    capfd.readouterr()
    got = read_audio(half)
    assert capfd.readouterr().err == ""  # libmpg123 writes "Xing stream size off by more than 1%" to fd 2
    assert 0 < len(got) < len(read_audio(tmp_path / "c.mp3"))


@pytest.mark.slow
def test_cli_generate_with_a_flac_clip_gives_transformers_prompt_ids_and_tokens(tmp_path):
    import mlx.core as mx
    from typer.testing import CliRunner

    from mlx_specdec.cli import app

    ref = {k: np.array(v) for k, v in mx.load(str(AUDIO / "reference.safetensors")).items()}
    flac = written(tmp_path / "clip.flac", PCM, subtype="PCM_16")
    args = ["generate", "--target", str(AUDIO / "target"), "--drafter", str(AUDIO / "assistant")]
    r = CliRunner().invoke(app, [*args, "--audio", str(flac), "-p", "Transcribe it.", "-m", "12", "-k", "3", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["prompt_ids"] == ref["prompt_ids"].tolist()
    assert out["token_ids"] == ref["greedy_ids"][:12].tolist()


def test_a_pasted_audio_path_attaches_the_clip_in_chat(tmp_path):
    from mlx_specdec.chat.session import ChatSession
    from mlx_specdec.load import load

    mp3 = written(tmp_path / "voice note.mp3", PCM, subtype="MPEG_LAYER_III")
    assert pasted_path(f"'{mp3}'") == mp3
    session = ChatSession(load(target=AUDIO / "target", drafter=AUDIO / "assistant"))
    action = session.line_action(str(mp3).replace(" ", "\\ "))
    assert action is not None and not action.error and "audio tokens" in action.message
    assert session.clips == [str(mp3)] and session.images == []
    memo = tmp_path / "memo.m4a"
    memo.write_bytes(b"\x00\x00\x00\x20ftypM4A " + bytes(200))
    action = session.line_action(str(memo))
    assert action.error and "afconvert" in action.message and session.clips == [str(mp3)]


def test_the_server_reads_an_input_audio_part_by_its_content():
    from mlx_specdec.serve.api import _audio_part

    data = base64.b64encode(CLIP.read_bytes()).decode()
    for fmt in ("wav", "mp3", "flac", "ogg", "FLAC"):
        assert _audio_part({"input_audio": {"data": data, "format": fmt}}, "messages[0].content[0]").data
