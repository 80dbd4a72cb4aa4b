"""Gemma 4's audio tower and `embed_audio` on mlx.nn: log-mel frames -> soft tokens in the text width.

The maths of transformers 5.25 `Gemma4AudioModel` + `Gemma4MultimodalEmbedder` (a USM-style
conformer): two 3 x 3 stride-2 convolutions over (time, mel) with LayerNorm and ReLU, flattened and
projected to the width; then per layer a half-step feed-forward, local self-attention with a
relative position term, a causal depthwise light convolution and a second half-step feed-forward;
then a linear with bias. `embed_audio`: RMSNorm without scale, then a linear into the text width.
Every linear but the relative one is clipped to stored bounds (`use_clipped_linears`).

Attention: each frame sees itself and the `attention_context_left - 2` frames before it (right
context 0). transformers computes that in blocks of `attention_chunk_size` with a Transformer-XL
shift; the block layout changes nothing for a frame whose window lies in its block's context, which
is every frame, so here it is one banded [T, T] attention: logits = q.k + q.R[t - s] (R: sinusoids of
the distance 0..left-1 through `relative_k_proj`), soft-capped, masked outside the band.

Invariants: one clip per call, only the valid mel frames (the feature extractor's mask, a prefix;
the padding after it is dropped, which equals transformers' zeroing of it: the convolutions see
zeros past the end either way, and no valid frame attends to a later one). Attention in float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from .quantise import float_dtype
from .vision import ClippedLinear, RMSNorm


@dataclass
class AudioArgs:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    subsampling_conv_channels: tuple[int, int]
    conv_kernel_size: int
    residual_weight: float
    attention_chunk_size: int
    attention_context_left: int
    attention_logit_cap: float
    use_clipped_linears: bool
    rms_norm_eps: float
    gradient_clipping: float
    output_proj_dims: int
    feature_size: int
    text_hidden_size: int

    @classmethod
    def from_config(cls, config: dict, feature_size: int = 128) -> AudioArgs:
        """A multimodal `gemma4` config.json (dict) -> AudioArgs; KeyError/ValueError when it cannot be used."""
        a, t = config["audio_config"], config["text_config"]
        if a.get("hidden_act", "silu") != "silu":
            raise ValueError(f"audio hidden_act {a['hidden_act']!r} is not supported")
        if a.get("attention_context_right", 0) != 0:
            raise ValueError("audio attention_context_right other than 0 is not supported")
        channels = tuple(a.get("subsampling_conv_channels", (128, 32)))
        if len(channels) != 2:
            raise ValueError(f"audio subsampling_conv_channels {list(channels)} is not two convolutions")
        if feature_size % 4 or channels[0] // 4 != feature_size // 4:
            # transformers sizes the projection from the channels; it must equal mel bins / 4 x channels[1]
            raise ValueError(f"{feature_size} mel bins do not fit subsampling_conv_channels {list(channels)}")
        chunk, left = a.get("attention_chunk_size", 12), a.get("attention_context_left", 13)
        if (chunk + left - 1) // 2 != left - 1:
            # transformers' relative table then no longer spans the distances 0..left-1 in order
            raise ValueError(f"audio attention_chunk_size {chunk} with attention_context_left {left} is not supported")
        hidden = a["hidden_size"]
        return cls(
            hidden_size=hidden,
            num_hidden_layers=a["num_hidden_layers"],
            num_attention_heads=a["num_attention_heads"],
            subsampling_conv_channels=channels,
            conv_kernel_size=a.get("conv_kernel_size", 5),
            residual_weight=float(a.get("residual_weight", 0.5)),
            attention_chunk_size=chunk,
            attention_context_left=left,
            attention_logit_cap=float(a.get("attention_logit_cap", 50.0)),
            use_clipped_linears=bool(a.get("use_clipped_linears", True)),
            rms_norm_eps=a.get("rms_norm_eps", 1e-6),
            gradient_clipping=float(a.get("gradient_clipping", 1e10)),
            output_proj_dims=a.get("output_proj_dims") or hidden,
            feature_size=feature_size,
            text_hidden_size=t["hidden_size"],
        )


def subsampled_length(frames: int) -> int:
    """Soft tokens for `frames` valid mel frames: two stride-2 convolutions (kernel 3, padding 1)."""
    for _ in range(2):
        frames = (frames + 1) // 2
    return frames


def _clamp(x: mx.array, bound: float) -> mx.array:
    bound = min(bound, float(mx.finfo(x.dtype).max))  # transformers' guard against overflow
    return mx.clip(x, -bound, bound)


class SubsampleLayer(nn.Module):
    def __init__(self, n_in: int, n_out: int, eps: float):
        super().__init__()
        self.conv = nn.Conv2d(n_in, n_out, kernel_size=3, stride=2, padding=1, bias=False)
        self.norm = nn.LayerNorm(n_out, eps=eps, affine=True, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return nn.relu(self.norm(self.conv(x)))  # x [1, T, F, C] (time, mel, channels)


class SubsampleConvProjection(nn.Module):
    def __init__(self, args: AudioArgs):
        super().__init__()
        c0, c1 = args.subsampling_conv_channels
        self.layer0 = SubsampleLayer(1, c0, args.rms_norm_eps)
        self.layer1 = SubsampleLayer(c0, c1, args.rms_norm_eps)
        self.input_proj_linear = nn.Linear((c0 // 4) * c1, args.hidden_size, bias=False)

    def __call__(self, features: mx.array) -> mx.array:
        """features [T, mel] -> [T', hidden] (T' = subsampled_length(T)); flattened (mel, channel)."""
        x = self.layer1(self.layer0(features[None, :, :, None]))
        return self.input_proj_linear(x.reshape(x.shape[1], -1))


class Attention(nn.Module):
    def __init__(self, args: AudioArgs):
        super().__init__()
        h = args.num_attention_heads
        d = args.hidden_size // h
        self.heads, self.head_dim = h, d
        # A frame sees itself and the `left - 1` frames before it (transformers' window: 0 <= t - s < left).
        self.left = args.attention_context_left - 1
        self.cap = args.attention_logit_cap
        self.q_scale = d**-0.5 / math.log(2)
        self.k_scale = math.log(1 + math.e) / math.log(2)
        self.q_proj = ClippedLinear(args, args.hidden_size, h * d)
        self.k_proj = ClippedLinear(args, args.hidden_size, h * d)
        self.v_proj = ClippedLinear(args, args.hidden_size, h * d)
        self.post = ClippedLinear(args, args.hidden_size, args.hidden_size)
        self.relative_k_proj = nn.Linear(args.hidden_size, h * d, bias=False)
        self.per_dim_scale = mx.zeros((d,))

    def relative_keys(self, hidden: int) -> mx.array:
        """R [heads, left + 1, D]: the distances 0..left as [sin..., cos...] sinusoids through relative_k_proj."""
        n = hidden // 2
        inv = mx.exp(mx.arange(n, dtype=mx.float32) * -(math.log(10000.0) / max(n - 1, 1)))
        angles = mx.arange(self.left + 1, dtype=mx.float32)[:, None] * inv[None]
        pos = mx.concatenate([mx.sin(angles), mx.cos(angles)], axis=-1)
        r = self.relative_k_proj(pos.astype(float_dtype(self.relative_k_proj))).astype(mx.float32)
        return r.reshape(self.left + 1, self.heads, self.head_dim).transpose(1, 0, 2)

    def __call__(self, x: mx.array) -> mx.array:
        T = x.shape[0]
        shape = (T, self.heads, self.head_dim)
        q = self.q_proj(x).astype(mx.float32).reshape(shape).transpose(1, 0, 2)  # [heads, T, D]
        k = self.k_proj(x).astype(mx.float32).reshape(shape).transpose(1, 0, 2)
        v = self.v_proj(x).astype(mx.float32).reshape(shape).transpose(1, 0, 2)
        q = q * (self.q_scale * nn.softplus(self.per_dim_scale.astype(mx.float32)))
        k = k * self.k_scale
        t = mx.arange(T)
        dist = t[:, None] - t[None, :]  # query t - key s
        band = (dist >= 0) & (dist < self.left)
        rel = q @ self.relative_keys(x.shape[-1]).transpose(0, 2, 1)  # [heads, T, left+1]
        bd = mx.take_along_axis(rel, mx.broadcast_to(mx.clip(dist, 0, self.left)[None], (self.heads, T, T)), axis=-1)
        logits = q @ k.transpose(0, 2, 1) + bd
        logits = mx.tanh(logits / self.cap) * self.cap
        weights = mx.softmax(mx.where(band[None], logits, -1e9), axis=-1)
        out = (weights @ v).transpose(1, 0, 2).reshape(T, -1)
        return self.post(out.astype(x.dtype))


class FeedForward(nn.Module):
    def __init__(self, args: AudioArgs):
        super().__init__()
        self.ffw_layer_1 = ClippedLinear(args, args.hidden_size, args.hidden_size * 4)
        self.ffw_layer_2 = ClippedLinear(args, args.hidden_size * 4, args.hidden_size)
        self.pre_layer_norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.post_layer_norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.clip, self.scale = args.gradient_clipping, args.residual_weight

    def __call__(self, x: mx.array) -> mx.array:
        h = self.ffw_layer_2(nn.silu(self.ffw_layer_1(self.pre_layer_norm(_clamp(x, self.clip)))))
        return x + self.post_layer_norm(_clamp(h, self.clip)) * self.scale


class LightConv1d(nn.Module):
    def __init__(self, args: AudioArgs):
        super().__init__()
        self.linear_start = ClippedLinear(args, args.hidden_size, args.hidden_size * 2)
        self.linear_end = ClippedLinear(args, args.hidden_size, args.hidden_size)
        self.depthwise_conv1d = nn.Conv1d(
            args.hidden_size, args.hidden_size, args.conv_kernel_size, groups=args.hidden_size, bias=False
        )
        self.pre_layer_norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.conv_norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.kernel, self.clip = args.conv_kernel_size, args.gradient_clipping

    def __call__(self, x: mx.array) -> mx.array:
        h = self.linear_start(self.pre_layer_norm(x))
        a, b = mx.split(h, 2, axis=-1)
        h = a * mx.sigmoid(b)  # GLU
        h = mx.pad(h[None], [(0, 0), (self.kernel - 1, 0), (0, 0)])  # causal: pad on the left only
        h = self.depthwise_conv1d(h)[0]
        h = nn.silu(self.conv_norm(_clamp(h, self.clip)))
        return x + self.linear_end(h)


class AudioLayer(nn.Module):
    def __init__(self, args: AudioArgs):
        super().__init__()
        self.feed_forward1 = FeedForward(args)
        self.feed_forward2 = FeedForward(args)
        self.self_attn = Attention(args)
        self.lconv1d = LightConv1d(args)
        eps = args.rms_norm_eps
        self.norm_pre_attn = RMSNorm(args.hidden_size, eps)
        self.norm_post_attn = RMSNorm(args.hidden_size, eps)
        self.norm_out = RMSNorm(args.hidden_size, eps)
        self.clip = args.gradient_clipping

    def __call__(self, x: mx.array) -> mx.array:
        x = self.feed_forward1(x)
        h = self.self_attn(self.norm_pre_attn(_clamp(x, self.clip)))
        x = x + self.norm_post_attn(_clamp(h, self.clip))
        x = self.feed_forward2(self.lconv1d(x))
        return self.norm_out(_clamp(x, self.clip))


class AudioTower(nn.Module):
    """`Gemma4AudioModel`: valid mel frames [T, mel] -> [subsampled_length(T), output_proj_dims]."""

    def __init__(self, args: AudioArgs):
        super().__init__()
        self.subsample_conv_projection = SubsampleConvProjection(args)
        self.layers = [AudioLayer(args) for _ in range(args.num_hidden_layers)]
        self.output_proj = nn.Linear(args.hidden_size, args.output_proj_dims, bias=True)

    def __call__(self, features: mx.array) -> mx.array:
        x = self.subsample_conv_projection(features.astype(float_dtype(self.output_proj)))
        for layer in self.layers:
            x = layer(x)
        return self.output_proj(x)


class EmbedAudio(nn.Module):
    """`Gemma4MultimodalEmbedder`: soft tokens [M, output_proj_dims] -> [M, text hidden]."""

    def __init__(self, args: AudioArgs):
        super().__init__()
        self.embedding_pre_projection_norm = RMSNorm(args.output_proj_dims, args.rms_norm_eps, with_scale=False)
        self.embedding_projection = nn.Linear(args.output_proj_dims, args.text_hidden_size, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.embedding_projection(self.embedding_pre_projection_norm(x))


class Audio(nn.Module):
    """The tower and its embedder under the names the checkpoint uses (`audio_tower`, `embed_audio`)."""

    def __init__(self, args: AudioArgs):
        super().__init__()
        self.args = args
        self.audio_tower = AudioTower(args)
        self.embed_audio = EmbedAudio(args)

    def __call__(self, features: mx.array) -> mx.array:
        """One clip's valid mel frames [T, mel] -> soft tokens [subsampled_length(T), text hidden]."""
        return self.embed_audio(self.audio_tower(features))

    @classmethod
    def sanitize(cls, weights: dict) -> dict:
        """Checkpoint tensors -> this module's names and mlx's convolution layouts; others are dropped.
        Convolutions arrive as torch stores them ([out, in, kh, kw] and [out, in, k])."""
        out = {}
        for key, value in weights.items():
            name = key[len("model.") :] if key.startswith("model.") else key
            if not name.startswith(("audio_tower.", "embed_audio.")):
                continue
            if name.endswith("conv.weight") and value.ndim == 4:
                value = value.transpose(0, 2, 3, 1)
            elif name.endswith("depthwise_conv1d.weight") and value.ndim == 3:
                value = value.transpose(0, 2, 1)
            out[name] = value
        return out
