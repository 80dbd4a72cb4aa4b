"""The 12B's encoder-free vision embedder on mlx.nn: whole model patches -> soft tokens in the text width.

The maths of transformers 5.25 `Gemma4UnifiedVisionEmbedder` (`gemma4_unified`): no vision tower. Each
soft token is one model patch of (patch_size x pooling_kernel_size)^2 pixels x 3 channels (48 x 48 on the
12B), its pixels in [0, 1] row by row, (r, g, b) per pixel; then

    LayerNorm -> Linear (+bias) -> LayerNorm -> + pos_embedding[x, 0] + pos_embedding[y, 1] -> LayerNorm
    -> RMSNorm without scale -> Linear (no bias) into the text width

under the checkpoint's names: `model.vision_embedder.{patch_ln1, patch_dense, patch_ln2, pos_embedding,
pos_norm}` and `model.embed_vision.embedding_projection` (transformers renames them on load; we keep them).

`pos_embedding` [mm_posemb_size, 2, mm_embed_dim] is factorised: one row per column x and one per row y
of the patch grid. transformers pads every image to `max_soft_tokens` patches at (-1, -1) and drops
them after; we never add them. The LayerNorms are torch's (eps 1e-5, with bias).

Invariant: one image per call; patches in row-major order (y, then x), as `media.read_image` cuts them
with patch = patch_size x pooling_kernel_size and pooling 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from .quantise import float_dtype
from .vision import RMSNorm

LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, which transformers keeps


@dataclass
class UnifiedArgs:
    patch_size: int
    pooling_kernel_size: int
    mm_embed_dim: int
    mm_posemb_size: int
    rms_norm_eps: float
    text_hidden_size: int

    @property
    def model_patch_size(self) -> int:
        """The side in pixels of one model patch, that is one soft token (48 on the 12B)."""
        return self.patch_size * self.pooling_kernel_size

    @classmethod
    def from_config(cls, config: dict) -> UnifiedArgs:
        """A multimodal `gemma4_unified` config.json (dict) -> UnifiedArgs; KeyError when a key is missing,
        ValueError when the embedder's widths disagree."""
        v, t = config["vision_config"], config["text_config"]
        args = cls(
            patch_size=v.get("patch_size", 16),
            pooling_kernel_size=v.get("pooling_kernel_size", 3),
            mm_embed_dim=v.get("mm_embed_dim", 3840),
            mm_posemb_size=v.get("mm_posemb_size", 1120),
            rms_norm_eps=v.get("rms_norm_eps", 1e-6),
            text_hidden_size=t["hidden_size"],
        )
        proj = v.get("output_proj_dims", args.mm_embed_dim)
        if proj != args.mm_embed_dim:  # the final projection reads the position-normed patches
            raise ValueError(f"output_proj_dims {proj} differs from mm_embed_dim {args.mm_embed_dim}")
        return args


class EmbedVision(nn.Module):
    """RMSNorm without scale, then a linear into the text width (`Gemma4UnifiedMultimodalEmbedder`)."""

    def __init__(self, args: UnifiedArgs):
        super().__init__()
        self.embedding_pre_projection_norm = RMSNorm(args.mm_embed_dim, args.rms_norm_eps, with_scale=False)
        self.embedding_projection = nn.Linear(args.mm_embed_dim, args.text_hidden_size, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.embedding_projection(self.embedding_pre_projection_norm(x))


class VisionEmbedder(nn.Module):
    """`Gemma4UnifiedVisionEmbedder` up to the multimodal embedder: patches -> [N, mm_embed_dim]."""

    def __init__(self, args: UnifiedArgs):
        super().__init__()
        patch_dim = 3 * args.model_patch_size**2
        width = args.mm_embed_dim
        self.patch_ln1 = nn.LayerNorm(patch_dim, eps=LAYER_NORM_EPS)
        self.patch_dense = nn.Linear(patch_dim, width)
        self.patch_ln2 = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.pos_embedding = mx.zeros((args.mm_posemb_size, 2, width))
        self.pos_norm = nn.LayerNorm(width, eps=LAYER_NORM_EPS)

    def __call__(self, pixels: mx.array, positions: mx.array) -> mx.array:
        x = self.patch_ln2(self.patch_dense(self.patch_ln1(pixels.astype(float_dtype(self.patch_dense)))))
        x = x + self.pos_embedding[positions[:, 0], 0] + self.pos_embedding[positions[:, 1], 1]
        return self.pos_norm(x)


class UnifiedVision(nn.Module):
    """The 12B's image path with `media.Vision`'s interface: one image's patches -> soft tokens."""

    PREFIXES = ("vision_embedder.", "embed_vision.")

    def __init__(self, args: UnifiedArgs):
        super().__init__()
        self.args = args
        self.vision_embedder = VisionEmbedder(args)
        self.embed_vision = EmbedVision(args)

    def __call__(self, pixels: mx.array, positions: mx.array, grid: tuple[int, int]) -> mx.array:
        """pixels [N, 3 * m^2] in [0, 1], positions [N, 2] (x, y), each below mm_posemb_size (media.py
        refuses larger grids) -> [N, text hidden]: one soft token per patch, whatever the grid."""
        return self.embed_vision(self.vision_embedder(pixels, positions))

    @classmethod
    def sanitize(cls, weights: dict) -> dict:
        """Checkpoint tensors -> this module's names; tensors of other modules are dropped."""
        names = {(k[len("model.") :] if k.startswith("model.") else k): v for k, v in weights.items()}
        return {k: v for k, v in names.items() if k.startswith(cls.PREFIXES)}
