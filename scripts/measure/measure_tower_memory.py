"""The towers' working memory at the published widths: MLX's measured peak of encoding one image
(the processors' default budget, 280 soft tokens) and one 30 s clip, against the per-item working
memory `media_memory` adds to the estimate (`vision_work`, `audio_work`, with the widths
`published_media_bytes` assumes).

    python scripts/measure/measure_tower_memory.py [--layers 2] [--dtype float32 bfloat16] [--towers vision audio]
    python scripts/measure/measure_tower_memory.py --large --towers vision      # the 26B-A4B/31B tower

The towers get random weights at E2B/E4B's widths (transformers' Gemma4VisionConfig and
Gemma4AudioConfig defaults for `google/gemma-4-e2b-it`: vision 768 wide, 12 heads, MLP 3072; audio
1024 wide, 8 heads, convolution channels 128 and 32, output 1536) with `--layers` layers each: the
working set is one layer's at a time, so two layers show it. The peak is `mx.get_peak_memory()`
less what was held before the call (the weights), after the output is evaluated. Minutes on a
2-core CPU (one vision layer over 2520 patches costs tens of seconds there).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mlx_specdec.audio_file import log_mel  # noqa: E402
from mlx_specdec.media_memory import CLIP_FRAMES, audio_work, vision_work  # noqa: E402
from mlx_specdec.models.audio import Audio, AudioArgs  # noqa: E402
from mlx_specdec.models.vision import Vision, VisionArgs  # noqa: E402

TEXT = {"hidden_size": 1536}  # E2B's text width: what the embedders project to
VISION = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "head_dim": 64}
VISION |= {"use_clipped_linears": True, "standardize": False}
# --large: the 26B-A4B's and 31B's tower as media_memory assumes it (transformers' vision defaults)
LARGE = VISION | {"hidden_size": 1152, "intermediate_size": 4304, "num_attention_heads": 16, "head_dim": 72}
AUDIO = {"hidden_size": 1024, "num_attention_heads": 8, "subsampling_conv_channels": [128, 32]}
AUDIO |= {"output_proj_dims": 1536}
SOFT_TOKENS = 280  # the processors' default image budget


def peak(fn) -> tuple[int, float]:
    """(bytes `fn()` held at its peak beyond what was held before, seconds), its output evaluated."""
    mx.eval(mx.zeros(1))
    base = mx.get_active_memory()
    mx.reset_peak_memory()
    t0 = time.perf_counter()
    mx.eval(fn())
    return mx.get_peak_memory() - base, time.perf_counter() - t0


def build(cls, args, part: str, shape: dict, layers: int, dtype):
    """A tower of `layers` layers at `shape`'s widths, random weights in `dtype`."""
    tower = cls(args.from_config({part: {**shape, "num_hidden_layers": layers}, "text_config": TEXT}))
    tower.set_dtype(dtype)
    mx.eval(tower.parameters())
    return tower


def vision_row(layers: int, dtype, large: bool = False) -> dict:
    tower = build(Vision, VisionArgs, "vision_config", LARGE if large else VISION, layers, dtype)
    a = tower.args
    side = int(round(SOFT_TOKENS**0.5)) * a.pooling_kernel_size  # a square grid near the budget
    rng = np.random.default_rng(0)
    pixels = mx.array(rng.random((side * side, 3 * a.patch_size**2), dtype=np.float32))
    ys, xs = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    positions = mx.array(np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.int32))
    mx.eval(pixels, positions)
    used, seconds = peak(lambda: tower(pixels, positions, (side, side)))
    itemsize = dtype.size
    estimate = vision_work(side * side, a.hidden_size, a.num_attention_heads, a.intermediate_size, itemsize)
    row = {"tower": "vision", "hidden": a.hidden_size, "patches": side * side}
    return row | {"peak_mb": used / 1e6, "estimate_mb": estimate / 1e6, "s": seconds}


def audio_row(layers: int, dtype) -> dict:
    tower = build(Audio, AudioArgs, "audio_config", AUDIO, layers, dtype)
    a = tower.args
    noise = np.random.default_rng(0).uniform(-0.3, 0.3, 16_000 * 30).astype(np.float32)
    features = mx.array(log_mel(noise)[:CLIP_FRAMES])
    mx.eval(features)
    used, seconds = peak(lambda: tower(features))
    # as published_media_bytes counts it: the text width stands in for the tower's own
    estimate = audio_work(a.feature_size, a.subsampling_conv_channels[0], TEXT["hidden_size"], dtype.size)
    row = {"tower": "audio", "frames": features.shape[0]}
    return row | {"peak_mb": used / 1e6, "estimate_mb": estimate / 1e6, "s": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"], choices=("float32", "bfloat16"))
    parser.add_argument("--towers", nargs="+", default=["vision", "audio"], choices=("vision", "audio"))
    parser.add_argument("--large", action="store_true", help="the 26B-A4B/31B vision widths (1152, 16 heads)")
    args = parser.parse_args()
    for name in args.dtype:
        for tower in args.towers:
            dtype = getattr(mx, name)
            row = vision_row(args.layers, dtype, args.large) if tower == "vision" else audio_row(args.layers, dtype)
            row = {k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()}
            print(json.dumps({"dtype": name, "layers": args.layers, **row}), flush=True)


if __name__ == "__main__":
    main()
