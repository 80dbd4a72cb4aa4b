"""What the media towers add to memory when an image or a clip arrives (config and file headers only).

The vision and audio towers load on the first image or clip (media.py, media_audio.py), so a
text-only run pays nothing for them; a run that is given media pays their weights plus the working
memory of encoding one item:

* weights: as stored. A bundle's `vision/` and `audio/` folders (`convert` keeps the towers as the
  source has them: floats, or an mlx-community checkpoint's quantised modules); a target folder's
  tensors under the towers' prefixes, read from the safetensors headers.
* vision working memory, one encoder layer live at a time over the processor's budget
  (`max_soft_tokens` x pooling^2 patches): the attention scores and their softmax (heads x
  patches^2, twice), the MLP's two intermediate activations and six hidden-size tensors, at the
  tower's itemsize. MLX's CPU backend materialises the scores; Metal's fused attention may not, so
  this is an upper bound there.
* audio working memory over a 30 s clip (3000 mel frames): the first subsampling convolution's
  output and its norm and activation (frames/2 x mel/2 x its channels, four of them), the second
  convolution's unfolded input (frames/4 x mel/4 x 9 x those channels, twice: MLX's CPU
  convolution unfolds it), and eight hidden-size tensors over the 750 soft tokens (attention is
  local: its scores are small). A 16-bit tower also holds that working set in float32: MLX's CPU
  backend runs 16-bit convolutions in float32. Measured on the audio fixture: 367 MB peak, 418 MB
  estimated in float32; 466 MB peak, 627 MB estimated in bfloat16 (209 MB before the float32 term).
  At E2B's widths (scripts/measure/measure_tower_memory.py): 401 MB peak / 455 MB estimated in
  float32, 495 / 682 MB in bfloat16; an image at the default budget 566 / 761 MB and 303 / 381 MB
  (at the 26B-A4B/31B widths, `--large`: 785 / 1027 MB and 446 / 514 MB).

`published_media_bytes` gives the published pairs' towers for `specdec models`: the parameter
counts of Google's model cards (~150M vision and ~300M audio on E2B/E4B, ~550M vision on the
26B-A4B and 31B) in bf16, with the working memory of the vision shapes those counts suggest. They
are estimates: no real checkpoint was read here. The 12B's image path is an encoder-free embedder
(a few linears): not counted.
"""

from __future__ import annotations

from pathlib import Path

from .errors import SpecdecError
from .files import DTYPE_BYTES, safetensors_header
from .media import image_spec
from .media_audio import audio_spec

VISION_PREFIXES = ("model.vision_tower.", "model.embed_vision.", "vision_tower.", "embed_vision.")
VISION_PREFIXES += ("model.vision_embedder.", "vision_embedder.")  # the 12B's encoder-free embedder
AUDIO_PREFIXES = ("model.audio_tower.", "model.embed_audio.", "audio_tower.", "embed_audio.")
CLIP_FRAMES = 3000  # 30 s of 10 ms mel frames: the processor's cut
CLIP_TOKENS = 750


def _tensor_bytes(files, prefixes: tuple[str, ...] = ()) -> tuple[int, int]:
    """(bytes of the tensors whose names start with `prefixes` (all without), their widest float itemsize)."""
    total, itemsize = 0, 2
    for path in files:
        header, _ = safetensors_header(path)
        for name, entry in header.items():
            if name == "__metadata__" or not name.startswith(prefixes or ("",)):
                continue
            start, end = entry["data_offsets"]
            total += end - start
            if str(entry.get("dtype", "")).startswith(("F", "BF")):  # not a quantised tower's packed U32
                itemsize = max(itemsize, DTYPE_BYTES.get(entry.get("dtype"), 2))
    return total, itemsize


def vision_work(patches: int, hidden: int, heads: int, intermediate: int, itemsize: int) -> int:
    """Working bytes of one vision encoder layer over `patches` (see the module docstring)."""
    return itemsize * patches * (2 * heads * patches + 2 * intermediate + 6 * hidden)


def audio_work(mel: int, channels: int, hidden: int, itemsize: int) -> int:
    """Working bytes of encoding a 30 s clip (see the module docstring). A 16-bit tower is counted
    twice, at its own itemsize and at float32's: MLX's CPU backend runs a 16-bit convolution in
    float32 (the unfolded input and the output in float32, then converted back)."""
    first = (CLIP_FRAMES // 2) * (mel // 2) * channels
    unfolded = (CLIP_FRAMES // 4) * (mel // 4) * 9 * channels
    elements = 4 * first + 2 * unfolded + 8 * CLIP_TOKENS * hidden
    return itemsize * elements + (4 * elements if itemsize < 4 else 0)


def _tower(folder: Path, part: str) -> tuple[Path, list[Path], tuple[str, ...]]:
    """(the folder whose config describes the tower, the safetensors files holding it, the name
    prefixes to count in them: none in a bundle's own tower folder)."""
    if (folder / part / "config.json").is_file():  # a bundle that kept the tower
        return folder / part, sorted((folder / part).glob("*.safetensors")), ()
    target = folder / "target" if (folder / "target" / "config.json").is_file() else folder
    return target, sorted(target.glob("*.safetensors")), VISION_PREFIXES if part == "vision" else AUDIO_PREFIXES


def media_bytes(folder: Path, images: bool, audio: bool) -> int:
    """Bytes the towers add to a run on `folder` (a bundle or a target folder) given images and/or
    clips: weights plus working memory; 0 for a kind not given or a tower the folder lacks (an
    image or clip then fails with its own line when it comes)."""
    total = 0
    for part, wanted in (("vision", images), ("audio", audio)):
        if not wanted:
            continue
        config, files, prefixes = _tower(folder, part)
        weights, itemsize = _tensor_bytes(files, prefixes)
        try:
            spec = image_spec(config) if part == "vision" else audio_spec(config)
        except SpecdecError:  # no such tower: the image or clip says so when it comes
            continue
        if not weights:
            continue
        a = spec.args
        if part == "vision" and spec.unified:  # one linear over each 48 px patch: its input and a few outputs
            work = itemsize * spec.max_soft_tokens * 2 * (3 * a.model_patch_size**2 + 4 * a.mm_embed_dim)
        elif part == "vision":
            patches = spec.max_soft_tokens * a.pooling_kernel_size**2
            work = vision_work(patches, a.hidden_size, a.num_attention_heads, a.intermediate_size, itemsize)
        else:
            work = audio_work(a.feature_size, a.subsampling_conv_channels[0], a.hidden_size, itemsize)
        total += weights + work
    return total


# name -> (vision parameters, audio parameters, vision hidden, heads, intermediate): model cards' counts;
# the shapes are those of SigLIP encoders of that size (an assumption, for the working memory only).
_PUBLISHED = {
    "e2b": (150e6, 300e6, 768, 12, 3072),
    "e4b": (150e6, 300e6, 768, 12, 3072),
    "26b-a4b": (550e6, 0, 1152, 16, 4304),
    "31b": (550e6, 0, 1152, 16, 4304),
}
_BUDGET_PATCHES = 280 * 9  # the processors' default budget: 280 soft tokens of 3 x 3 patches


def published_media_bytes(name: str) -> int | None:
    """A published pair's towers (images and audio both) in bf16 with their working memory, or None
    where no tower is counted (the 12B's encoder-free embedder)."""
    family = name.removesuffix("-qat")
    if family not in _PUBLISHED:
        return None
    vision, sound, hidden, heads, intermediate = _PUBLISHED[family]
    total = int(2 * vision) + vision_work(_BUDGET_PATCHES, hidden, heads, intermediate, 2)
    if sound:
        total += int(2 * sound) + audio_work(128, 128, 1536, 2)
    return total
