"""Image files -> patches for the vision tower, as Gemma 4's image processors make them (no mlx, no torch).

`read_image` decodes with Pillow and resizes as transformers 5.24 `Gemma4ImageProcessor` does (Pillow's
bicubic) or, `like_torch`, as the 12B's processor does (below); media.py places the patches in prompts.

The 12B's image processor (transformers 5.25 `Gemma4UnifiedImageProcessor`) resizes a uint8 image
tensor with torchvision, which on the CPU calls torch's own uint8 kernel (`UpSampleKernel.cpp`, a port of
Pillow-SIMD): separable, width first then height, each pass rounding back to uint8. Per axis, with
scale = in / out and support = 2 * max(scale, 1), output pixel i covers the input pixels
[int(c - support + 0.5), int(c + support + 0.5)) around c = scale * (i + 0.5), weighted by Keys' cubic
(a = -0.5) at (j - c + 0.5) / max(scale, 1), normalised to sum 1. The weights become int16 at the
largest precision p < 22 for which the biggest weight still fits (2 x max weight x 2^p < 2^15); a pass
is (2^(p-1) + sum(pixel x weight)) >> p, clamped to 0..255. Pillow keeps 22 bits, so its output
differs from this by 1 here and there: the 12B needs this one, the other families Pillow's.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import SpecdecError

DEFAULT_SOFT_TOKENS = 280  # E2B/E4B's processor default


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def _axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(first input index [n_out], int weights [n_out, taps], precision) of one axis."""
    scale = n_in / n_out
    support = 2 * scale if scale >= 1 else 2.0
    taps = int(np.ceil(support)) * 2 + 1
    inv = 1 / scale if scale >= 1 else 1.0
    first = np.zeros(n_out, dtype=np.int64)
    weights = np.zeros((n_out, taps), dtype=np.float64)
    for i in range(n_out):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)  # int(): towards zero, as C's cast
        size = min(max(min(int(center + support + 0.5), n_in) - lo, 0), taps)
        w = _cubic((np.arange(size) + lo - center + 0.5) * inv)
        total = 0.0
        for v in w:  # in index order, as the C loop sums (numpy's sum pairs terms up)
            total += v
        first[i] = lo
        if total != 0:
            weights[i, :size] = w / total
    top = weights.max()
    precision = 0
    while precision < 22 and int(0.5 + top * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    scaled = weights * (1 << precision)
    ints = np.where(scaled < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5)).astype(np.int32)
    return first, ints, precision


def _resize_axis(pixels: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """One pass over `axis` of a uint8 [H, W, C] array."""
    moved = np.moveaxis(pixels, axis, 0)
    first, weights, precision = _axis_weights(moved.shape[0], n_out)
    acc = np.full((n_out,) + moved.shape[1:], 1 << (precision - 1), dtype=np.int32)  # 255 x sum|weights| < 2^31
    last = moved.shape[0] - 1
    for t in range(weights.shape[1]):  # one tap at a time: a photo's pass stays a few output-sized arrays
        rows = moved[np.minimum(first + t, last)].astype(np.int32)  # taps past the edge have weight 0
        acc += weights[:, t].reshape((-1,) + (1,) * (moved.ndim - 1)) * rows
    out = np.clip(acc >> precision, 0, 255).astype(np.uint8)
    return np.moveaxis(out, 0, axis)


def resize_uint8_bicubic(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [H, W, C] -> uint8 [height, width, C], as torch resizes uint8 images (bicubic, antialias)."""
    if width != pixels.shape[1]:
        pixels = _resize_axis(pixels, width, 1)
    if height != pixels.shape[0]:
        pixels = _resize_axis(pixels, height, 0)
    return pixels


@dataclass
class ImagePatches:
    """One image, ready for the tower: pixels [P, 3*p*p] float32 in [0, 1], positions [P, 2] (x, y)."""

    pixels: np.ndarray
    positions: np.ndarray
    grid: tuple[int, int]  # patch rows, patch columns
    soft_tokens: int
    source: str


def resized_size(height: int, width: int, patch: int, pooling: int, max_soft_tokens: int) -> tuple[int, int]:
    """The processor's target (height, width): the largest aspect-preserving size whose sides are
    multiples of patch * pooling and that has at most max_soft_tokens * pooling^2 patches."""
    max_patches = max_soft_tokens * pooling**2
    factor = math.sqrt(max_patches * patch**2 / (height * width))
    side = pooling * patch
    h, w = int(math.floor(factor * height / side)) * side, int(math.floor(factor * width / side)) * side
    longest = (max_patches // pooling**2) * side
    if h == 0 and w == 0:
        raise ValueError("0 x 0 after resizing")
    if h == 0:  # a very wide strip: one row of blocks, as wide as the budget allows
        h, w = side, min(int(math.floor(width / height)) * side, longest)
    elif w == 0:
        w, h = side, min(int(math.floor(height / width)) * side, longest)
    return h, w


def read_image(
    source,
    patch: int,
    pooling: int,
    max_soft_tokens: int = DEFAULT_SOFT_TOKENS,
    name: Optional[str] = None,
    like_torch: bool = False,
) -> ImagePatches:
    """An image file (a path) or its bytes -> ImagePatches; every unreadable image is a one-line
    SpecdecError that starts with `name` (default: the path; "image" for bytes). `like_torch`: resize
    and rescale as the 12B's processor does (torch's uint8 resize, float32 arithmetic)."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, (bytes, bytearray)):
        path, opened = name or "image", io.BytesIO(source)
    else:
        path = opened = Path(source)
        if name is not None:
            path = name
        if not opened.is_file():
            raise SpecdecError(f"{path}: no such image file")
    try:
        with Image.open(opened) as img:
            img.load()  # decode now: a truncated file fails here, not later
            if img.width == 0 or img.height == 0:
                raise SpecdecError(f"{path}: the image has 0 pixels ({img.width} x {img.height})")
            if "A" in img.getbands() or img.info.get("transparency") is not None:
                rgba = img.convert("RGBA")
                rgb = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
            else:
                rgb = img.convert("RGB")
    except UnidentifiedImageError:
        raise SpecdecError(f"{path}: not an image Pillow can read (PNG, JPEG, WebP, GIF, BMP...)") from None
    except Image.DecompressionBombError as e:
        raise SpecdecError(f"{path}: too many pixels to decode safely ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        why = " ".join(str(e).split())
        raise SpecdecError(f"{path}: cannot decode the image, truncated or corrupt ({why})") from None
    try:
        h, w = resized_size(rgb.height, rgb.width, patch, pooling, max_soft_tokens)
    except ValueError:
        raise SpecdecError(f"{path}: {rgb.width} x {rgb.height} pixels is too small to encode") from None
    if like_torch:
        chw = np.moveaxis(resize_uint8_bicubic(np.asarray(rgb), h, w), -1, 0)
        pixels = chw.astype(np.float32) * np.float32(1 / 255)  # torch: uint8 tensor x float -> float32
    else:
        if (h, w) != (rgb.height, rgb.width):
            rgb = rgb.resize((w, h), resample=Image.BICUBIC)
        chw = np.moveaxis(np.asarray(rgb), -1, 0)
        pixels = (chw.astype(np.float64) * (1 / 255)).astype(np.float32)  # the processor's rescale
    rows, cols = h // patch, w // patch
    patches = pixels.reshape(3, rows, patch, cols, patch).transpose(1, 3, 2, 4, 0).reshape(rows * cols, -1)
    gx, gy = np.meshgrid(np.arange(cols), np.arange(rows), indexing="xy")
    positions = np.stack([gx, gy], axis=-1).reshape(-1, 2).astype(np.int32)
    return ImagePatches(patches, positions, (rows, cols), rows * cols // pooling**2, str(path))
