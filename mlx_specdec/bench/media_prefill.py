"""`specdec bench --image/--audio`: what a prompt that holds images or audio clips costs before its
first token.

One prompt (`MEDIA_PROMPT`, chat template applied): the images, then the clips, then the text, as
`specdec generate --image/--audio` builds it. The files are read, resized and turned into mel
features once, untimed, before the bench's other runs (`prepare`, so a bad file fails at once); a
warm-up run then loads the towers from disk.
Each trial times, apart:
  encode_ms   the towers over every image and clip -> soft tokens (evaluated)
  prefill_ms  the target over the expanded prompt with those soft tokens, up to the first token
              (plain decoding of one token: `decode.generate` with max_tokens 1, draft 0)
The figures are medians over the trials. Like the rest of the bench, they are for comparing on one
machine; the soft-token count says how much prompt an image or a clip became.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx

from ..errors import UsageError

MEDIA_PROMPT = "Describe what you see and hear."


@dataclass
class MediaPrefill:
    """One prompt with media, timed (the JSON's "media_prefill").

    images:          the image files, in prompt order.
    clips:           the audio clips (WAV, FLAC, MP3, OGG), after the images.
    prompt_tokens:   the prompt's length after expansion (chat template, every soft token).
    soft_tokens:     how many of them the towers wrote.
    encode_ms:       the towers over every image and clip, median over trials.
    prefill_ms:      the target's prefill of the whole prompt up to the first token, median.
    total_ms:        encode + prefill, median over trials of their sum.
    trials_total_ms: encode + prefill in each trial.
    """

    images: list[str]
    clips: list[str]
    prompt_tokens: int
    soft_tokens: int
    encode_ms: float
    prefill_ms: float
    total_ms: float
    trials_total_ms: list[float]

    def line(self) -> str:
        """One line for the terminal, beside the bench's tables."""
        counts = ((len(self.images), "image"), (len(self.clips), "clip"))
        what = " + ".join(f"{n} {kind}{'s' if n > 1 else ''}" for n, kind in counts if n)
        return (
            f"media prefill ({what}, {self.soft_tokens} soft tokens in {self.prompt_tokens}): "
            f"encode {self.encode_ms:.1f} ms + prefill {self.prefill_ms:.1f} ms = {self.total_ms:.1f} ms"
        )


def check_media_files(images: Sequence[Path], clips: Sequence[Path]) -> None:
    """Before anything loads: every --image and --audio names an existing file (UsageError)."""
    for option, paths in (("--image", images), ("--audio", clips)):
        for path in paths:
            if not Path(path).is_file():
                raise UsageError(f"{option} {path}: no such file")


@dataclass
class MediaPrompt:
    """The timed prompt, its files read and placed (`prepare`): expanded ids and the pending media."""

    images: list[str]
    clips: list[str]
    ids: list[int]
    pending: object  # media_audio.MediaPrompt: encoded in each trial


def prepare(bundle, images: Sequence[Path], clips: Sequence[Path]) -> MediaPrompt:
    """Read and place the files (no tower yet): a bad file or a target without the tower fails here,
    before the bench's long runs."""
    from ..media import image_placeholders
    from ..media_audio import audio_placeholders, expand_media
    from ..prompt import chat_ids

    places = (image_placeholders(bundle, len(images)) if images else "") + (
        audio_placeholders(bundle, len(clips)) if clips else ""
    )
    ids = chat_ids(bundle.tokenizer, [{"role": "user", "content": places + MEDIA_PROMPT}])
    images, clips = [str(p) for p in images], [str(p) for p in clips]
    ids, pending = expand_media(bundle, ids, images, clips)
    return MediaPrompt(images, clips, ids, pending)


def time_media_prefill(bundle, prompt: MediaPrompt, trials: int = 3) -> MediaPrefill:
    """Time the towers and the prefill of `prompt` (module docstring): a warm-up, then `trials`."""
    from ..decode import generate
    from ..settings import GenerationSettings

    one_token = GenerationSettings(max_tokens=1, draft=0)
    encode, prefill = [], []
    for trial in range(trials + 1):  # the first run is the warm-up (it loads the towers)
        t0 = time.perf_counter()
        media = prompt.pending.encode(bundle)
        mx.eval(media.soft)
        t1 = time.perf_counter()
        generate(bundle, prompt.ids, one_token, media=media)
        t2 = time.perf_counter()
        if trial:
            encode.append((t1 - t0) * 1e3)
            prefill.append((t2 - t1) * 1e3)
    totals = [e + p for e, p in zip(encode, prefill)]
    return MediaPrefill(
        images=prompt.images,
        clips=prompt.clips,
        prompt_tokens=len(prompt.ids),
        soft_tokens=len(prompt.pending.positions),
        encode_ms=statistics.median(encode),
        prefill_ms=statistics.median(prefill),
        total_ms=statistics.median(totals),
        trials_total_ms=totals,
    )
