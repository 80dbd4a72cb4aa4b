"""Gemma 4's vision tower and `embed_vision` on mlx.nn: image patches -> soft tokens in the text width.

The maths of transformers 5.24 `Gemma4VisionModel` + `Gemma4MultimodalEmbedder` (DESIGN.md, "Images
and audio"): a ViT-like encoder over 16 x 16 patches with learned x/y position tables and an axial
2-D RoPE (the first half of each head rotates with the patch's x, the second with its y), attention
without scaling and bidirectional over one image, every linear clipped to stored bounds; then an
average over each k x k block of patches (k = `pooling_kernel_size`), x sqrt(hidden), standardised
with `std_bias`/`std_scale`; then RMSNorm without scale and a linear into the text width.

Invariants: one image per call, no padding patches (transformers pads to a fixed patch budget and
masks the padding out; we never add it). Patches arrive in row-major order (y, then x) on a grid
whose sides are multiples of k, exactly as `media.image_patches` makes them. Pooling and
standardising run in float32, as transformers does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from .quantise import float_dtype


@dataclass
class VisionArgs:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    patch_size: int
    pooling_kernel_size: int
    position_embedding_size: int
    rope_theta: float
    rms_norm_eps: float
    use_clipped_linears: bool
    standardize: bool
    text_hidden_size: int

    @classmethod
    def from_config(cls, config: dict) -> VisionArgs:
        """A multimodal `gemma4` config.json (dict) -> VisionArgs; KeyError when a key is missing."""
        v, t = config["vision_config"], config["text_config"]
        if v.get("hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
            raise ValueError(f"vision hidden_activation {v['hidden_activation']!r} is not supported")
        rope = v.get("rope_parameters") or {}
        if rope.get("rope_type", "axial") != "axial":
            raise ValueError(f"vision rope_type {rope['rope_type']!r} is not supported (only axial)")
        return cls(
            hidden_size=v["hidden_size"],
            intermediate_size=v["intermediate_size"],
            num_hidden_layers=v["num_hidden_layers"],
            num_attention_heads=v["num_attention_heads"],
            num_key_value_heads=v.get("num_key_value_heads", v["num_attention_heads"]),
            head_dim=v.get("head_dim") or v["hidden_size"] // v["num_attention_heads"],
            patch_size=v.get("patch_size", 16),
            pooling_kernel_size=v.get("pooling_kernel_size", 3),
            position_embedding_size=v.get("position_embedding_size", 10240),
            rope_theta=float(rope.get("rope_theta", 100.0)),
            rms_norm_eps=v.get("rms_norm_eps", 1e-6),
            use_clipped_linears=bool(v.get("use_clipped_linears", False)),
            standardize=bool(v.get("standardize", False)),
            text_hidden_size=t["hidden_size"],
        )


class RMSNorm(nn.Module):
    """Gemma 4's RMSNorm: x / rms(x) * weight (no `1 + weight`); `with_scale=False`: no weight."""

    def __init__(self, dim: int, eps: float, with_scale: bool = True):
        super().__init__()
        self.eps = eps
        if with_scale:
            self.weight = mx.ones((dim,))

    def __call__(self, x: mx.array) -> mx.array:
        weight = self.weight.astype(mx.float32) if "weight" in self else None
        return mx.fast.rms_norm(x.astype(mx.float32), weight, self.eps).astype(x.dtype)


class ClippedLinear(nn.Module):
    """Linear without bias whose input and output are clamped to stored bounds (when the config says so)."""

    def __init__(self, args: VisionArgs, n_in: int, n_out: int):
        super().__init__()
        self.linear = nn.Linear(n_in, n_out, bias=False)
        if args.use_clipped_linears:
            self.input_min, self.input_max = mx.array(-math.inf), mx.array(math.inf)
            self.output_min, self.output_max = mx.array(-math.inf), mx.array(math.inf)
        self.clipped = args.use_clipped_linears

    def __call__(self, x: mx.array) -> mx.array:
        if not self.clipped:
            return self.linear(x)
        x = mx.clip(x, self.input_min.astype(x.dtype), self.input_max.astype(x.dtype))
        x = self.linear(x)
        return mx.clip(x, self.output_min.astype(x.dtype), self.output_max.astype(x.dtype))


def _rotate_half(x: mx.array) -> mx.array:
    half = x.shape[-1] // 2
    return mx.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def axial_rope(x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    """x [P, heads, D]; cos/sin [P, D] laid out (x, x, y, y) -> RoPE on each half of D with its own axis."""
    half = x.shape[-1] // 2
    parts = []
    for s in (slice(0, half), slice(half, None)):
        c, si = cos[:, None, s], sin[:, None, s]
        parts.append(x[..., s] * c + _rotate_half(x[..., s]) * si)
    return mx.concatenate(parts, axis=-1)


class Attention(nn.Module):
    def __init__(self, args: VisionArgs):
        super().__init__()
        h, kv, d = args.num_attention_heads, args.num_key_value_heads, args.head_dim
        self.heads, self.kv_heads, self.head_dim = h, kv, d
        self.q_proj = ClippedLinear(args, args.hidden_size, h * d)
        self.k_proj = ClippedLinear(args, args.hidden_size, kv * d)
        self.v_proj = ClippedLinear(args, args.hidden_size, kv * d)
        self.o_proj = ClippedLinear(args, h * d, args.hidden_size)
        self.q_norm = RMSNorm(d, args.rms_norm_eps)
        self.k_norm = RMSNorm(d, args.rms_norm_eps)
        self.v_norm = RMSNorm(d, args.rms_norm_eps, with_scale=False)

    def __call__(self, x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
        P = x.shape[0]
        q = axial_rope(self.q_norm(self.q_proj(x).reshape(P, self.heads, -1)), cos, sin)
        k = axial_rope(self.k_norm(self.k_proj(x).reshape(P, self.kv_heads, -1)), cos, sin)
        v = self.v_norm(self.v_proj(x).reshape(P, self.kv_heads, -1))
        q, k, v = (t.transpose(1, 0, 2)[None] for t in (q, k, v))  # [1, heads, P, D]
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=1.0)  # bidirectional, unscaled (q/k normed)
        return self.o_proj(out[0].transpose(1, 0, 2).reshape(P, -1))


class MLP(nn.Module):
    def __init__(self, args: VisionArgs):
        super().__init__()
        self.gate_proj = ClippedLinear(args, args.hidden_size, args.intermediate_size)
        self.up_proj = ClippedLinear(args, args.hidden_size, args.intermediate_size)
        self.down_proj = ClippedLinear(args, args.intermediate_size, args.hidden_size)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(nn.gelu_approx(self.gate_proj(x)) * self.up_proj(x))


class EncoderLayer(nn.Module):
    def __init__(self, args: VisionArgs):
        super().__init__()
        eps = args.rms_norm_eps
        self.self_attn = Attention(args)
        self.mlp = MLP(args)
        self.input_layernorm = RMSNorm(args.hidden_size, eps)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, eps)
        self.pre_feedforward_layernorm = RMSNorm(args.hidden_size, eps)
        self.post_feedforward_layernorm = RMSNorm(args.hidden_size, eps)

    def __call__(self, x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), cos, sin))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class Encoder(nn.Module):
    def __init__(self, args: VisionArgs):
        super().__init__()
        self.layers = [EncoderLayer(args) for _ in range(args.num_hidden_layers)]


class PatchEmbedder(nn.Module):
    def __init__(self, args: VisionArgs):
        super().__init__()
        self.input_proj = nn.Linear(3 * args.patch_size**2, args.hidden_size, bias=False)
        self.position_embedding_table = mx.zeros((2, args.position_embedding_size, args.hidden_size))

    def __call__(self, pixels: mx.array, positions: mx.array) -> mx.array:
        x = self.input_proj((2 * (pixels - 0.5)).astype(float_dtype(self.input_proj)))
        table = self.position_embedding_table
        return x + table[0][positions[:, 0]] + table[1][positions[:, 1]]


class VisionTower(nn.Module):
    """`Gemma4VisionModel`: patches [P, 3*p*p] in [0, 1] + positions [P, 2] (x, y) -> [P / k^2, hidden] float32."""

    def __init__(self, args: VisionArgs):
        super().__init__()
        self.args = args
        self.patch_embedder = PatchEmbedder(args)
        self.encoder = Encoder(args)
        if args.standardize:
            self.std_bias = mx.zeros((args.hidden_size,))
            self.std_scale = mx.ones((args.hidden_size,))

    def rope(self, positions: mx.array) -> tuple[mx.array, mx.array]:
        """positions [P, 2] -> cos, sin [P, head_dim], laid out (x, x, y, y) as transformers does."""
        spatial = self.args.head_dim // 2
        inv_freq = 1.0 / (self.args.rope_theta ** (mx.arange(0, spatial, 2, dtype=mx.float32) / spatial))
        freqs = positions.astype(mx.float32)[..., None] * inv_freq  # [P, 2, spatial/2]
        fx, fy = freqs[:, 0], freqs[:, 1]
        angles = mx.concatenate([fx, fx, fy, fy], axis=-1)
        return mx.cos(angles), mx.sin(angles)

    def __call__(self, pixels: mx.array, positions: mx.array, grid: tuple[int, int]) -> mx.array:
        """grid: (patch rows, patch columns) of this image; both multiples of pooling_kernel_size."""
        x = self.patch_embedder(pixels, positions)
        cos, sin = (t.astype(x.dtype) for t in self.rope(positions))
        for layer in self.encoder.layers:
            x = layer(x, cos, sin)
        k, (rows, cols) = self.args.pooling_kernel_size, grid
        # Mean over each k x k block of patches, in float32; row-major over the pooled grid.
        pooled = x.astype(mx.float32).reshape(rows // k, k, cols // k, k, -1).mean(axis=(1, 3))
        pooled = pooled.reshape((rows // k) * (cols // k), -1) * math.sqrt(self.args.hidden_size)
        if self.args.standardize:
            pooled = (pooled - self.std_bias.astype(mx.float32)) * self.std_scale.astype(mx.float32)
        return pooled


class EmbedVision(nn.Module):
    """`Gemma4MultimodalEmbedder`: soft tokens [N, vision hidden] -> [N, text hidden]."""

    def __init__(self, args: VisionArgs):
        super().__init__()
        self.embedding_pre_projection_norm = RMSNorm(args.hidden_size, args.rms_norm_eps, with_scale=False)
        self.embedding_projection = nn.Linear(args.hidden_size, args.text_hidden_size, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        x = self.embedding_pre_projection_norm(x.astype(float_dtype(self.embedding_projection)))
        return self.embedding_projection(x)


class Vision(nn.Module):
    """The tower and its embedder under the names the checkpoint uses (`vision_tower`, `embed_vision`)."""

    PREFIXES = ("model.vision_tower.", "model.embed_vision.")

    def __init__(self, args: VisionArgs):
        super().__init__()
        self.args = args
        self.vision_tower = VisionTower(args)
        self.embed_vision = EmbedVision(args)

    def __call__(self, pixels: mx.array, positions: mx.array, grid: tuple[int, int]) -> mx.array:
        """One image -> soft tokens [N, text hidden] (N = rows * cols / k^2)."""
        return self.embed_vision(self.vision_tower(pixels, positions, grid))

    @classmethod
    def sanitize(cls, weights: dict) -> dict:
        """Checkpoint tensors -> this module's names; tensors of other modules are dropped."""
        out = {}
        for key, value in weights.items():
            name = key[len("model.") :] if key.startswith("model.") else key
            if name.startswith(("vision_tower.", "embed_vision.")):
                out[name] = value
        return out
