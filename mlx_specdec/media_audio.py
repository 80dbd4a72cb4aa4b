"""Audio clips into a Gemma 4 prompt (E2B, E4B): files -> log-mel frames -> soft tokens -> the prompt.

The image path of media.py, for sound:
1. read     `read_clip`: audio_file.py decodes the WAV to 16 kHz mono and makes the valid log-mel
            frames with the feature extractor's settings from the target folder.
2. expand   `expand_audio`: each audio placeholder id in the prompt becomes `<|audio>` + M x
            `<|audio|>` + `<audio|>`, M = the frames after two stride-2 convolutions (25 per second,
            at most 750: clips are cut at 30 s), as the processor's `replace_audio_token` counts them.
3. encode   the audio tower (models/audio.py), loaded from the target folder (or BUNDLE/audio beside
            a converted target) on the first clip and kept on the bundle: a run without audio never
            reads it.
4. prefill  media.Media, unchanged: the placeholders are embedded as `<pad>` and overwritten by the
            soft tokens, the per-layer input uses id 0 there; audio attention in the text model is
            causal, like text.

`attach_media` runs both paths on one prompt: images and clips, each in the order its placeholders
appear, merged into one Media by position.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import mlx.core as mx
import numpy as np

from .audio_file import MelSpec, log_mel, read_audio
from .errors import SpecdecError
from .files import read_config, read_weights
from .media import ImagePrompt, Media, _check_ends_with_text, expand_images, load_tower
from .models.audio import Audio, AudioArgs, subsampled_length
from .models.quantise import float_dtype

MAX_SOFT_TOKENS = 750  # the processor's audio_seq_length


def _no_tower(folder: Path) -> str:
    return (
        f"{folder} has no audio tower (E2B and E4B have one; bundles converted before specdec kept it have "
        "none): pass the Hugging Face checkpoint's folder with --target (and --drafter), or convert again"
    )


@dataclass(frozen=True)
class AudioSpec:
    """What prompts need of a target's audio, from config files alone (no weights, no mlx)."""

    args: AudioArgs
    audio_token_id: int
    boa_token_id: int
    eoa_token_id: int
    mel: MelSpec
    max_soft_tokens: int = MAX_SOFT_TOKENS


def audio_spec(folder: Path) -> AudioSpec:
    """The target folder's audio spec; a one-line SpecdecError when it cannot take audio."""
    raw = read_config(folder)
    if not raw.get("audio_config"):
        raise SpecdecError(_no_tower(folder))
    ids = (raw.get("audio_token_id"), raw.get("boa_token_id"), raw.get("eoa_token_index", raw.get("eoa_token_id")))
    if None in ids:
        raise SpecdecError(f"{folder / 'config.json'}: no audio_token_id, boa_token_id and eoa_token_index")
    mel = MelSpec.from_folder(folder)
    try:
        args = AudioArgs.from_config(raw, mel.feature_size)
    except (KeyError, ValueError) as e:
        raise SpecdecError(f"{folder / 'config.json'}: audio_config: {e}") from None
    limit = MAX_SOFT_TOKENS
    path = folder / "processor_config.json"
    if path.is_file():
        try:
            limit = int(json.loads(path.read_text()).get("audio_seq_length") or MAX_SOFT_TOKENS)
        except (ValueError, AttributeError, TypeError, OSError):
            raise SpecdecError(f"{path}: not a readable processor config") from None
    return AudioSpec(args, *(int(i) for i in ids), mel, limit)


def load_audio(folder: Path, lazy: bool = False) -> tuple[Audio, AudioSpec]:
    """The folder's audio tower and spec; a one-line SpecdecError when it has none or cannot use it.
    `lazy`: check names and shapes without reading the weights (the converter's check)."""
    spec = audio_spec(folder)
    weights = Audio.sanitize(read_weights(folder))
    audio = load_tower(Audio(spec.args), weights, folder, "audio", _no_tower(folder), lazy)
    return audio, spec


def _folder(bundle) -> Path:
    """Where the bundle's audio tower is: BUNDLE/audio beside a converted target, else the target's folder."""
    folder = getattr(bundle, "target_path", None)
    if folder is None:
        raise SpecdecError("this model was not loaded from a folder; audio needs the target's folder")
    kept = Path(folder).parent / "audio"
    if Path(folder).name == "target" and (kept / "config.json").is_file():
        return kept
    return Path(folder)


def spec_of(bundle) -> AudioSpec:
    """The bundle's audio spec (config files only: safe off the thread that runs mlx)."""
    if getattr(bundle, "audio", None) is not None:
        return bundle.audio[1]
    return audio_spec(_folder(bundle))


def audio_placeholders(bundle, count: int) -> str:
    """The text of `count` audio placeholders (`<|audio|>` on Gemma 4), to put in a user message."""
    audio_id = spec_of(bundle).audio_token_id
    tok = getattr(bundle.tokenizer, "_tokenizer", bundle.tokenizer)
    piece = tok.convert_ids_to_tokens(audio_id)
    if not isinstance(piece, str) or tok.convert_tokens_to_ids(piece) != audio_id:
        raise SpecdecError(f"the tokenizer has no token for audio_token_id {audio_id}")
    return piece * count


def read_clip(source, spec: AudioSpec, name: Optional[str] = None) -> np.ndarray:
    """An audio file (a path) or its bytes -> the valid log-mel frames [T, mel], at most max_soft_tokens' worth."""
    label = name or ("audio" if isinstance(source, (bytes, bytearray)) else str(source))
    frames = log_mel(read_audio(source, name=label, max_samples=spec.mel.max_samples), spec.mel)
    if subsampled_length(len(frames)) == 0:
        raise SpecdecError(f"{label}: the clip is too short to encode (under 30 ms)")
    return frames[: 4 * spec.max_soft_tokens]


def attach_clip(bundle, path) -> int:
    """Read a clip now (a bad one is one error line) -> its soft tokens (chat's /audio)."""
    return subsampled_length(len(read_clip(path, spec_of(bundle))))


@dataclass
class AudioPrompt:
    """Clips read and placed in the prompt, not yet through the tower (no mlx). positions [n] as in Media."""

    features: list[np.ndarray]
    positions: np.ndarray

    def encode(self, bundle) -> tuple[np.ndarray, mx.array]:
        """The tower over every clip -> (positions, soft tokens [n, text hidden]) (loads the tower on first use)."""
        if getattr(bundle, "audio", None) is None:
            bundle.audio = load_audio(_folder(bundle))
        tower = bundle.audio[0]
        dtype = float_dtype(bundle.target.model.model.embed_tokens)
        soft = mx.concatenate([tower(mx.array(f)) for f in self.features], axis=0)
        return self.positions, soft.astype(dtype)


def expand_audio(bundle, ids: list[int], clips: list, names: Optional[list] = None) -> tuple[list[int], AudioPrompt]:
    """Prompt ids with one audio placeholder per clip (paths or bytes, in order) -> (expanded ids,
    AudioPrompt). Each placeholder becomes `<|audio>` + M x `<|audio|>` + `<audio|>`."""
    spec = spec_of(bundle)
    found = sum(1 for t in ids if t == spec.audio_token_id)
    if found != len(clips):
        raise SpecdecError(
            f"the prompt has {found} audio placeholder(s) (id {spec.audio_token_id}) for {len(clips)} clip(s)"
        )
    names = names or [None if isinstance(c, (str, Path)) else f"audio {i + 1}" for i, c in enumerate(clips)]
    features = [read_clip(c, spec, n) for c, n in zip(clips, names)]
    out, positions = [], []
    it = iter(features)
    for t in ids:
        if t != spec.audio_token_id:
            out.append(int(t))
            continue
        m = subsampled_length(len(next(it)))
        out.append(spec.boa_token_id)
        positions.extend(range(len(out), len(out) + m))
        out.extend([spec.audio_token_id] * m)
        out.append(spec.eoa_token_id)
    return out, AudioPrompt(features, np.array(positions, dtype=np.int64))


@dataclass
class MediaPrompt:
    """A prompt's images and clips read and placed, not yet through the towers (no mlx)."""

    images: Optional[ImagePrompt]
    audio: Optional[AudioPrompt]

    @property
    def positions(self) -> np.ndarray:
        """Every soft token's position, ascending (as Media.positions)."""
        parts = [p.positions for p in (self.images, self.audio) if p is not None]
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    def encode(self, bundle) -> Media:
        """Both towers -> one Media, soft tokens ordered by position (mlx: loads a tower on first use)."""
        if self.audio is None:
            return self.images.encode(bundle)
        positions, soft = self.audio.encode(bundle)
        pad = bundle.target.config.get("pad_token_id", 0)
        pad, bidirectional, every_layer = 0 if pad is None else int(pad), False, False
        if self.images is not None:
            image_media = self.images.encode(bundle)
            bidirectional, every_layer = image_media.bidirectional, image_media.every_layer
            positions = np.concatenate([image_media.positions, positions])
            soft = mx.concatenate([image_media.soft, soft], axis=0)
            order = np.argsort(positions, kind="stable")
            positions, soft = positions[order], soft[mx.array(order)]
        return Media(positions, soft, pad, bidirectional, every_layer)


def expand_media(
    bundle, ids: list[int], images: list, clips: list, image_names=None, clip_names=None
) -> tuple[list[int], Optional[MediaPrompt]]:
    """Prompt ids with one placeholder per image and per clip -> (expanded ids, MediaPrompt), or
    (ids, None) with neither. Reads files and config only: no mlx."""
    if not images and not clips:
        return list(ids), None
    pending = None
    if clips:
        ids, pending = expand_audio(bundle, ids, clips, clip_names)
    image_prompt = None
    if images:  # on the audio-expanded ids: then every audio id left is a soft token
        ids, image_prompt = expand_images(bundle, ids, images, image_names)
        if pending is not None:
            where = np.flatnonzero(np.array(ids) == spec_of(bundle).audio_token_id).astype(np.int64)
            pending = AudioPrompt(pending.features, where)
    if pending is not None:
        _check_ends_with_text(pending.positions, ids)
    return ids, MediaPrompt(image_prompt, pending)


def attach_media(bundle, ids: list[int], images: list, clips: list) -> tuple[list[int], Optional[Media]]:
    """Prompt ids with one placeholder per image and per clip -> (expanded ids, Media), both kinds
    merged by position. Neither: (ids, None)."""
    ids, pending = expand_media(bundle, ids, images, clips)
    return ids, None if pending is None else pending.encode(bundle)
