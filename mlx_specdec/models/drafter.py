"""The Gemma 4 MTP assistant drafter (`gemma4_assistant`; the 12B's `gemma4_unified_assistant` has
the same maths and tensor names): maths and sanitize only.

How it couples to the target (DESIGN.md; transformers' `Gemma4AssistantForCausalLM` and
`SinglePositionMultiTokenCandidateGenerator` are the reference). One draft step at the fixed
round position p maps (token x, hidden h, the target's K/V, p) to (logits, next hidden):

    x_in = pre_projection(concat(target_embed(x) * sqrt(H_target), h))      # [B, 1, H_d]
    for each layer (all KV-shared): attention of RoPE(p) queries over the *target's* K/V of
        its last non-shared layer of the same type (full: positions 0..p-1; sliding: the last
        W+1 entries), then Gemma's sandwich norms, GeGLU MLP and layer_scalar
    y = norm(x)
    logits = tied head(y)  (or the centroid-masked head), no softcap
    next h = post_projection(y)                                              # [B, 1, H_target]

The drafter has no cache of its own. Its layers are mlx-lm's `gemma4_text.DecoderLayer`
(with every layer KV-shared they have no K/V projections), so the layer maths is mlx-lm's.

Centroid head (`use_ordered_embeddings`): `masked_embedding.centroids` scores `num_centroids`
clusters; the tokens of the top `centroid_intermediate_top_k` clusters (rows of
`token_ordering` reshaped to [clusters, vocab/clusters]) get real logits, every other token
gets (lowest selected logit - 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models import gemma4_text

from ..errors import SpecdecError
from .target import one_of, text_config

DRAFTER_TYPES = ("gemma4_assistant", "gemma4_unified_assistant")


@dataclass
class DrafterArgs:
    text: dict  # normalised gemma4_text config of the drafter's own layers
    backbone_hidden_size: int
    use_ordered_embeddings: bool = False
    num_centroids: int = 2048
    centroid_intermediate_top_k: int = 32

    @classmethod
    def from_config(cls, config: dict) -> DrafterArgs:
        if config.get("model_type") not in DRAFTER_TYPES:
            raise SpecdecError(
                f"unsupported model_type {config.get('model_type')!r}: "
                f"expected a Gemma 4 drafter ({one_of(DRAFTER_TYPES)})"
            )
        if not isinstance(config.get("text_config"), dict):
            raise SpecdecError("missing config key 'text_config'")
        # (num_kv_shared_layers is set just below: every drafter layer reads the target's K/V)
        text = text_config({**config["text_config"], "model_type": "gemma4_text", "num_kv_shared_layers": 0})
        # Every drafter layer reads the target's K/V; it has no K/V projections of its own.
        text["num_kv_shared_layers"] = text["num_hidden_layers"]
        text["hidden_size_per_layer_input"] = 0
        text["use_double_wide_mlp"] = False
        if "backbone_hidden_size" not in config:
            raise SpecdecError("missing config key 'backbone_hidden_size'")
        args = cls(
            text=text,
            backbone_hidden_size=config["backbone_hidden_size"],
            use_ordered_embeddings=bool(config.get("use_ordered_embeddings", False)),
            num_centroids=config.get("num_centroids", 2048),
            centroid_intermediate_top_k=config.get("centroid_intermediate_top_k", 32),
        )
        if not (isinstance(args.backbone_hidden_size, int) and args.backbone_hidden_size >= 1):
            raise SpecdecError(f"backbone_hidden_size must be at least 1, not {args.backbone_hidden_size!r}")
        if args.use_ordered_embeddings and not (isinstance(args.num_centroids, int) and args.num_centroids >= 1):
            raise SpecdecError(f"num_centroids must be at least 1, not {args.num_centroids!r}")
        top_k = args.centroid_intermediate_top_k
        if args.use_ordered_embeddings and not (isinstance(top_k, int) and 1 <= top_k <= args.num_centroids):
            raise SpecdecError(
                f"centroid_intermediate_top_k must be from 1 to num_centroids ({args.num_centroids}), not {top_k!r}"
            )
        if args.use_ordered_embeddings and text["vocab_size"] % args.num_centroids:
            raise SpecdecError(
                f"vocab_size {text['vocab_size']} is not a multiple of num_centroids {args.num_centroids}"
            )
        return args


class _Body(nn.Module):
    def __init__(self, args: gemma4_text.ModelArgs):
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [gemma4_text.DecoderLayer(args, i) for i in range(args.num_hidden_layers)]
        self.norm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)


class MaskedEmbedder(nn.Module):
    def __init__(self, hidden: int, vocab: int, num_centroids: int, top_k: int):
        super().__init__()
        self.num_centroids = num_centroids
        self.top_k = top_k
        self.per_cluster = vocab // num_centroids
        self.centroids = nn.Linear(hidden, num_centroids, bias=False)
        self.token_ordering = mx.zeros((vocab,), dtype=mx.int32)

    def selected_tokens(self, y: mx.array) -> mx.array:
        """y [B, L, H] -> token ids with real logits [B, L, top_k * vocab/clusters]."""
        scores = self.centroids(y)
        top = mx.argpartition(-scores, kth=self.top_k - 1, axis=-1)[..., : self.top_k]
        table = self.token_ordering.reshape(self.num_centroids, self.per_cluster)
        return table[top].reshape(*y.shape[:-1], -1)

    def __call__(self, y: mx.array, embed: nn.Module, vocab: int) -> mx.array:
        idx = self.selected_tokens(y)  # [B, L, N]
        rows = embed(idx)  # [B, L, N, H]: head rows, unscaled
        selected = (rows @ y[..., :, None]).squeeze(-1)  # [B, L, N]
        fill = mx.min(selected) - 1.0
        out = mx.full((*y.shape[:-1], vocab), fill, dtype=selected.dtype)
        return mx.put_along_axis(out, idx, selected, axis=-1)


class Drafter(nn.Module):
    """Gemma 4 MTP assistant; one `__call__` is one draft step."""

    def __init__(self, args: DrafterArgs):
        super().__init__()
        self.args = args
        margs = gemma4_text.ModelArgs.from_dict(args.text)
        self.vocab_size = margs.vocab_size
        self.sliding_window = margs.sliding_window
        self.model = _Body(margs)
        self.pre_projection = nn.Linear(2 * args.backbone_hidden_size, margs.hidden_size, bias=False)
        self.post_projection = nn.Linear(margs.hidden_size, args.backbone_hidden_size, bias=False)
        if args.use_ordered_embeddings:
            self.masked_embedding = MaskedEmbedder(
                margs.hidden_size, margs.vocab_size, args.num_centroids, args.centroid_intermediate_top_k
            )

    def __call__(self, token_embed: mx.array, hidden: mx.array, shared_kv: dict, position) -> tuple[mx.array, mx.array]:
        """One draft step.

        token_embed: [B, 1, H_t] the target's scaled embedding of the input token.
        hidden:      [B, 1, H_t] target final-normed hidden at p-1, or the previous step's next hidden.
        shared_kv:   {"full_attention": (K, V) [B, n_kv, p, D], "sliding_attention": (K, V) last W+1}.
        position:    p, the round position (int or mx scalar), the same for every step.
        Returns (logits [B, 1, V], next hidden [B, 1, H_t]).
        """
        x = self.pre_projection(mx.concatenate([token_embed, hidden], axis=-1))
        for layer in self.model.layers:
            x, _, _ = layer(x, None, None, shared_kv=shared_kv[layer.layer_type], offset=position)
        y = self.model.norm(x)
        return self.head(y), self.post_projection(y)

    def head(self, y: mx.array) -> mx.array:
        if self.args.use_ordered_embeddings:
            return self.masked_embedding(y, self.model.embed_tokens, self.vocab_size)
        return self.model.embed_tokens.as_linear(y)

    def sanitize(self, weights: dict) -> dict:
        out = {}
        for k, v in weights.items():
            k = weight_name(k)
            if k == "lm_head.weight" or "rotary_emb" in k:
                continue  # the head is tied to model.embed_tokens
            if k.endswith("token_ordering"):
                v = v.astype(mx.int32)
            out[k] = v
        return out


def weight_name(key: str) -> str:
    """A drafter tensor or module path in any layout -> ours (an MLX export may prefix `language_model.`)."""
    return key.removeprefix("language_model.")


def drafter_quantization(config: dict) -> dict | None:
    """An already-quantised drafter's `quantization` with its per-path entries renamed like the tensors."""
    q = config.get("quantization")
    return None if not q else {weight_name(k): v for k, v in q.items()}
