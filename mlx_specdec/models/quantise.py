"""Which modules are quantised, at what bits, and how that is written into config.json.

The per-module choice is a rule per module path: follow the requested `--bits`, keep at least
some number of bits, or keep the checkpoint's floats. The defaults below were chosen by
measurement (`scripts/measure/measure_quantisation.py`); every other quantisable module (attention and
MLP projections, the per-layer projections) follows `--bits`. Modules that are not
`nn.Linear`/`nn.Embedding` (norms, `layer_scalar`, `masked_embedding.token_ordering`) have no
`to_quantized` and are never quantised.

The config format is mlx-lm's (`mlx_lm.utils.quantize_model` / `load_model`):
`"quantization": {"group_size": G, "bits": B, "mode": "affine", "<path>": {...} | false}`, where a
path entry is written for every module that differs from the top-level setting; a module without
an entry is quantised at the top-level setting if its `.scales` are in the weights.
"""

from __future__ import annotations

import fnmatch

import mlx.core as mx
import mlx.nn as nn

FOLLOW = "bits"  # the requested --bits
FLOAT = None  # keep the checkpoint's floats

# Measured with scripts/measure/measure_quantisation.py on the fixtures (tiny random-weight Gemma 4 pair,
# --bits 4 --group-size 32, 4 prompts x 40 greedy tokens; KL is mean KL(float || quantised)):
#
# Target. Quantised alone at 4 bits (rest float), the tied embedding/head does the most damage
# (KL 1.59, top-1 0.39), then attention (1.54), MLP (0.70), per-layer projections (0.60); the
# per-layer embeddings (PLE) the least (0.15, top-1 0.79). With everything else at 4 bits, the
# head at 8 bits lowers KL 2.41 -> 1.91 (top-1 0.27 -> 0.35) for +4% size; the PLE at 8 bits or
# float changes nothing (2.44). So: tied embedding/head at >= 8 bits; the PLE follows --bits (on
# E2B/E4B it is the largest tensor, 2.3B/2.8B parameters, and only one row per token is read).
# Cost of the 8-bit head: E2B +0.2 GB, and the head's weight read per token doubles on Metal.
# MoE routers (26B-A4B) stay at >= 8 bits, as mlx-lm's gemma4_text `quant_predicate` keeps them:
# a misrouted token takes the wrong experts.
TARGET_RULES: dict[str, object] = {"model.embed_tokens": 8, "model.layers.*.router.proj": 8}
# Drafter (argmax agreement with the float drafter on the same inputs, and KL). Alone at 4 bits,
# the pre/post projections hurt most per parameter (agree 0.58, KL 2.75), then attention (0.50)
# and MLP (0.52), centroids (0.91, KL 0.96); the head (embed_tokens) least (0.85, KL 0.02). All
# at 4 bits: agree 0.37; all at 8 bits: 0.91. The drafter's body (layers, projections,
# centroids) is ~10M parameters on E2B/E4B, so 8 bits there costs ~5 MB; its head is ~67M and
# only the top clusters' rows are read per step, so it follows --bits. These defaults: agree
# 0.83, KL 0.50, drafter 91 KB (all 4-bit: 66 KB, all 8-bit: 100 KB). Random fixtures accept
# nothing, so accepted-per-round cannot rank choices yet; rerun on a trained pair.
DRAFTER_RULES: dict[str, object] = {"model.embed_tokens": FOLLOW, "*": 8}

GROUP_SIZES = (32, 64, 128)
BITS = (4, 8, 16)


def plan(model: nn.Module, rules: dict, bits: int, group_size: int) -> dict[str, dict | bool]:
    """Every quantisable module path of `model` -> {"group_size", "bits"} or False.

    `rules` maps a module path or an fnmatch pattern of paths (`model.layers.*.mlp.*`) to FOLLOW,
    FLOAT or a bit floor; the first matching rule applies, paths matching none follow `bits`.
    `bits` 16 means no quantisation. Like mlx-lm, a module whose input width is not a multiple
    of `group_size` stays in floats.
    """
    out: dict[str, dict | bool] = {}
    for path, module in model.named_modules():
        if not hasattr(module, "to_quantized"):
            continue
        rule = next((r for pattern, r in rules.items() if fnmatch.fnmatchcase(path, pattern)), FOLLOW)
        if bits >= 16 or rule is FLOAT or module.weight.shape[-1] % group_size:
            out[path] = False
        else:
            out[path] = {"group_size": group_size, "bits": bits if rule == FOLLOW else max(bits, int(rule))}
    return out


def config_entry(per_module: dict[str, dict | bool], bits: int, group_size: int) -> dict | None:
    """mlx-lm's `quantization` dict for `per_module`, or None when nothing is quantised."""
    if not any(per_module.values()):
        return None
    default = {"group_size": group_size, "bits": bits}
    entry: dict = {"group_size": group_size, "bits": bits, "mode": "affine"}
    entry.update({path: p for path, p in sorted(per_module.items()) if p != default})
    return entry


def quantise(weight: mx.array, params: dict, chunk_bytes: int = 256 << 20) -> tuple[mx.array, mx.array, mx.array]:
    """weight [rows, cols] -> (packed uint32 [rows, cols*bits/32], scales, biases [rows, cols/group]).

    Quantisation groups run along rows, so large tensors are quantised a block of rows at a
    time: the temporaries stay near `chunk_bytes` instead of a multiple of the whole tensor.
    """
    rows = weight.shape[0]
    step = max(1, chunk_bytes // max(1, weight.nbytes // rows))
    parts = []
    for start in range(0, rows, step):
        part = mx.quantize(weight[start : start + step], group_size=params["group_size"], bits=params["bits"])
        mx.eval(part)  # bound the temporaries to one block
        parts.append(part)
    if len(parts) == 1:
        return parts[0]
    return tuple(mx.concatenate([p[i] for p in parts]) for i in range(3))


def quantised_bytes(shape: tuple, itemsize: int, params: dict | bool) -> int:
    """Bytes a tensor of `shape` takes once written with `params` (False: unchanged)."""
    count = 1
    for d in shape:
        count *= d
    if not params:
        return count * itemsize
    groups = count // params["group_size"]
    return count * params["bits"] // 8 + 2 * groups * itemsize


def float_dtype(layer: nn.Module) -> mx.Dtype:
    """The floating dtype a Linear or Embedding computes in, quantised or not (a quantised layer's
    `weight` is packed uint32: its scales carry the dtype)."""
    return layer.scales.dtype if "scales" in layer else layer.weight.dtype


def quantise_as_stored(model: nn.Module, weights: dict, mode: str = "affine") -> int:
    """Quantise every module of `model` whose `.scales` are in `weights` (module-path names), each
    with the group size and bits its stored tensors show: a packed weight [out, in * bits / 32]
    and scales [out, in / group]. So a tower quantised by mlx-vlm (no per-module config entries
    for it, or none that name our paths) loads as stored. Returns how many modules it quantised;
    shapes that fit no quantisation raise ValueError."""
    count = 0

    def predicate(path: str, module: nn.Module):
        nonlocal count
        scales, packed = weights.get(f"{path}.scales"), weights.get(f"{path}.weight")
        if scales is None or packed is None or not hasattr(module, "to_quantized"):
            return False
        cols = module.weight.shape[-1]
        groups, words = scales.shape[-1], packed.shape[-1]
        if groups == 0 or cols % groups or (words * 32) % cols:
            raise ValueError(f"{path}: stored shapes {tuple(packed.shape)} / {tuple(scales.shape)} fit no quantisation")
        count += 1
        return {"group_size": cols // groups, "bits": words * 32 // cols, "mode": mode}

    nn.quantize(model, class_predicate=predicate)
    return count


def source_quantization(config: dict) -> dict | None:
    """An already-quantised checkpoint's `quantization` entry (mlx-lm and mlx-vlm write it at the
    top level of config.json or under text_config), or None."""
    return config.get("quantization") or (config.get("text_config") or {}).get("quantization") or None


def quantisation_mode(config: dict) -> str:
    """The quantisation mode a checkpoint's config.json names, "affine" when it names none."""
    q = source_quantization(config) or {}
    return q.get("mode", "affine") if isinstance(q, dict) else "affine"
