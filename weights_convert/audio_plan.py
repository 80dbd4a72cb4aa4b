"""BUNDLE/audio: the target's audio tower and `embed_audio` (E2B, E4B), kept as the checkpoint has them.

The tensors keep their checkpoint names and layouts (torch's convolution layout included:
`models.audio.Audio.sanitize` turns them into mlx's when `media_audio.py` loads the folder on the
first clip). config.json holds `audio_config`, `text_config` and the audio token ids; the processor
config files come along for the feature extractor's settings.
"""

from __future__ import annotations

from mlx_specdec.errors import SpecdecError
from mlx_specdec.files import read_config
from mlx_specdec.media_audio import audio_spec
from mlx_specdec.models.quantise import source_quantization
from weights_convert import fetch, write

PREFIXES = ("model.audio_tower.", "model.embed_audio.", "audio_tower.", "embed_audio.")
KEYS = ("model_type", "architectures", "audio_config", "text_config", "audio_token_id", "boa_token_id")
KEYS += ("eoa_token_index", "eoa_token_id", "pad_token_id")


def audio_sanitize(key, array):
    """The tower's tensors as they are; every other tensor dropped."""
    return [(key, array)] if key.startswith(PREFIXES) else []


def audio_plan(src: fetch.Source, log, quant_keys=()) -> tuple[dict, list[write.Tensor]]:
    """(config.json for BUNDLE/audio, its tensors, as the source has them: floats, or modules an
    mlx-community checkpoint quantised); none when the target has no audio tower, or one
    `media_audio.py` cannot load (a spec it refuses), said in `log`."""
    raw = read_config(src.folder)
    if not raw.get("audio_config"):
        return {}, []
    try:
        audio_spec(src.folder)
    except SpecdecError as e:
        log(f"audio tower not kept: {e}")
        return {}, []
    tensors, _ = write.plan_tensors(src.folder, audio_sanitize, {}, source_quantization(raw))
    config = {k: raw[k] for k in KEYS if k in raw}
    config["text_config"] = {k: v for k, v in (raw.get("text_config") or {}).items() if k not in quant_keys}
    return write.tower_quantisation(config, raw, tensors, "audio", log), tensors
