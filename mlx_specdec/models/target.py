"""The Gemma 4 target, built on mlx-lm's `gemma4_text` model.

We do not copy the model: `mlx_lm.models.gemma4_text.Model` computes the maths. This module
adds what speculative decoding needs on top of it:

* `text_config`: a Hugging Face `config.json` -> the text config mlx-lm accepts, with the known
  traps fixed (transformers 5.24 writes `per_layer_config` and no `global_head_dim`; the
  multimodal layout has no top-level `vocab_size`). Every family maps onto mlx-lm's one
  `gemma4_text` model: E2B/E4B/26B-A4B/31B (`gemma4_text`, or multimodal `gemma4`) and the 12B
  (`gemma4_unified_text`, or multimodal `gemma4_unified`: no PLE, no MoE). Every value comes
  from the file; mlx-lm's E2B defaults never leak in for a structural key (a missing one is an
  error).
* `text_weights`: one source tensor -> the mlx-lm tensors it becomes (none for vision/audio
  towers and the unused K/V of KV-shared layers; two for the 26B's fused `experts.gate_up_proj`),
  through mlx-lm's own `sanitize`. One tensor at a time, so the converter can stream.
  `text_quantization` maps an already-quantised source's per-path entries the same way.
* `kv_source_layers` / `kv_layout`: which target layers hold the K/V the drafter reads (the last
  non-shared layer of each attention type; with no KV sharing, the last layer of each type) and
  the shape of every cached layer (for memory estimates).
* `Target`: forward returning logits *and* the final-normed hidden states (the lm_head input,
  which the drafter consumes), plus the scaled input embedding the drafter uses.
* Experts on the CPU: MLX's CPU `gather_mm` takes float32 only, so on the CPU backend the
  unquantised experts of a bf16 or fp16 MoE target gather in float32 (`float32_experts`), with
  their weights kept as stored and their outputs in the model's dtype. Metal (whose gather takes
  bf16 and fp16) is left alone.
* Issuing early: in a short pass (a decode step or a verify) every `ISSUE_EVERY`-th layer hands
  its output to the device (`mx.async_eval`), so the device runs the first layers while the host
  still builds the rest of the graph. Only the order of evaluation changes, never a value.
"""

from __future__ import annotations

import contextlib
import functools
import time
from typing import Optional

import mlx.core as mx
from mlx_lm.models import gemma4_text
from mlx_lm.models.switch_layers import SwitchLinear

from ..errors import SpecdecError
from .quantise import source_quantization

TEXT_TYPES = ("gemma4_text", "gemma4_unified_text")
MULTIMODAL_TYPES = ("gemma4", "gemma4_unified")  # text under "text_config", tensors under model.language_model.*
TARGET_TYPES = TEXT_TYPES + MULTIMODAL_TYPES

# Keys a config must state: without them mlx-lm would silently use E2B's values.
REQUIRED_TEXT_KEYS = (
    "hidden_size",
    "num_hidden_layers",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "sliding_window",
    "layer_types",
)

# Range checks (`check_ranges`), after files.read_config has checked the types: sizes that must be
# at least 1, the layer and RoPE types the model implements, the largest vocabulary int32 ids hold.
POSITIVE_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "num_global_key_value_heads",
    "head_dim",
    "global_head_dim",
    "sliding_window",
    "max_position_embeddings",
)
LAYER_TYPES = ("full_attention", "sliding_attention")
ROPE_TYPES = ("default", "proportional")
MAX_VOCAB = 2**31 - 1  # token ids are int32

# Hugging Face defaults for optional keys whose mlx-lm default differs (mlx-lm assumes E2B).
HF_TEXT_DEFAULTS = {
    "use_double_wide_mlp": False,
    "final_logit_softcapping": None,
    "attention_k_eq_v": False,
    "enable_moe_block": False,
    "num_kv_shared_layers": 0,
    "hidden_size_per_layer_input": 0,
    "tie_word_embeddings": True,
    "rms_norm_eps": 1e-6,
}

# Multimodal towers and embedders that the text model ignores.
_NON_TEXT_PREFIXES = (
    "vision_tower",
    "multi_modal_projector",
    "audio_tower",
    "embed_audio",
    "embed_vision",
    "vision_embedder",
)
_SHARED_LAYER_DROPS = (".self_attn.k_proj", ".self_attn.v_proj", ".self_attn.k_norm", ".self_attn.v_norm")
_ALWAYS_DROP = ("rotary_emb", "input_max", "input_min", "output_max", "output_min")


def one_of(names) -> str:
    """('a', 'b', 'c') -> "'a', 'b' or 'c'" for error messages."""
    quoted = [repr(n) for n in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def text_config(config: dict) -> dict:
    """Hugging Face Gemma 4 config (text or multimodal) -> mlx-lm `gemma4_text` config dict.

    Raises SpecdecError naming the missing key or the unsupported model_type.
    """
    model_type = config.get("model_type")
    if model_type in MULTIMODAL_TYPES:
        if not isinstance(config.get("text_config"), dict):
            raise SpecdecError("missing key 'text_config' (a multimodal gemma4 config needs one)")
        cfg = dict(config["text_config"])
        # The multimodal layout may keep vocab_size only at the top level, or only in text_config.
        if "vocab_size" not in cfg and "vocab_size" in config:
            cfg["vocab_size"] = config["vocab_size"]
        if "tie_word_embeddings" not in cfg and "tie_word_embeddings" in config:
            cfg["tie_word_embeddings"] = config["tie_word_embeddings"]
    elif model_type in TEXT_TYPES:
        cfg = dict(config)
    else:
        raise SpecdecError(f"unsupported model_type {model_type!r}: expected a Gemma 4 target ({one_of(TARGET_TYPES)})")
    missing = [k for k in REQUIRED_TEXT_KEYS if cfg.get(k) is None]  # null is missing too
    if missing:
        raise SpecdecError(f"missing config key {missing[0]!r}")
    for key, value in HF_TEXT_DEFAULTS.items():
        cfg.setdefault(key, value)
    cfg["model_type"] = "gemma4_text"
    cfg.setdefault("vocab_size_per_layer_input", cfg["vocab_size"])

    # transformers writes per-layer overrides instead of global_head_dim (the trap in DESIGN.md).
    per_layer = cfg.pop("per_layer_config", None) or {}
    wrong = next((k for k, v in per_layer.items() if not isinstance(v, dict)), None)
    if wrong is not None:
        raise SpecdecError(f"per_layer_config.{wrong} must be a JSON object, not {per_layer[wrong]!r}")
    full_layers = [i for i, t in enumerate(cfg["layer_types"]) if t == "full_attention"]
    if "global_head_dim" not in cfg or cfg["global_head_dim"] is None:
        dims = {per_layer.get(str(i), {}).get("head_dim", cfg["head_dim"]) for i in full_layers}
        if len(dims) > 1:
            raise SpecdecError(f"full-attention layers disagree on head_dim {sorted(dims)}")
        cfg["global_head_dim"] = dims.pop() if dims else cfg["head_dim"]
    if cfg.get("num_global_key_value_heads") is None:
        heads = {per_layer.get(str(i), {}).get("num_key_value_heads") for i in full_layers} - {None}
        if heads:
            cfg["num_global_key_value_heads"] = heads.pop()
    check_ranges(cfg)
    if len(cfg["layer_types"]) != cfg["num_hidden_layers"]:
        raise SpecdecError(
            f"layer_types has {len(cfg['layer_types'])} entries but num_hidden_layers is {cfg['num_hidden_layers']}"
        )
    return cfg


def check_ranges(cfg: dict) -> None:
    """Refuse a normalised text config whose values are of the right type but cannot make a model
    (zero sizes, shared layers past the last layer, unknown layer or RoPE types, ...): one line
    naming the key, before any tensor is built. The types were checked when the file was read."""

    def bad(key: str, want: str):
        return SpecdecError(f"{key} must be {want}, not {cfg.get(key)!r}")

    for key in POSITIVE_KEYS:
        if cfg.get(key) is not None and not (isinstance(cfg[key], int) and cfg[key] >= 1):
            raise bad(key, "at least 1")
    if cfg["vocab_size"] > MAX_VOCAB:
        raise bad("vocab_size", f"at most {MAX_VOCAB} (token ids are int32)")
    for key in ("head_dim", "global_head_dim"):  # RoPE rotates pairs of dimensions
        if cfg[key] % 2:
            raise bad(key, "even")
    for key in ("num_key_value_heads", "num_global_key_value_heads"):
        if cfg.get(key) and cfg["num_attention_heads"] % cfg[key]:
            raise SpecdecError(
                f"num_attention_heads {cfg['num_attention_heads']} is not a multiple of {key} {cfg[key]}"
            )
    shared = cfg.get("num_kv_shared_layers") or 0
    if not 0 <= shared < cfg["num_hidden_layers"]:
        raise bad("num_kv_shared_layers", f"below num_hidden_layers ({cfg['num_hidden_layers']})")
    for i, t in enumerate(cfg["layer_types"]):
        if t not in LAYER_TYPES:
            raise SpecdecError(f"layer_types[{i}] is {t!r}; expected {one_of(LAYER_TYPES)}")
    if not _above_zero(cfg["rms_norm_eps"]):
        raise bad("rms_norm_eps", "above 0")
    if cfg.get("final_logit_softcapping") is not None and not _above_zero(cfg["final_logit_softcapping"]):
        raise bad("final_logit_softcapping", "above 0 or null")
    if cfg.get("enable_moe_block"):
        experts = cfg.get("num_experts")
        if not (isinstance(experts, int) and experts >= 1):
            raise bad("num_experts", "at least 1 (enable_moe_block is true)")
        if not (isinstance(cfg.get("top_k_experts"), int) and 1 <= cfg["top_k_experts"] <= experts):
            raise bad("top_k_experts", f"from 1 to num_experts ({experts})")
        if not (isinstance(cfg.get("moe_intermediate_size"), int) and cfg["moe_intermediate_size"] >= 1):
            raise bad("moe_intermediate_size", "at least 1 (enable_moe_block is true)")
    for layer, rope in (cfg.get("rope_parameters") or {}).items():
        if layer not in LAYER_TYPES:
            continue
        where = f"rope_parameters.{layer}"
        if not isinstance(rope, dict):
            raise SpecdecError(f"{where} must be a JSON object, not {rope!r}")
        if rope.get("rope_type", "default") not in ROPE_TYPES:
            raise SpecdecError(
                f"{where}.rope_type {rope['rope_type']!r} is not supported; expected {one_of(ROPE_TYPES)}"
            )
        if "rope_theta" in rope and not _above_zero(rope["rope_theta"]):
            raise SpecdecError(f"{where}.rope_theta must be above 0, not {rope['rope_theta']!r}")
        factor = rope.get("partial_rotary_factor", 1.0)
        if not (_above_zero(factor) and factor <= 1):
            raise SpecdecError(f"{where}.partial_rotary_factor must be in (0, 1], not {factor!r}")


def _above_zero(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def text_weight_name(key: str, text_cfg: dict) -> Optional[str]:
    """Hugging Face tensor name (either layout) -> mlx-lm `gemma4_text` name, or None to drop."""
    if any(s in key for s in _ALWAYS_DROP):
        return None
    for prefix in ("model.language_model.", "language_model.model.", "language_model."):
        if key.startswith(prefix):
            key = "model." + key[len(prefix) :]
            break
    else:
        rest = key.removeprefix("model.")
        if rest.startswith(_NON_TEXT_PREFIXES):
            return None
    if key == "lm_head.weight" and text_cfg.get("tie_word_embeddings", True):
        return None
    if any(s in key for s in _SHARED_LAYER_DROPS) and ".layers." in key:
        first_shared = text_cfg["num_hidden_layers"] - text_cfg.get("num_kv_shared_layers", 0)
        layer = int(key.split(".layers.")[1].split(".")[0])
        if layer >= first_shared:
            return None
    return key


def text_weights(key: str, array: mx.array, text_cfg: dict, model: gemma4_text.Model) -> dict:
    """One source tensor (any layout) -> {mlx-lm name: array}: empty, one, or several (fused experts).

    `model` is the target's mlx-lm model; only its `sanitize` is used (lazy arrays stay lazy).
    """
    name = text_weight_name(key, text_cfg)
    return {} if name is None else model.sanitize({name: array})


def text_quantization(config: dict, text_cfg: dict) -> Optional[dict]:
    """An already-quantised source's `quantization` (mlx-lm/mlx-vlm format) with its per-path
    entries renamed like the tensors (`language_model.model.layers.N...` -> `model.layers.N...`).
    Entries of modules the text model drops (vision tower) are dropped too."""
    q = source_quantization(config)
    if not q:
        return None
    out = {}
    for key, value in q.items():
        if not isinstance(value, (dict, bool)):
            out[key] = value  # group_size, bits, mode
            continue
        name = text_weight_name(f"{key}.weight", text_cfg)
        if name is not None:
            out[name.removesuffix(".weight")] = value
    return out


def make_model(text_cfg: dict) -> gemma4_text.Model:
    """An mlx-lm gemma4_text model (uninitialised weights) for a normalised text config."""
    return gemma4_text.Model(gemma4_text.ModelArgs.from_dict(text_cfg))


def kv_source_layers(text_cfg: dict) -> dict:
    """{layer type: index of its last non-shared layer}: the K/V the drafter reads (transformers'
    "store" layers). Without KV sharing (12B, 26B-A4B, 31B) that is the last layer of each type."""
    first_shared = text_cfg["num_hidden_layers"] - text_cfg.get("num_kv_shared_layers", 0)
    out = {}
    for i, t in enumerate(text_cfg["layer_types"][:first_shared]):
        out[t] = i
    return out


def kv_heads(text_cfg: dict, layer_type: str) -> int:
    """K/V heads of a layer type: full layers of attention_k_eq_v models have their own count."""
    own = text_cfg.get("attention_k_eq_v") and text_cfg.get("num_global_key_value_heads")
    if layer_type == "full_attention" and own:
        return text_cfg["num_global_key_value_heads"]
    return text_cfg["num_key_value_heads"]


def head_dim(text_cfg: dict, layer_type: str) -> int:
    return text_cfg["global_head_dim"] if layer_type == "full_attention" else text_cfg["head_dim"]


def kv_layout(text_cfg: dict) -> list[tuple[str, int, int]]:
    """(layer type, K/V heads, head_dim) of every layer that holds a KV cache, in order. A sliding
    layer caches at most `sliding_window` (+ the rewind margin) positions; a full layer all of them.
    K/V bytes per cached position of a layer = 2 * heads * head_dim * itemsize (k_eq_v layers too:
    mlx-lm caches V separately)."""
    first_shared = text_cfg["num_hidden_layers"] - text_cfg.get("num_kv_shared_layers", 0)
    return [(t, kv_heads(text_cfg, t), head_dim(text_cfg, t)) for t in text_cfg["layer_types"][:first_shared]]


class Float32SwitchLinear(SwitchLinear):
    """An unquantised expert projection whose gather-matmul runs in float32.

    MLX's CPU `gather_mm` takes float32 only ("[GatherMM::eval] Currently only supports
    float32"; `gather_qmm`, the quantised experts' gather, takes bf16 and fp16). The weights stay
    as stored, so memory is what the checkpoint costs; a pass casts to float32 only the experts it
    routes to (every expert once it routes as many slots as there are experts, as a prefill chunk
    does), and rounds its output to the input's dtype, as MLX's bf16 gather on Metal does (float32
    sums, rounded once): the rest of the layer sees the dtypes it would see there. A row depends
    only on its own input and experts, so a verify pass and a plain step give the same rows.
    """

    def __call__(self, x, indices, sorted_indices=False):
        """x [..., 1, I] in the model's dtype, indices [...] expert ids -> [..., 1, O] in x's dtype."""
        weight, slots = self["weight"], indices
        if indices.size < weight.shape[0]:  # cast the experts this pass uses, not all of them
            weight = weight[indices.flatten()]
            slots = mx.arange(indices.size).reshape(indices.shape)  # in order: sorted stays sorted
        out = mx.gather_mm(
            x.astype(mx.float32),
            weight.astype(mx.float32).swapaxes(-1, -2),
            rhs_indices=slots,
            sorted_indices=sorted_indices,
        )
        if "bias" in self:
            out = out + mx.expand_dims(self["bias"][indices], -2)
        return out.astype(x.dtype)


def float32_experts(model) -> int:
    """On the CPU backend, make every unquantised expert projection of `model` whose weights are
    not float32 a `Float32SwitchLinear` (its class is swapped: parameters and names stay); returns
    how many. On other backends the gather takes these dtypes itself, and nothing changes."""
    if mx.default_device().type != mx.cpu:
        return 0
    swapped = 0
    for _, module in model.named_modules():
        if type(module) is SwitchLinear and module.weight.dtype != mx.float32:
            module.__class__ = Float32SwitchLinear
            swapped += 1
    return swapped


ISSUE_EVERY = 4  # layers between early hand-offs in a short pass (0: none)
ISSUE_MAX_TOKENS = 16  # longer passes (prefill chunks) are never issued early: see _IssueEarly


class _HandOff:
    """When a pass first handed work to the device (perf_counter), or None. Not an array, list
    or dict, so as a layer's attribute it never joins the module tree."""

    __slots__ = ("first",)

    def __init__(self):
        self.first: Optional[float] = None


class _IssueEarly:
    """Mixed into a decoder layer's class: in a pass of at most ISSUE_MAX_TOKENS tokens the
    layer's output goes to the device as soon as it is built. A prefill chunk is left alone: its
    lazy graph skips the KV-shared layers, and evaluating their outputs would waste that."""

    def __call__(self, x, *args, **kwargs):
        out = super().__call__(x, *args, **kwargs)
        if x.shape[1] <= ISSUE_MAX_TOKENS:
            hand_off = self._hand_off
            if hand_off.first is None:
                hand_off.first = time.perf_counter()  # before: async_eval may wait for a busy device
            mx.async_eval(out[0])  # not a sync: the host goes on building while the device computes
        return out


@functools.cache
def _early_class(cls: type) -> type:
    return type(f"IssueEarly{cls.__name__}", (_IssueEarly, cls), {})


def issue_early(model: gemma4_text.Model, every: int = ISSUE_EVERY) -> _HandOff:
    """Make every `every`-th decoder layer (never the last) of `model` issue its output early;
    returns the record of a pass's first hand-off, which those layers share.

    mlx-lm's layer loop has no hook, so those layers' classes are swapped for subclasses: the
    module tree, the parameters and their names stay exactly as they were."""
    layers = model.model.layers
    hand_off = _HandOff()
    for i, layer in enumerate(layers):
        cls = type(layer)
        base = cls.__mro__[2] if issubclass(cls, _IssueEarly) else cls  # (IssueEarlyX, _IssueEarly, X)
        wanted = every > 0 and i % every == every - 1 and i < len(layers) - 1
        layer.__class__ = _early_class(base) if wanted else base
        layer._hand_off = hand_off
    return hand_off


class Target:
    """A Gemma 4 target: forward gives logits and final-normed hidden states.

    `model` is mlx-lm's `gemma4_text.Model` with its weights loaded; `config` its normalised text
    config. `issue_every`: see `issue_early` (0 turns it off). On the CPU backend, bf16/fp16
    experts gather in float32 (see `float32_experts`; the attribute of that name counts them).
    """

    def __init__(self, model: gemma4_text.Model, config: dict, issue_every: int = ISSUE_EVERY):
        self.model = model
        self.float32_experts = float32_experts(model)
        self.issue_every(issue_every)
        self.config = config
        self.vocab_size = config["vocab_size"]
        self.sliding_window = config["sliding_window"]
        self.kv_layers = kv_source_layers(config)
        self._softcap = config.get("final_logit_softcapping")
        # Pipeline parallel: the layers whose K/V another process keeps (models/pipeline.py).
        self.elsewhere = getattr(model.model, "elsewhere", frozenset())

    def issue_every(self, every: int) -> None:
        """Hand every `every`-th layer's output of a short pass to the device early (0: never)."""
        self._hand_off = issue_early(self.model, every)
        self.issue_period = every

    @contextlib.contextmanager
    def issuing(self, every: int):
        """`issue_every(every)` for the block, then the period it had before."""
        before = self.issue_period
        self.issue_every(every)
        try:
            yield self
        finally:
            self.issue_every(before)

    @property
    def handed_at(self) -> Optional[float]:
        """When the last pass first handed work to the device (perf_counter), or None."""
        return self._hand_off.first

    def __call__(self, tokens: mx.array, cache: list) -> tuple[mx.array, mx.array]:
        """tokens [B, L] -> (logits [B, L, V], hidden [B, L, H]); appends L positions to `cache`."""
        self._hand_off.first = None
        hidden = self.model.model(tokens, cache=cache)
        return self.logits(hidden), hidden

    def logits(self, hidden: mx.array) -> mx.array:
        """Final-normed hidden [..., H] -> softcapped logits [..., V]."""
        if self.model.tie_word_embeddings:
            out = self.model.model.embed_tokens.as_linear(hidden)
        else:
            out = self.model.lm_head(hidden)
        if self._softcap:
            out = gemma4_text.logit_softcap(self._softcap, out)  # mlx-lm's compiled kernel
        return out

    def embed(self, tokens: mx.array) -> mx.array:
        """tokens [B, L] -> scaled input embeddings [B, L, H] (what the drafter concatenates)."""
        inner = self.model.model
        return inner.embed_tokens(tokens) * inner.embed_scale
