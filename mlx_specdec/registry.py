"""The published Gemma 4 pairs as data, the names a person types for them, and their sizes.

One `Pair` per published target and its `-assistant` drafter (the QAT releases are pairs of
their own, with the same shapes). `resolve(name)` maps what a person types (a short name, an
alias, a hub id of the target or of its drafter, an mlx-community repo id; any case) to a Pair;
`mlx_source(name)` says whether the name was a pre-quantised mlx-community target, which
provision converts from (copied through) instead of Google's bf16 repo, into its own bundle.

Invariants:
- The shapes here serve estimates only (bundle size, memory, `specdec models`). Loading and
  converting always read the checkpoint's own config.json, which wins wherever they disagree.
- Bundle sizes are computed, never typed in: the model is built lazily from the shapes (mlx-lm's
  gemma4_text and our drafter, nothing evaluated) and every tensor is sized with the per-module
  bit rules `weights_convert.convert` applies (`weights_convert.quantise`). The download sizes
  are the published bf16 repo sizes (they include the vision/audio towers the text model drops).
- Shape sources: DESIGN.md "The published checkpoints" and the public model cards. Values that
  no public config we could read states are marked `# inferred` (chosen so that the parameter
  count matches the published total); the 12B's are the least certain.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .errors import SpecdecError, UsageError

VOCAB = 262144
GB = 10**9
_FLOATS = (mx.float16, mx.bfloat16, mx.float32)


@dataclass(frozen=True)
class TextShape:
    """The text-model shapes of a target (what its config.json's `text_config` says)."""

    hidden: int
    layers: int
    period: int  # one full-attention layer after every period-1 sliding ones
    heads: int
    kv_heads: int
    intermediate: int
    window: int
    global_kv_heads: int | None = None  # full layers (with k_eq_v); None: kv_heads
    head_dim: int = 256
    global_head_dim: int = 512  # full layers
    kv_shared: int = 0  # the last N layers reuse earlier layers' K/V
    ple: int = 0  # per-layer input embedding width (E2B/E4B)
    double_wide: bool = False  # KV-shared layers have a 2x MLP (E2B)
    k_eq_v: bool = False  # full layers: no v_proj, V from the K projection
    experts: int = 0
    top_k_experts: int = 0
    moe_intermediate: int = 0
    max_context: int = 262144
    inferred: bool = False  # some shapes chosen to match the published parameter count

    def config(self) -> dict:
        """A Hugging Face style `gemma4_text` config with these shapes."""
        layer_types = (["sliding_attention"] * (self.period - 1) + ["full_attention"]) * (self.layers // self.period)
        cfg = {
            "model_type": "gemma4_text",
            "hidden_size": self.hidden,
            "num_hidden_layers": self.layers,
            "intermediate_size": self.intermediate,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "num_global_key_value_heads": self.global_kv_heads,
            "head_dim": self.head_dim,
            "global_head_dim": self.global_head_dim,
            "vocab_size": VOCAB,
            "vocab_size_per_layer_input": VOCAB,
            "sliding_window": self.window,
            "layer_types": layer_types[: self.layers],
            "num_kv_shared_layers": self.kv_shared,
            "hidden_size_per_layer_input": self.ple,
            "use_double_wide_mlp": self.double_wide,
            "attention_k_eq_v": self.k_eq_v,
            "enable_moe_block": bool(self.experts),
            "max_position_embeddings": self.max_context,
            "final_logit_softcapping": 30.0,
            "tie_word_embeddings": True,
        }
        if self.experts:
            cfg.update(
                num_experts=self.experts,
                top_k_experts=self.top_k_experts,
                moe_intermediate_size=self.moe_intermediate,
            )
        return cfg


@dataclass(frozen=True)
class DrafterShape:
    """The MTP assistant's shapes: 4 layers [s, s, s, f] reading the target's K/V."""

    hidden: int
    intermediate: int
    centroids: int = 0  # 0: dense tied head; else a centroid-masked head (top 32 clusters)
    layers: int = 4
    heads: int | None = None  # None: the target's (as in every published drafter config we have seen)
    inferred: bool = False  # some shapes chosen to match the published parameter count

    def config(self, target: TextShape) -> dict:
        """A `gemma4_assistant` config for this drafter on `target` (K/V shapes follow the target)."""
        text = {
            "hidden_size": self.hidden,
            "num_hidden_layers": self.layers,
            "intermediate_size": self.intermediate,
            "num_attention_heads": self.heads or target.heads,
            "num_key_value_heads": target.kv_heads,
            "num_global_key_value_heads": target.global_kv_heads,
            "head_dim": target.head_dim,
            "global_head_dim": target.global_head_dim,
            "vocab_size": VOCAB,
            "sliding_window": target.window,
            "layer_types": ["sliding_attention"] * (self.layers - 1) + ["full_attention"],
            "attention_k_eq_v": target.k_eq_v,
            "final_logit_softcapping": None,
        }
        return {
            "model_type": "gemma4_assistant",
            "backbone_hidden_size": target.hidden,
            "text_config": text,
            "use_ordered_embeddings": bool(self.centroids),
            "num_centroids": self.centroids or 2048,
            "centroid_intermediate_top_k": 32,
        }


@dataclass(frozen=True)
class Pair:
    """One published target and its drafter, as the registry knows them."""

    name: str  # short name: e2b, 26b-a4b, 31b-qat
    target: str  # hub id of the target
    text: TextShape
    draft: DrafterShape
    download_bytes: int  # bf16 target repo + drafter repo, as published
    aliases: tuple[str, ...] = ()
    mlx_repos: tuple[str, ...] = ()  # pre-converted MLX targets (mlx-community)
    qat: bool = False
    mlx_drafter: str | None = None  # the drafter converted to MLX (mlx-community, bf16)

    @property
    def estimated(self) -> bool:
        """Whether some of the shapes are inferred from the published totals, not read from a config."""
        return self.text.inferred or self.draft.inferred

    @property
    def drafter(self) -> str:
        return self.target + "-assistant"

    @property
    def head(self) -> str:
        return f"centroid ({self.draft.centroids})" if self.draft.centroids else "dense"

    @property
    def kind(self) -> str:
        return f"MoE {self.text.experts}x top-{self.text.top_k_experts}" if self.text.experts else "dense"

    def bundle_name(self, bits: int) -> str:
        """The cache folder name of this pair's bundle: `gemma-4-E2B-it-4bit`."""
        return f"{self.target.split('/')[-1]}-{bits}bit" if bits < 16 else f"{self.target.split('/')[-1]}-bf16"

    def target_config(self) -> dict:
        return self.text.config()

    def drafter_config(self) -> dict:
        return self.draft.config(self.text)

    def names(self) -> tuple[str, ...]:
        """Every name that resolves to this pair (compared case-insensitively)."""
        names = (self.name, *self.aliases, self.target, self.drafter, self.target.split("/")[-1], *self.mlx_repos)
        return names + ((self.mlx_drafter,) if self.mlx_drafter else ())


# --- the published pairs ---------------------------------------------------------------------
E2B = TextShape(
    hidden=1536,
    layers=35,
    period=5,
    heads=8,
    kv_heads=1,
    intermediate=6144,
    window=512,
    kv_shared=20,
    ple=256,
    double_wide=True,
    max_context=131072,
)
E4B = TextShape(
    hidden=2560,
    layers=42,
    period=6,
    heads=8,
    kv_heads=2,
    intermediate=10240,
    window=512,
    kv_shared=18,
    ple=256,
    max_context=131072,
)
# 12B (gemma4_unified): 48 layers, hidden 3840, window 1024, no PLE, 11.95B parameters (model card);
# its drafter's config has k_eq_v and one global KV head. Heads, KV heads, MLP width: inferred.
G12B = TextShape(
    hidden=3840,
    layers=48,
    period=6,
    heads=16,
    kv_heads=8,
    global_kv_heads=1,  # inferred
    intermediate=15360,
    window=1024,
    k_eq_v=True,
    inferred=True,
)  # inferred: heads, kv_heads, intermediate
# 26B-A4B: the dense MLP width next to the experts is inferred (25.2B parameters in all).
G26B = TextShape(
    hidden=2816,
    layers=30,
    period=6,
    heads=16,
    kv_heads=8,
    global_kv_heads=2,
    intermediate=2112,
    window=1024,
    k_eq_v=True,
    experts=128,
    inferred=True,  # the dense MLP width
    top_k_experts=8,
    moe_intermediate=704,
)
G31B = TextShape(
    hidden=5376,
    layers=60,
    period=6,
    heads=32,
    kv_heads=16,
    global_kv_heads=4,
    intermediate=21504,
    window=1024,
    k_eq_v=True,
)

# Drafters: E2B/E4B ~78M parameters, hidden 256, 2048 centroids; 12B/26B/31B hidden 1024, dense,
# MLP 8192 (the 12B's config: 16 heads like its target; 423M/0.4B/0.47B parameters published).
SMALL_DRAFT = DrafterShape(hidden=256, intermediate=2048, centroids=2048, inferred=True)  # the MLP width
LARGE_DRAFT = DrafterShape(hidden=1024, intermediate=8192)


# Pre-converted MLX repos (mlx-community, made by mlx-vlm): 4-bit targets, and bf16 drafters that
# go with them (DESIGN.md "The published checkpoints"; the drafter ids as public pairings spell them).
MLX_TARGETS = {n: (f"mlx-community/gemma-4-{n}-it-4bit",) for n in ("e2b", "e4b", "26b-a4b")}
MLX_DRAFTERS = {
    name: f"mlx-community/gemma-4-{size}-it-assistant-bf16"
    for name, size in (("e2b", "E2B"), ("e4b", "E4B"), ("26b-a4b", "26B-A4B"), ("31b", "31B"))
}


def _pairs() -> tuple[Pair, ...]:
    base = [
        # name, repo, shapes, drafter, bf16 GB (target + drafter), aliases
        ("e2b", "google/gemma-4-E2B-it", E2B, SMALL_DRAFT, 9.6 + 0.16, ("gemma-4-e2b",)),
        ("e4b", "google/gemma-4-E4B-it", E4B, SMALL_DRAFT, 16.0 + 0.16, ("gemma-4-e4b",)),
        ("12b", "google/gemma-4-12B-it", G12B, LARGE_DRAFT, 23.9 + 0.84, ("gemma-4-12b",)),
        (
            "26b-a4b",
            "google/gemma-4-26B-A4B-it",
            G26B,
            LARGE_DRAFT,
            51.6 + 0.84,
            ("26b", "gemma-4-26b-a4b", "gemma-4-26b"),
        ),
        ("31b", "google/gemma-4-31B-it", G31B, LARGE_DRAFT, 58.0 + 0.94, ("gemma-4-31b",)),
    ]
    out = [
        Pair(n, repo, text, draft, int(gb * GB), aliases, MLX_TARGETS.get(n, ()), mlx_drafter=MLX_DRAFTERS.get(n))
        for n, repo, text, draft, gb, aliases in base
    ]
    for name, repo, text, draft, gb, aliases in base:
        # QAT: bf16 weights trained to survive 4-bit quantisation; same shapes, same download size.
        qat_aliases = tuple(f"{a}-qat" for a in aliases)
        out.append(
            Pair(f"{name}-qat", f"{repo}-qat-q4_0-unquantized", text, draft, int(gb * GB), qat_aliases, qat=True)
        )
    return tuple(out)


PAIRS: tuple[Pair, ...] = _pairs()
_BY_NAME = {n.lower(): p for p in PAIRS for n in p.names()}


def _key(name: str) -> str:
    return str(name).strip().lower().removeprefix("https://huggingface.co/").rstrip("/")


def resolve(name: str) -> Pair:
    """A short name, alias, hub id (target or drafter) or mlx-community repo id -> its Pair (any case)."""
    key = _key(name)
    pair = _BY_NAME.get(key) or _BY_NAME.get(key.removesuffix("-it")) or _BY_NAME.get(key + "-it")
    if pair is None:
        known = ", ".join(p.name for p in PAIRS)
        raise UsageError(
            f"unknown model {name!r}: known names are {known} (or their hub ids); a folder path also works"
        )
    return pair


def find(name: str) -> Pair | None:
    """Like `resolve`, None for an unknown name."""
    try:
        return resolve(name)
    except SpecdecError:
        return None


def mlx_source(name: str) -> str | None:
    """The pre-quantised mlx-community target repo `name` is (spelt as the registry has it), else None."""
    key = _key(name)
    return next((r for p in PAIRS for r in p.mlx_repos if r.lower() == key), None)


def repo_bits(repo: str) -> int:
    """The bits an MLX repo's name states (`...-4bit`: 4, `...-bf16`: 16); SpecdecError if it states none."""
    tail = repo.rsplit("-", 1)[-1].lower()
    if tail in ("bf16", "fp16"):
        return 16
    if tail.endswith("bit") and tail[:-3].isdigit():
        return int(tail[:-3])
    raise SpecdecError(f"{repo}: the name does not say how it is quantised (-4bit, -8bit, -bf16)")


def mlx_bundle_name(repo: str) -> str:
    """The cache folder of a bundle converted from an MLX repo: `gemma-4-e2b-it-4bit-mlx-community`; it
    differs from Google's (`gemma-4-E2B-it-4bit`) in more than case, as APFS ignores case by default."""
    owner, _, name = repo.partition("/")
    return f"{name}-{owner}"


# --- sizes -----------------------------------------------------------------------------------
def _param_bytes(path: str, array, plan: dict, itemsize: int, cuts: dict) -> int:
    """Bytes of one parameter once written with `plan`, its cut (if any) only."""
    from .models.quantise import quantised_bytes

    module, _, leaf = path.rpartition(".")
    shape, cut = list(array.shape), cuts.get(module)
    if cut is not None and (leaf == "weight" or cut.axis == 0):  # a sharded-to-all bias stays whole
        shape[cut.axis] = cut.stop - cut.start
    params = plan.get(module, False)
    if leaf == "weight" and params:
        return quantised_bytes(shape, itemsize, params)
    return math.prod(shape) * (itemsize if array.dtype in _FLOATS else array.dtype.size)


def model_bytes(model: nn.Module, plan: dict, itemsize: int = 2, cuts: dict | None = None) -> int:
    """Bytes `model`'s weights take once written with `plan` (quantise.plan); floats at `itemsize`.
    `cuts` (models.shard.tensor_cuts): count only the part of each cut Linear one process keeps."""
    return sum(_param_bytes(p, a, plan, itemsize, cuts or {}) for p, a in tree_flatten(model.parameters()))


def layer_bytes(target_cfg: dict, bits: int, group_size: int = 64, itemsize: int = 2) -> tuple[int, list[int]]:
    """(bytes of the target's weights outside its decoder layers, [bytes of each decoder layer]) as
    `convert` writes them at `bits`: what pipeline parallel replicates, and what it shares out."""
    from .models import quantise
    from .models.target import make_model, text_config

    target = make_model(text_config(target_cfg))  # lazy: nothing is evaluated or allocated
    plan = quantise.plan(target, quantise.TARGET_RULES, bits, group_size)
    rest, layers = 0, [0] * len(target.model.layers)
    for path, array in tree_flatten(target.parameters()):
        n = _param_bytes(path, array, plan, itemsize, {})
        if path.startswith("model.layers."):
            layers[int(path.split(".")[2])] += n
        else:
            rest += n
    return rest, layers


def config_bytes(
    target_cfg: dict,
    drafter_cfg: dict | None,
    bits: int,
    group_size: int = 64,
    itemsize: int = 2,
    machines: int = 1,
    parallel: str = "tensor",
    rank: int | None = None,
) -> tuple[int, int]:
    """(target, drafter) bytes of the bundle `convert` writes from these configs at `bits`; with
    `machines` > 1, the bytes each process holds once the target is split (the drafter stays whole):
    tensor parallel, every rank keeps as much as rank 0 (1/N of the MoE experts); pipeline parallel,
    rank `rank`'s block of decoder layers and the rest whole (None: the rank whose block weighs
    most). Raises SpecdecError
    when it cannot split."""
    from .models import quantise
    from .models.drafter import Drafter, DrafterArgs
    from .models.pipeline import blocks
    from .models.shard import tensor_cuts
    from .models.target import make_model, text_config

    if machines > 1 and parallel == "pipeline":
        rest, layers = layer_bytes(target_cfg, bits, group_size, itemsize)
        held = [sum(layers[a:b]) for a, b in blocks(layers, machines)]
        t = rest + (max(held) if rank is None else held[rank])
    else:
        text = text_config(target_cfg)
        target = make_model(text)  # lazy: nothing is evaluated or allocated
        plan = quantise.plan(target, quantise.TARGET_RULES, bits, group_size)
        cuts = tensor_cuts(target, text, machines, 0, plan) if machines > 1 else None
        t = model_bytes(target, plan, itemsize, cuts)
    if drafter_cfg is None:
        return t, 0
    drafter = Drafter(DrafterArgs.from_config(drafter_cfg))
    d = model_bytes(drafter, quantise.plan(drafter, quantise.DRAFTER_RULES, bits, group_size), itemsize)
    return t, d


@functools.cache
def bundle_layer_bytes(pair: Pair, bits: int = 4, group_size: int = 64) -> tuple[int, tuple[int, ...]]:
    """`layer_bytes` of `pair`'s target at `bits`, computed once."""
    rest, layers = layer_bytes(pair.target_config(), bits, group_size)
    return rest, tuple(layers)


@functools.cache
def bundle_bytes(
    pair: Pair, bits: int = 4, group_size: int = 64, machines: int = 1, parallel: str = "tensor"
) -> tuple[int, int]:
    """(target, drafter) bytes of `pair`'s bundle at `bits`, computed from its shapes (per process
    when split over `machines`: `config_bytes`)."""
    return config_bytes(
        pair.target_config(), pair.drafter_config(), bits, group_size, machines=machines, parallel=parallel
    )
