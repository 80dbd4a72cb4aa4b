"""Synthetic bundles: a Gemma 4 target and its MTP drafter with random weights at real shapes.

`specdec bench --synthetic NAME` measures what the drafter would do for a model without
downloading it. Only speed is real here: the weights are random, so the text is noise and the
drafter's own proposals are useless; `OracleDrafter` supplies the acceptance instead.

Invariants:
* Shapes come from `registry` (the one table of the published pairs, FAMILIES names them) or a
  given config; the models are mlx-lm's / ours (`make_model`, `Drafter`), never a copy.
* Quantisation follows `weights_convert.quantise` exactly (its `plan` and rules, its `quantise`),
  so every module has the bits and group size `specdec convert` would give it and a pass reads
  the same bytes as a converted bundle.
* Built tensor by tensor: each weight is drawn, quantised and evaluated a block of rows at a
  time into its preallocated output, so peak memory is the model plus one block (E2B's
  [262144, 8960] per-layer embedding is never whole in floats, nor is any other tensor).
* Weights are Uniform(-a, a) with std 1/sqrt(fan_in) (a = sqrt(3 / fan_in)); norms, layer
  scalars and router scales keep their init of ones: activations stay O(1) and finite.

Some shapes are not public in our sources (the 12B's heads and MLP width, the 26B's dense MLP
width, the small drafters' MLP width): the registry chose them to match the published parameter
counts and marks them (`Pair.estimated`, reported as `estimated_shapes`).
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
from mlx import nn
from mlx.utils import tree_flatten

from .. import registry
from ..errors import SpecdecError, UsageError
from ..files import read_config_file
from ..load import Bundle, check_pair
from ..models import quantise
from ..models.drafter import Drafter, DrafterArgs
from ..models.target import Target, make_model, text_config

BLOCK_BYTES = 64 << 20  # float32 bytes drawn per block while building a tensor


# --- the published shapes ----------------------------------------------------------------
# The shapes come from `registry` (one table of the published pairs for sizes, names and this
# bench); the target's rotary and norm settings are Gemma 4's own.
_ROPE = {
    "full_attention": {"partial_rotary_factor": 0.25, "rope_theta": 1000000.0, "rope_type": "proportional"},
    "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"},
}
_TEXT = {"rms_norm_eps": 1e-6, "rope_parameters": _ROPE, "hidden_activation": "gelu_pytorch_tanh"}
FAMILIES = ("e2b", "e4b", "12b", "26b-a4b", "31b")


def _family(name: str) -> dict:
    pair = registry.resolve(name)
    drafter = pair.drafter_config()
    drafter["text_config"] = {**_TEXT, **drafter["text_config"]}
    return {"target": {**_TEXT, **pair.target_config()}, "drafter": drafter, "estimated": pair.estimated}


def family_config(name_or_config: str | Path | dict) -> dict:
    """A family name, a JSON file or a dict -> {"target": config, "drafter": config | None}.

    A file or dict holds either {"target": ..., "drafter": ...} or one Gemma 4 target config
    (then there is no drafter: plain decoding only).
    """
    if isinstance(name_or_config, dict):
        raw = name_or_config
    elif str(name_or_config).lower() in FAMILIES:
        return _family(str(name_or_config).lower())
    else:
        path = Path(name_or_config)
        if not path.is_file():
            raise UsageError(
                f"--synthetic must be one of {', '.join(FAMILIES)} or a config.json, not {str(name_or_config)!r}"
            )
        raw = read_config_file(path)  # an object whose number keys hold numbers, or one line naming it
    if not isinstance(raw, dict):
        raise SpecdecError("a synthetic config must be a JSON object")
    if "target" in raw:
        return {"target": copy.deepcopy(raw["target"]), "drafter": copy.deepcopy(raw.get("drafter"))}
    return {"target": copy.deepcopy(raw), "drafter": None}


# --- building ----------------------------------------------------------------------------
@dataclass
class BuildReport:
    """What building a synthetic bundle cost, and what it holds."""

    name: str
    bits: int
    group_size: int
    seconds: float
    peak_memory_bytes: int  # mlx's peak while building, above what was allocated before it
    target_bytes: int
    drafter_bytes: int
    target_parameters: int  # unquantised count
    drafter_parameters: int
    estimated_shapes: bool
    dtype: str  # of the unquantised parameters, the scales and the activations


def _random_into(module: nn.Module, shape: tuple, params, key: mx.array, dtype) -> int:
    """Fill `module`'s weight (and scales/biases when `params`) with a random [shape] matrix.

    Draws float32 rows a block at a time, quantises each block (quantise.quantise) and writes
    it into preallocated outputs, so the whole tensor never exists in floats. Returns the
    number of float elements.
    """
    rows, row_elems = shape[0], math.prod(shape[1:])
    step = max(1, BLOCK_BYTES // (4 * row_elems))
    bound = math.sqrt(3.0 / shape[-1])  # std 1/sqrt(fan_in)
    keys = mx.random.split(key, -(-rows // step))
    outs = None
    for i, start in enumerate(range(0, rows, step)):
        n = min(step, rows - start)
        w = mx.random.uniform(-bound, bound, (n, *shape[1:]), key=keys[i])
        if params:
            wq, scales, biases = quantise.quantise(w, params)
            parts = (wq, scales.astype(dtype), biases.astype(dtype))
        else:
            parts = (w.astype(dtype),)
        if outs is None:
            outs = [mx.zeros((rows, *p.shape[1:]), dtype=p.dtype) for p in parts]
        for out, p in zip(outs, parts):
            out[start : start + n] = p  # in place: the block is the only temporary
        mx.eval(outs)
    for name, out in zip(("weight", "scales", "biases"), outs):
        setattr(module, name, out)
    return rows * row_elems


_ONES = ("weight", "layer_scalar", "scale", "per_expert_scale")  # norms and scalars: init (ones) in `dtype`


def _materialise(model: nn.Module, per_module: dict, key: mx.array, dtype) -> int:
    """Random weights for every module of `model`, quantised as `per_module` (quantise.plan) says.

    Returns the number of float parameters (before quantisation).
    """
    nn.quantize(model, class_predicate=lambda path, m: per_module.get(path, False))  # lazy: nothing evaluated
    modules = model.named_modules()
    keys = mx.random.split(key, len(modules))
    count = 0
    for (path, module), k in zip(modules, keys):
        own = {name: v for name, v in module.items() if isinstance(v, mx.array)}
        if "scales" in own:  # a quantised Linear / Embedding / SwitchLinear
            p = per_module[path]
            shape = (*own["weight"].shape[:-1], own["weight"].shape[-1] * 32 // p["bits"])
            count += _random_into(module, shape, p, k, dtype)
        elif hasattr(module, "to_quantized") and "weight" in own:  # kept in floats
            count += _random_into(module, own["weight"].shape, False, k, dtype)
        else:
            for name in _ONES:
                if name in own:
                    setattr(module, name, own[name].astype(dtype))
                    count += own[name].size
            if "token_ordering" in own:  # the centroid head's vocabulary order: a permutation
                v = own["token_ordering"]
                module.token_ordering = mx.random.permutation(v.size, key=k).astype(v.dtype)
        mx.eval([v for v in module.values() if isinstance(v, mx.array)])  # this module only
    return count


def _nbytes(model: nn.Module) -> int:
    return sum(v.nbytes for _, v in tree_flatten(model.parameters()))


def build(
    name_or_config: str | Path | dict,
    bits: int = 4,
    group_size: int = 64,
    seed: int = 0,
    dtype=mx.bfloat16,
) -> tuple[Bundle, BuildReport]:
    """A synthetic bundle (random weights, `convert`'s quantisation) and what building it cost."""
    if bits not in quantise.BITS:
        raise UsageError(f"--bits must be one of {', '.join(map(str, quantise.BITS))}, not {bits}")
    if group_size not in quantise.GROUP_SIZES:
        raise UsageError(f"--group-size must be one of {', '.join(map(str, quantise.GROUP_SIZES))}, not {group_size}")
    fam = family_config(name_or_config)
    name = (
        name_or_config
        if isinstance(name_or_config, str) and name_or_config.lower() in FAMILIES
        else (Path(name_or_config).stem if isinstance(name_or_config, (str, Path)) else "custom")
    )
    estimated = bool(fam.get("estimated", False))
    t0 = time.perf_counter()
    mx.reset_peak_memory()
    before = mx.get_active_memory()  # arrays alive before the build are not its cost
    key_t, key_d = mx.random.split(mx.random.key(seed))
    try:  # a config file's missing keys are named with the file, as load() names config.json
        cfg = text_config(fam["target"])
        model = make_model(cfg)
        args = DrafterArgs.from_config(fam["drafter"]) if fam["drafter"] is not None else None
    except SpecdecError as e:
        if isinstance(name_or_config, dict) or str(name_or_config).lower() in FAMILIES:
            raise
        raise SpecdecError(f"{name_or_config}: {e}") from None
    target_q = quantise.plan(model, quantise.TARGET_RULES, bits, group_size)
    n_target = _materialise(model, target_q, key_t, dtype)
    entry = quantise.config_entry(target_q, bits, group_size)
    if entry:
        cfg["quantization"] = entry
    target = Target(model, cfg)
    drafter, n_draft = None, 0
    if args is not None:
        check_pair(cfg, args, where=f"synthetic {name} drafter")
        drafter = Drafter(args)
        draft_q = quantise.plan(drafter, quantise.DRAFTER_RULES, bits, group_size)
        n_draft = _materialise(drafter, draft_q, key_d, dtype)
    report = BuildReport(
        name=str(name),
        bits=bits,
        group_size=group_size,
        seconds=time.perf_counter() - t0,
        peak_memory_bytes=int(mx.get_peak_memory() - before),
        target_bytes=_nbytes(model),
        drafter_bytes=_nbytes(drafter) if drafter is not None else 0,
        target_parameters=n_target,
        drafter_parameters=n_draft,
        estimated_shapes=estimated,
        dtype=str(dtype).removeprefix("mlx.core."),
    )
    label = f"synthetic-{name}-{bits}bit" if bits < 16 else f"synthetic-{name}"
    return Bundle(target, drafter, IdTokenizer(), label, None), report


def synthetic_bundle(name_or_config, bits: int = 4, group_size: int = 64, seed: int = 0, dtype=mx.bfloat16) -> Bundle:
    """`build` without the report."""
    return build(name_or_config, bits, group_size, seed, dtype)[0]


def random_prompt(vocab: int, n: int, seed: int = 0) -> list[int]:
    """n random token ids (the synthetic bench needs no tokenizer); ids 0..9 (specials) avoided."""
    rng = random.Random(seed)
    return [rng.randrange(10, vocab) for _ in range(n)]


class _NoText:
    """Detokenizer of a synthetic bundle: tokens have no text."""

    last_segment = ""

    def reset(self):
        pass

    def add_token(self, token):
        pass

    def finalize(self):
        pass


class IdTokenizer:
    """Stands in for a tokenizer: no end-of-sequence ids, no text (runs go the full length)."""

    def __init__(self):
        self.eos_token_ids: list[int] = []

    @property
    def detokenizer(self):
        return _NoText()

    def encode(self, text):
        raise SpecdecError("a synthetic bundle has no tokenizer; give token ids")

    apply_chat_template = encode


# --- oracle acceptance -------------------------------------------------------------------
def parse_acceptance(text: str) -> list[float]:
    """ "0.8" -> [0.8]; "0.92,0.79,0.68,0.59" -> per draft position (the last one repeats)."""
    try:
        rates = [float(t) for t in str(text).replace(" ", "").split(",") if t]
    except ValueError:
        rates = []
    if not rates or any(not 0.0 <= a <= 1.0 for a in rates):
        raise UsageError(f"--acceptance must be rates in 0..1, one or comma-separated per position, not {text!r}")
    return rates


class OracleDrafter:
    """A drafter whose proposals are accepted with given per-position probabilities (greedy only).

    The real drafter runs every step and its logits are still evaluated (the output depends on
    their maximum), so its cost is paid in full. Its proposal at draft position i of a round at
    position p is then replaced: with probability acceptance[i-1] (conditional on drafts
    1..i-1; the last rate repeats) by `tokens[p + i]`, the target's own greedy continuation
    from a plain run of the same prompt, otherwise by another token, which greedy verification
    rejects. Greedy output therefore still equals plain output. The choice is made on the host
    (a seeded RNG, host ints only): no extra sync. A round starts whenever the hidden state
    passed in is not the one this wrapper returned last (the loop chains them within a round).
    """

    def __init__(self, drafter, tokens: Sequence[int], acceptance: Sequence[float], seed: int = 0):
        self.drafter = drafter
        self.tokens = [int(t) for t in tokens]
        self.acceptance = list(acceptance)
        self.rng = random.Random(seed)
        self._ids = mx.arange(drafter.vocab_size)
        self._last_hidden = None
        self._step = 0

    def __getattr__(self, name):  # everything else is the real drafter's
        return getattr(self.__dict__["drafter"], name)

    def __call__(self, token_embed, hidden, shared_kv, position):
        logits, nxt = self.drafter(token_embed, hidden, shared_kv, position)
        self._step = self._step + 1 if hidden is self._last_hidden else 1
        self._last_hidden = nxt
        if not isinstance(position, int) or position + self._step >= len(self.tokens):
            return logits, nxt  # outside the known continuation: the drafter's own proposal
        at = position + self._step  # the sequence index this draft proposes a token for
        right = self.tokens[at]
        a = self.acceptance[min(self._step, len(self.acceptance)) - 1]
        token = right if self.rng.random() < a else (right + 1) % self.drafter.vocab_size
        # One-hot at `token`, plus 0 x the real logits' maximum: same argmax, real cost kept.
        forced = (self._ids == token).astype(logits.dtype) + 0 * logits.max(axis=-1, keepdims=True)
        return forced, nxt
