"""Audio files -> 16 kHz mono samples -> Gemma 4's log-mel frames (numpy only, no mlx, no torch).

1. decode     `read_audio`: integer-PCM WAV (8, 16, 24 or 32-bit) through the stdlib `wave` module;
              every other file (FLAC, MP3, OGG/Vorbis, float WAV, AIFF, ...) through `soundfile`
              (libsndfile, bundled in its wheels for macOS and Linux). Any rate and channel count;
              only the first `max_samples` at 16 kHz are read (the processor cuts clips at 30 s,
              so an hour-long file costs no more than 30 s of it); channels are averaged to mono;
              other rates are resampled to 16 kHz by band-limited sinc interpolation
              (Hann-windowed, 32 zero crossings each side, cut off at the lower of the two Nyquist
              frequencies). Anything unreadable is a one-line SpecdecError (an MP4/M4A file: how to
              convert it); libmpg123's own warnings about a damaged MP3 are kept off stderr.
2. features   `log_mel`: transformers 5.25 `Gemma4AudioFeatureExtractor` step for step: the clip
              cut to `max_samples` (30 s) and padded with zeros to a multiple of 128 samples,
              `frame_length / 2` zeros before it (semicausal), frames of `frame_length + 1` samples
              every `hop_length`, a periodic Hann window over the first `frame_length`, |rFFT|
              through an HTK mel bank, log(mel + mel_floor), optional per-bin mean/stddev. A frame
              is valid when its last sample is real audio; only the valid frames (a prefix) are
              returned. Dither is not applied (it would make runs differ).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import sys
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import SpecdecError

RATE = 16_000
PAD_TO = 128  # the feature extractor's pad_to_multiple_of


@dataclass(frozen=True)
class MelSpec:
    """The feature extractor's settings (preprocessor_config.json, or processor_config.json's
    "feature_extractor"); defaults are transformers' and E2B's."""

    feature_size: int = 128
    sampling_rate: int = RATE
    frame_length: int = 320  # samples (20 ms)
    hop_length: int = 160  # samples (10 ms)
    min_frequency: float = 0.0
    max_frequency: float = 8000.0
    preemphasis: float = 0.0
    preemphasis_htk_flavor: bool = True
    fft_overdrive: bool = False
    input_scale_factor: float = 1.0
    mel_floor: float = 1e-3
    per_bin_mean: Optional[tuple] = None
    per_bin_stddev: Optional[tuple] = None
    max_samples: int = 480_000

    @classmethod
    def from_folder(cls, folder: Path) -> MelSpec:
        for name, key in (("processor_config.json", "feature_extractor"), ("preprocessor_config.json", None)):
            path = folder / name
            if not path.is_file():
                continue
            try:
                cfg = json.loads(path.read_text())
                cfg = cfg.get(key) if key else cfg
            except (ValueError, OSError, AttributeError):
                raise SpecdecError(f"{path}: not a readable processor config") from None
            if not isinstance(cfg, dict) or "feature_size" not in cfg:
                continue
            fields = {k: cfg[k] for k in cls.__dataclass_fields__ if cfg.get(k) is not None}
            for k in ("per_bin_mean", "per_bin_stddev"):
                if k in fields:
                    fields[k] = tuple(fields[k])
            spec = cls(**fields)
            if spec.sampling_rate != RATE:
                raise SpecdecError(f"{path}: sampling_rate {spec.sampling_rate} is not {RATE}")
            return spec
        return cls()


def resample(x: np.ndarray, rate: int, to: int = RATE, zeros: int = 32) -> np.ndarray:
    """Mono float samples at `rate` -> at `to`: windowed-sinc interpolation (see the module docstring)."""
    if rate == to or len(x) == 0:
        return x.astype(np.float32)
    n_out = int(math.ceil(len(x) * to / rate))
    cutoff = min(1.0, to / rate)  # of the input's Nyquist
    half = zeros / cutoff  # filter half-width in input samples
    out = np.empty(n_out, dtype=np.float64)
    src = x.astype(np.float64)
    for lo in range(0, n_out, 4096):  # blocks keep the [block, taps] matrix small
        t = np.arange(lo, min(lo + 4096, n_out)) * (rate / to)
        taps = np.arange(-int(half), int(half) + 2)
        idx = np.floor(t).astype(np.int64)[:, None] + taps[None]
        d = t[:, None] - idx
        w = cutoff * np.sinc(cutoff * d) * np.where(np.abs(d) < half, 0.5 + 0.5 * np.cos(np.pi * d / half), 0.0)
        valid = (idx >= 0) & (idx < len(src))
        out[lo : lo + len(t)] = (np.where(valid, src[np.clip(idx, 0, len(src) - 1)], 0.0) * w).sum(axis=1)
    return out.astype(np.float32)


FORMATS = "WAV, FLAC, MP3 or OGG"


def _frames_to_read(rate: int, max_samples: int, zeros: int = 32) -> int:
    """Input frames whose resampling gives the first `max_samples` output samples exactly (the
    filter reaches `zeros / cutoff` input samples past each output's position)."""
    cutoff = min(1.0, RATE / rate)
    return math.ceil(max_samples * rate / RATE) + math.ceil(zeros / cutoff) + 2


class _NotPcmWav(Exception):
    """The stdlib `wave` module cannot read it: another format, or float samples."""


def _read_pcm_wav(opened, label: str, max_samples: int) -> tuple[np.ndarray, int]:
    try:
        with wave.open(opened, "rb") as w:
            channels, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            n = min(n, _frames_to_read(rate, max_samples))
            raw = w.readframes(n)
    except (wave.Error, EOFError) as e:
        raise _NotPcmWav(" ".join(str(e).split())) from None
    frame = channels * width
    if len(raw) < n * frame or len(raw) % frame:
        raise SpecdecError(f"{label}: truncated WAV file ({len(raw) // max(frame, 1)} of {n} frames)")
    if n == 0:
        raise SpecdecError(f"{label}: the audio file holds no samples")
    if width == 1:
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        x = ((b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8).astype(np.float32) / 2**23
    elif width in (2, 4):
        x = np.frombuffer(raw, f"<i{width}").astype(np.float32) / 2 ** (8 * width - 1)
    else:
        raise SpecdecError(f"{label}: {8 * width}-bit samples are not supported (8, 16, 24 or 32-bit PCM)")
    return x.reshape(-1, channels), rate


def _read_other(source, label: str, max_samples: int, why: str) -> tuple[np.ndarray, int]:
    """Through libsndfile (soundfile): FLAC, MP3, OGG, float WAV and the rest it knows."""
    try:
        import soundfile
    except ImportError:  # pragma: no cover - a dependency; only a broken install lacks it
        raise SpecdecError(f"{label}: not an integer-PCM WAV ({why}); pip install soundfile for {FORMATS}") from None
    opened = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else str(source)
    head = bytes(source[:12]) if isinstance(source, (bytes, bytearray)) else _head(source)
    if head[4:8] == b"ftyp":  # MP4/M4A (AAC, ALAC): what a Mac's voice memo is; libsndfile has no decoder
        raise SpecdecError(
            f"{label}: an MP4/M4A audio file, which cannot be read here: convert it to WAV or FLAC "
            "(macOS: afconvert -f WAVE -d LEI16 IN.m4a OUT.wav; elsewhere: ffmpeg -i IN.m4a OUT.flac)"
        )
    mp3 = head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0)
    try:
        with _stderr_silenced(mp3), soundfile.SoundFile(opened) as f:
            n = min(f.frames, _frames_to_read(f.samplerate, max_samples))
            rate, x = f.samplerate, f.read(n, dtype="float32", always_2d=True)
            mp3 = f.format == "MP3"
    except (RuntimeError, TypeError, ValueError, OSError) as e:  # soundfile.LibsndfileError is a RuntimeError
        detail = " ".join(str(getattr(e, "error_string", None) or e).split()).rstrip(".")
        if mp3 and "does not exist" in detail:  # libsndfile's words for an MP3 cut inside its first frames
            raise SpecdecError(f"{label}: a truncated or damaged MP3 file (no frame in it decodes)") from None
        raise SpecdecError(f"{label}: not an audio file that can be read ({detail[:120]}; {FORMATS} are)") from None
    if len(x) == 0:
        raise SpecdecError(f"{label}: the audio file holds no samples")
    if len(x) < n and not mp3:  # an MP3's frame count can be an estimate (no Xing header)
        raise SpecdecError(f"{label}: truncated audio file ({len(x)} of {n} frames)")
    return x, rate


def _head(path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(12)
    except OSError:
        return b""  # soundfile says why below


@contextlib.contextmanager
def _stderr_silenced(on: bool):
    """File descriptor 2 to the null device while `on`: libmpg123 (inside libsndfile) writes warnings
    straight to it for a damaged MP3 ("Xing stream size off by more than 1%", "Cannot read next
    header"), where the samples that decode or one error line say what matters. Process-wide for
    those milliseconds: another thread's stderr output then is dropped too."""
    if not on:
        yield
        return
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    os.close(null)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def read_audio(source, name: Optional[str] = None, max_samples: int = 480_000) -> np.ndarray:
    """An audio file (a path) or its bytes -> float32 mono samples in [-1, 1] at 16 kHz, at most
    `max_samples` of them; every unreadable file is a one-line SpecdecError that starts with
    `name` (default: the path)."""
    if isinstance(source, (bytes, bytearray)):
        label, opened = name or "audio", io.BytesIO(source)
    else:
        label = name or str(source)
        if not Path(source).is_file():
            raise SpecdecError(f"{label}: no such audio file")
        opened = str(source)
    try:
        x, rate = _read_pcm_wav(opened, label, max_samples)
    except _NotPcmWav as e:
        x, rate = _read_other(source, label, max_samples, str(e))
    except OSError as e:
        raise SpecdecError(f"{label}: cannot read the audio file ({e.strerror or e})") from None
    x = x.mean(axis=1, dtype=np.float32) if x.shape[1] > 1 else x[:, 0]
    return resample(x, rate)[:max_samples]


def _mel_bank(spec: MelSpec, bins: int) -> np.ndarray:
    """[bins, feature_size] HTK triangular filters, unnormalised (transformers' mel_filter_bank)."""
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    points = np.linspace(mel(spec.min_frequency), mel(spec.max_frequency), spec.feature_size + 2)
    hz = 700.0 * (10 ** (points / 2595.0) - 1.0)
    fft_hz = np.linspace(0, spec.sampling_rate // 2, bins)
    diff = np.diff(hz)
    slopes = hz[None] - fft_hz[:, None]
    return np.maximum(np.zeros(1), np.minimum(-slopes[:, :-2] / diff[:-1], slopes[:, 2:] / diff[1:]))


def log_mel(samples: np.ndarray, spec: MelSpec = MelSpec()) -> np.ndarray:
    """16 kHz mono float32 samples -> the valid log-mel frames [T, feature_size] float32."""
    x = np.asarray(samples, dtype=np.float32)[: spec.max_samples]
    real = len(x)
    padded = -(-real // PAD_TO) * PAD_TO
    x = np.pad(x, (0, padded - real)) * np.float32(spec.input_scale_factor)
    left = spec.frame_length // 2
    x = np.pad(x, (left, 0))
    size = spec.frame_length + 1
    n = (len(x) - size) // spec.hop_length + 1
    if n <= 0:
        return np.zeros((0, spec.feature_size), np.float32)
    frames = np.lib.stride_tricks.as_strided(x, (n, size), (x.strides[0] * spec.hop_length, x.strides[0]))
    if spec.preemphasis > 0.0:
        p = spec.preemphasis
        if spec.preemphasis_htk_flavor:
            frames = np.concatenate([frames[:, :1] * (1.0 - p), frames[:, 1:-1] - p * frames[:, :-2]], axis=-1)
        else:
            frames = frames[:, 1:] - p * frames[:, :-1]
    else:
        frames = frames[:, :-1]
    window = np.hanning(spec.frame_length + 1)[:-1].astype(np.float32)
    fft = 2 ** math.ceil(math.log2(spec.frame_length)) * (2 if spec.fft_overdrive else 1)
    magnitude = np.abs(np.fft.rfft(frames * window, n=fft, axis=-1))
    out = np.log(magnitude @ _mel_bank(spec, fft // 2 + 1) + np.float64(spec.mel_floor))
    if spec.per_bin_mean is not None:
        out = out - np.asarray(spec.per_bin_mean)
    if spec.per_bin_stddev is not None:
        out = out / np.asarray(spec.per_bin_stddev)
    # frame i ends at padded sample i * hop + frame_length, which must be real audio
    valid = np.arange(n) * spec.hop_length + spec.frame_length < left + real
    return out[: int(valid.sum())].astype(np.float32)
