"""Images into a Gemma 4 prompt: files -> patches -> soft tokens -> the prompt's embeddings.

1. read     `image_file.read_image`: Pillow + numpy with the rules of transformers 5.24 `Gemma4ImageProcessor`
            (RGB over white, aspect-preserving bicubic resize to sides that are multiples of
            patch x pooling within `max_soft_tokens` x pooling^2 patches, pixels / 255, patches in
            row-major order). Huge images shrink to that budget; tiny ones grow to it. The 12B's
            `Gemma4UnifiedImageProcessor` (`ImageSpec.read`) has the same sizes but resizes as torch
            does (image_file.py) and cuts whole model patches (patch x pooling), one per soft token.
2. expand   `expand_images`: each image placeholder id in the prompt becomes `<|image>` + N x
            `<|image|>` + `<image|>` (N = the image's soft tokens), as the processor expands it.
            Steps 1-2 read only config files and images (`ImageSpec`, no mlx): a server runs them
            off its mlx thread. `attach_images` is steps 1-3 in one call.
3. encode   the vision tower (models/vision.py; the 12B's encoder-free embedder, models/vision_unified.py),
            loaded from the target folder on the first image and kept on the bundle: a text-only run
            never reads it.
4. prefill  `Media.prefill`: the placeholders are embedded as `<pad>` and overwritten by the soft
            tokens; the per-layer input (PLE) uses id 0 (pad) there. Only the prefill differs: the
            decode loop and the drafter (which reads the target's K/V) are unchanged. On targets
            with `use_bidirectional_attention: "vision"` (26B-A4B, 31B) an image's tokens also see
            its later tokens on sliding layers, on the 12B its whole image on every layer
            (models/image_attention.py): a prefill chunk then holds whole images (`Media.chunk_end`).

Invariant: placeholders look alike whatever the image, so K/V past the first one is never reused
from an earlier request (decode.stream_generate truncates the prompt cache there).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import mlx.core as mx
import numpy as np

from .errors import SpecdecError
from .files import read_config, read_weights
from .image_file import DEFAULT_SOFT_TOKENS, ImagePatches, read_image, resized_size  # noqa: F401 (re-exported)
from .models.image_attention import block_ids, image_spans, keep_whole, with_image_blocks
from .models.quantise import float_dtype, quantisation_mode, quantise_as_stored
from .models.vision import Vision, VisionArgs
from .models.vision_unified import UnifiedArgs, UnifiedVision

SOFT_TOKEN_BUDGETS = (70, 140, 280, 560, 1120)  # transformers accepts only these
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")  # where the budget is written


# --- the tower, loaded on first use ------------------------------------------------------------
def _reconvert_hint(folder: Path) -> str:
    return (
        f"{folder} has no vision tower (bundles converted before specdec kept it have none); pass the "
        "Hugging Face checkpoint's folder with --target (and --drafter), or convert the bundle again"
    )


def max_soft_tokens(folder: Path) -> int:
    """The processor's per-image budget from processor_config.json / preprocessor_config.json, else 280."""
    for name, keys in zip(PROCESSOR_FILES, (("image_processor",), ())):
        path = folder / name
        if not path.is_file():
            continue
        try:
            cfg = json.loads(path.read_text())
            for k in keys:
                cfg = cfg.get(k) or {}
            value = cfg.get("max_soft_tokens")
        except (ValueError, AttributeError, OSError):
            raise SpecdecError(f"{path}: not a readable processor config") from None
        if value is not None:
            if value not in SOFT_TOKEN_BUDGETS:
                raise SpecdecError(f"{path}: max_soft_tokens {value} is not one of {SOFT_TOKEN_BUDGETS}")
            return int(value)
    return DEFAULT_SOFT_TOKENS


@dataclass(frozen=True)
class ImageSpec:
    """What prompts need of a target's images, from config files alone (no weights, no mlx)."""

    args: Union[VisionArgs, UnifiedArgs]  # UnifiedArgs: the 12B's encoder-free embedder
    image_token_id: int
    boi_token_id: int
    eoi_token_id: int
    max_soft_tokens: int
    bidirectional: bool = False  # text_config use_bidirectional_attention == "vision" (12B, 26B-A4B, 31B)

    @property
    def unified(self) -> bool:
        """The 12B (`gemma4_unified`): one soft token per model patch; images see themselves on every layer."""
        return isinstance(self.args, UnifiedArgs)

    def read(self, source, name: Optional[str] = None) -> ImagePatches:
        """An image (path or bytes) -> ImagePatches as this target's processor makes them."""
        a, budget = self.args, self.max_soft_tokens
        if not self.unified:
            return read_image(source, a.patch_size, a.pooling_kernel_size, budget, name)
        patches = read_image(source, a.model_patch_size, 1, budget, name, like_torch=True)
        if max(patches.grid) > a.mm_posemb_size:  # the real 12B's table (1120) covers every budget
            rows, cols = patches.grid
            why = f"{rows} x {cols} patches exceed the position table ({a.mm_posemb_size})"
            raise SpecdecError(f"{patches.source}: {why}")
        return patches


@dataclass
class VisionModel:
    """The tower and the spec of one target folder."""

    vision: Union[Vision, UnifiedVision]
    spec: ImageSpec


def image_spec(folder: Path) -> ImageSpec:
    """The target folder's image spec; a one-line SpecdecError when it cannot take images."""
    raw = read_config(folder)
    if not raw.get("vision_config"):
        raise SpecdecError(_reconvert_hint(folder))
    missing = [k for k in ("image_token_id", "boi_token_id", "eoi_token_id") if raw.get(k) is None]
    if missing:
        raise SpecdecError(f"{folder / 'config.json'}: no {', '.join(missing)} for images")
    try:
        args = (UnifiedArgs if raw.get("model_type") == "gemma4_unified" else VisionArgs).from_config(raw)
    except (KeyError, ValueError) as e:
        raise SpecdecError(f"{folder / 'config.json'}: vision_config: {e}") from None
    ids = (raw["image_token_id"], raw["boi_token_id"], raw["eoi_token_id"])
    text = raw.get("text_config") or raw
    bidirectional = text.get("use_bidirectional_attention") == "vision"
    return ImageSpec(args, *ids, max_soft_tokens(folder), bidirectional)


def whole_image_tokens(folder: Path) -> int:
    """The longest image a prefill chunk must hold whole on this target or bundle folder: its image
    budget when its images attend to themselves (26B-A4B, 31B), else 0 (config files only)."""
    vision = folder / "vision" if (folder / "vision" / "config.json").is_file() else folder
    try:
        spec = image_spec(vision)
    except SpecdecError:  # no tower, or a bad config: named when an image comes
        return 0
    return spec.max_soft_tokens if spec.bidirectional else 0


def load_tower(tower, weights: dict, folder: Path, what: str, missing: str, lazy: bool):
    """`tower` (an mlx.nn module) with `weights` loaded, its quantised modules (an mlx-community
    checkpoint's) quantised as stored; a one-line SpecdecError naming `what` ("vision", "audio")
    when there are none (`missing`) or they do not fit.
    `lazy`: check names and shapes without reading the weights (the converter's check)."""
    if not weights:
        raise SpecdecError(missing)
    try:
        if any(k.endswith(".scales") for k in weights):  # quantised in the source (mlx-community): as stored
            quantise_as_stored(tower, weights, quantisation_mode(read_config(folder)))
        tower.load_weights(list(weights.items()), strict=True)
    except ValueError as e:
        why = " ".join(str(e).split())[:300]
        raise SpecdecError(f"{folder}: {what} weights do not match config.json ({why})") from None
    if not lazy:
        mx.eval(tower.parameters())
    return tower


def tower_class(spec: ImageSpec) -> type:
    """The module of the target's images: `Vision` (a tower), or the 12B's encoder-free `UnifiedVision`."""
    return UnifiedVision if spec.unified else Vision


def load_vision(folder: Path, lazy: bool = False) -> VisionModel:
    """The target folder's vision tower; a one-line SpecdecError when it has none or cannot use it.
    `lazy`: check names and shapes without reading the weights (the converter's check)."""
    spec = image_spec(folder)
    cls = tower_class(spec)
    weights = cls.sanitize(read_weights(folder))
    vision = load_tower(cls(spec.args), weights, folder, "vision", _reconvert_hint(folder), lazy)
    return VisionModel(vision, spec)


def _folder(bundle) -> Path:
    """Where the bundle's tower is: BUNDLE/vision beside a converted target, else the target's folder."""
    folder = getattr(bundle, "target_path", None)
    if folder is None:
        raise SpecdecError("this model was not loaded from a folder; images need the target's folder")
    kept = Path(folder).parent / "vision"
    if Path(folder).name == "target" and (kept / "config.json").is_file():
        return kept
    return Path(folder)


def spec_of(bundle) -> ImageSpec:
    """The bundle's image spec (config files only: safe off the thread that runs mlx)."""
    if getattr(bundle, "vision", None) is not None:
        return bundle.vision.spec
    return image_spec(_folder(bundle))


def vision_of(bundle) -> VisionModel:
    """The bundle's vision tower, loaded on first use and kept on the bundle."""
    if getattr(bundle, "vision", None) is None:
        bundle.vision = load_vision(_folder(bundle))
    return bundle.vision


# --- the prompt ------------------------------------------------------------------------------
def image_placeholders(bundle, count: int) -> str:
    """The text of `count` image placeholders (`<|image|>` on Gemma 4), to put in a user message."""
    image_id = spec_of(bundle).image_token_id
    tok = getattr(bundle.tokenizer, "_tokenizer", bundle.tokenizer)
    piece = tok.convert_ids_to_tokens(image_id)
    if not isinstance(piece, str) or tok.convert_tokens_to_ids(piece) != image_id:
        raise SpecdecError(f"the tokenizer has no token for image_token_id {image_id}")
    return piece * count


class Media:
    """A prompt's soft tokens by absolute position: soft [n, H] fills the n placeholder positions.
    `bidirectional`: each image's tokens also see its later tokens on sliding layers; with
    `every_layer` (the 12B) their whole image on every layer (models/image_attention.py)."""

    def __init__(
        self, positions: np.ndarray, soft: mx.array, pad_id: int, bidirectional: bool = False, every_layer: bool = False
    ):
        self.positions = positions
        self.soft = soft
        self.pad_id = pad_id
        self.bidirectional = bidirectional
        self.every_layer = every_layer
        self.spans = image_spans(positions)  # [first, end) of each image

    def chunk_end(self, lo: int, hi: int) -> int:
        """The end of a prefill chunk over positions [lo, hi): with bidirectional images, moved so
        that every image lies whole in one chunk (an image sees its later tokens)."""
        return keep_whole(self.spans, lo, hi) if self.bidirectional else hi

    @property
    def first_position(self) -> int:
        return int(self.positions[0]) if len(self.positions) else 0

    def prefill(self, target, ids: list[int], start: int, cache: list) -> mx.array:
        """Run the target over ids (prompt positions start..start+len-1), appending to `cache`, with
        the soft tokens in place of the placeholders' embeddings (their PLE id is pad) -> the
        final-normed hidden states [1, L, H] (lazy)."""
        lo, hi = np.searchsorted(self.positions, [start, start + len(ids)])
        tokens = mx.array(ids)[None]
        if lo == hi:
            return target(tokens, cache)[1]
        mask = np.zeros(len(ids), dtype=bool)
        mask[self.positions[lo:hi] - start] = True
        inner = target.model.model
        is_soft = mx.array(mask)[None]
        safe = mx.where(is_soft, self.pad_id, tokens)
        embeds = inner.embed_tokens(safe)
        # mlx-lm multiplies input embeddings by sqrt(hidden); transformers adds soft tokens after
        # that scaling, so they go in divided by it (exact up to one rounding).
        soft = (self.soft[lo:hi].astype(mx.float32) / inner.embed_scale).astype(embeds.dtype)
        rows = mx.array(np.clip(np.cumsum(mask) - 1, 0, None).astype(np.int32))
        embeds = mx.where(is_soft[..., None], soft[rows][None], embeds)
        per_layer = inner._get_per_layer_inputs(safe) if inner.hidden_size_per_layer_input else None
        if self.bidirectional:
            if any(first < start < end or first < start + len(ids) < end for first, end in self.spans):
                raise SpecdecError("a prefill chunk cuts an image in two (Media.chunk_end keeps them whole)")
            blocks = block_ids(self.spans, start, len(ids))
            cache = with_image_blocks(cache, target.config["layer_types"], blocks, self.every_layer)
        return inner(safe, cache=cache, input_embeddings=embeds, per_layer_inputs=per_layer)

    def check(self, ids) -> None:
        """The prompt must end with text: the last token runs as a plain step (decode._prefill)."""
        _check_ends_with_text(self.positions, ids)


def _check_ends_with_text(positions, ids) -> None:
    if len(positions) and int(positions[-1]) >= len(ids) - 1:
        raise SpecdecError("the prompt ends inside an image; add text after it")


def encode_image(bundle, patches: ImagePatches) -> mx.array:
    """ImagePatches -> soft tokens [N, text hidden] in the target's embedding dtype."""
    vm = vision_of(bundle)
    soft = vm.vision(mx.array(patches.pixels), mx.array(patches.positions), patches.grid)
    return soft.astype(float_dtype(bundle.target.model.model.embed_tokens))


@dataclass
class ImagePrompt:
    """Images read and placed in the prompt, not yet through the tower: the half of
    `attach_images` that needs no mlx (a server does it off its mlx thread, and refuses bad images
    and prompts too long for the context before queueing them). positions [n] as in Media."""

    patches: list[ImagePatches]
    positions: np.ndarray

    def encode(self, bundle) -> Media:
        """The tower over every image -> the Media for prefill (mlx: loads the tower on first use)."""
        soft = mx.concatenate([encode_image(bundle, p) for p in self.patches], axis=0)
        pad = bundle.target.config.get("pad_token_id", 0)
        spec = spec_of(bundle)
        return Media(self.positions, soft, 0 if pad is None else int(pad), spec.bidirectional, spec.unified)


def expand_images(bundle, ids: list[int], images: list, names: Optional[list] = None) -> tuple[list[int], ImagePrompt]:
    """Prompt ids with one image placeholder per image (paths or bytes, in order) -> (expanded
    ids, ImagePrompt). Each placeholder becomes `<|image>` + N x `<|image|>` + `<image|>`.
    `names` label the images in error messages (default: their paths, "image 1", ...)."""
    spec = spec_of(bundle)
    found = sum(1 for t in ids if t == spec.image_token_id)
    if found != len(images):
        raise SpecdecError(
            f"the prompt has {found} image placeholder(s) (id {spec.image_token_id}) for {len(images)} image(s)"
        )
    names = names or [None if isinstance(im, (str, Path)) else f"image {i + 1}" for i, im in enumerate(images)]
    patches = [spec.read(im, name=n) for im, n in zip(images, names)]
    out, positions = [], []
    it = iter(patches)
    for t in ids:
        if t != spec.image_token_id:
            out.append(int(t))
            continue
        p = next(it)
        out.append(spec.boi_token_id)
        positions.extend(range(len(out), len(out) + p.soft_tokens))
        out.extend([spec.image_token_id] * p.soft_tokens)
        out.append(spec.eoi_token_id)
    positions = np.array(positions, dtype=np.int64)
    _check_ends_with_text(positions, out)
    return out, ImagePrompt(patches, positions)


def attach_images(bundle, ids: list[int], images: list) -> tuple[list[int], Optional[Media]]:
    """Prompt ids with one image placeholder per image (in order) -> (expanded ids, Media).

    Each placeholder becomes `<|image>` + N x `<|image|>` + `<image|>`. No images: (ids, None).
    """
    if not images:
        return list(ids), None
    out, pending = expand_images(bundle, ids, images)
    return out, pending.encode(bundle)
