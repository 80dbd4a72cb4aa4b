"""The numerics probe: on this device, which pass widths give a loaded target the same rows.

For a bundle, on the device it runs on, with a realistic token sequence after a context of
CONTEXT positions (W = MAX_DRAFT + 1):

  1. verify widths: one pass over tokens C..C+w-1 for every w = 1..W, from the same cache. Row j
     of width w is position C+j as a verify computes it.
  2. plain steps at width u: positions C..C+W-1 one at a time, each as a pass of u rows (the extra
     rows repeat the token and are dropped), as the loop's plain steps run.
  3. width w agrees with plain width u when each of its rows equals, bit for bit (logits and
     final-normed hidden state), the same position from step 2. `plain_width` is the first u in
     1..MAX_PLAIN_WIDTH that agrees with itself and with u + 1 (so that a draft pays);
     `max_draft_tokens` + 1 is the widest w such that every width u..w agrees.
  4. why: the distinct linear, expert and attention shapes of the model, each run on its own at
     every width against its rows computed one at a time, name the operations that differ.

About 2W + 2 passes when single rows agree (E2B: 20), cached per device, MLX version, bundle
config and dtype in the cache folder (`numerics/`), so a later load reads it instead.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections.abc import Callable
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.switch_layers import QuantizedSwitchLinear, SwitchGLU

from .blas import describe_blas
from .cache import PromptCache, rewind
from .errors import SpecdecError
from .files import cache_dir, write_atomically
from .models.quantise import float_dtype
from .numerics import Difference, Verdict
from .round import target_pass
from .settings import MAX_DRAFT

CONTEXT = 48  # positions in the cache before the probed ones
MAX_PLAIN_WIDTH = 4  # plain widths tried before giving up on an exact configuration
TEXT = (
    "The quick brown fox jumps over the lazy dog. Speculative decoding drafts a few tokens with a "
    "small model and checks them all in one pass of the large one, so the output is the same, only "
    "sooner. def mean(xs): return sum(xs) / len(xs)  # 3.14159, 2.71828; [1, 2, 3] -> {'a': 1}"
)


def device_name() -> str:
    """The device passes run on, as precisely as MLX tells (chip architecture on Metal; on the
    CPU, the BLAS that serves its matmuls: a preloaded OpenBLAS rounds attention's 4+-row passes
    differently from the wheel's reference BLAS, so a verdict holds for one BLAS only)."""
    device = mx.default_device()
    if device.type == mx.gpu and mx.metal.is_available():
        info = mx.metal.device_info()
        return f"{info.get('device_name', 'Metal GPU')} ({info.get('architecture', '?')})"
    if device.type == mx.gpu:
        return "GPU (CUDA)"
    return f"CPU ({platform.machine()}, {describe_blas().split(' (')[0]})"


def probe_ids(bundle, n: int) -> list[int]:
    """n realistic token ids: the tokenizer's encoding of TEXT, repeated; ids mod the vocabulary."""
    ids: list[int] = []
    try:
        ids = list(bundle.tokenizer.encode(TEXT))
    except Exception:  # noqa: BLE001 - a tokenizer that cannot encode: fall back to a fixed sequence
        ids = []
    if not ids:
        ids = [(37 * i + 11) for i in range(64)]
    ids = [t % bundle.target.vocab_size for t in ids]
    return (ids * (n // len(ids) + 1))[:n]


def _rows_equal(a: tuple[mx.array, mx.array], b: tuple[mx.array, mx.array]) -> bool:
    return all(bool(mx.array_equal(x, y)) for x, y in zip(a, b))


def _verify_rows(target, pc: PromptCache, ids: list[int], width: int, timings: list) -> list:
    """Rows (logits [V], hidden [H]) of one pass over ids[:width] from the cache, which it leaves
    as it was."""
    t = time.perf_counter()
    logits, hidden = target(mx.array(ids[:width])[None], pc.cache)
    mx.eval(logits, hidden)
    timings.append(time.perf_counter() - t)
    rewind(pc.cache, width)
    return [(logits[0, j], hidden[0, j]) for j in range(width)]


def _plain_rows(target, pc: PromptCache, ids: list[int], width: int) -> list:
    """Rows of plain steps over ids, one position at a time, each a pass of `width` rows."""
    rows = []
    for t in ids:
        logits, hidden = target_pass(target, pc, mx.array([[t]]), width)
        mx.eval(logits, hidden)
        rows.append((logits[0, 0], hidden[0, 0]))
    rewind(pc.cache, len(ids))
    return rows


def measure(bundle, context: int = CONTEXT, max_width: int = MAX_DRAFT + 1) -> Verdict:
    """Probe `bundle`'s target on this device -> Verdict (see the module docstring)."""
    t0 = time.perf_counter()
    target = bundle.target
    ids = probe_ids(bundle, context + max_width)
    pc = PromptCache(bundle, max_rewind=2 * max_width + MAX_PLAIN_WIDTH)
    target(mx.array(ids[:context])[None], pc.cache)
    mx.eval([c.state for c in pc.cache])
    probed, timings = ids[context:], []
    verify = {w: _verify_rows(target, pc, probed, w, timings) for w in range(1, max_width + 1)}

    def agrees(w: int, plain: list) -> bool:
        return all(_rows_equal(verify[w][j], plain[j]) for j in range(w))

    plain_width, top, agree = 0, 0, []
    for u in range(1, MAX_PLAIN_WIDTH + 1):
        plain = _plain_rows(target, pc, probed, u)
        agree = [w for w in range(1, max_width + 1) if agrees(w, plain)]
        top = u - 1
        while top + 1 in agree:
            top += 1
        if top > u or (u > 1 and top == u):  # width u agrees with itself, and a draft fits
            plain_width = u
            break
    exact = plain_width > 0
    return Verdict(
        exact=exact,
        plain_width=plain_width if exact else 1,
        max_draft_tokens=top - 1 if exact else 0,
        agree=agree if exact else [],
        differs=[] if exact and plain_width == 1 and top == max_width else op_differences(target, max_width),
        device=device_name(),
        mlx=mx.__version__,
        dtype=_dtype(target),
        bundle=bundle.name,
        seconds=time.perf_counter() - t0,
        pass_seconds=timings,
    )


def _activation_dtype(target):
    return float_dtype(target.model.model.embed_tokens)


def _dtype(target) -> str:
    q = target.config.get("quantization")
    base = str(_activation_dtype(target)).replace("mlx.core.", "")
    return f"{q['bits']}-bit, {base}" if q else base


# --- why: the model's operations one by one -------------------------------------------------
def _differing_widths(run: Callable[[int], list[mx.array]], max_width: int) -> list[int]:
    """run(w) -> the w rows of a width-w computation; the widths whose rows differ from width 1
    computations of the same rows (run(1) gives row 0; rows j > 0 alone come from `run` itself,
    which takes the row offset into account)."""
    singles = run(-1)
    return [w for w in range(2, max_width + 1) if not all(mx.array_equal(a, b) for a, b in zip(run(w), singles))]


def _linear_run(module: nn.Module, dims: int, max_width: int, dtype) -> Callable[[int], list[mx.array]]:
    x = mx.random.normal((1, max_width, dims), key=mx.random.key(0)).astype(dtype)

    def run(w: int) -> list[mx.array]:
        if w < 0:  # each row alone
            outs = [module(x[:, j : j + 1])[0, 0] for j in range(max_width)]
        else:
            out = module(x[:, :w])
            outs = [out[0, j] for j in range(w)]
        mx.eval(outs)
        return outs

    return run


def _attention_run(heads: int, kv_heads: int, dim: int, keys: int, max_width: int, dtype):
    k0, k1, k2 = mx.random.split(mx.random.key(1), 3)
    q = mx.random.normal((1, heads, max_width, dim), key=k0).astype(dtype)
    k = mx.random.normal((1, kv_heads, keys + max_width, dim), key=k1).astype(dtype)
    v = mx.random.normal((1, kv_heads, keys + max_width, dim), key=k2).astype(dtype)
    sdpa = mx.fast.scaled_dot_product_attention

    def run(w: int) -> list[mx.array]:
        if w < 0:  # query row j alone, over keys 0..keys+j
            outs = [
                sdpa(q[:, :, j : j + 1], k[:, :, : keys + j + 1], v[:, :, : keys + j + 1], scale=1.0)[0, :, 0]
                for j in range(max_width)
            ]
        else:
            out = sdpa(q[:, :, :w], k[:, :, : keys + w], v[:, :, : keys + w], scale=1.0, mask="causal")
            outs = [out[0, :, j] for j in range(w)]
        mx.eval(outs)
        return outs

    return run


def _experts_run(glu, dims: int, max_width: int, dtype) -> Callable[[int], list[mx.array]]:
    """A SwitchGLU (MoE experts: gather_qmm / gather_mm) with fixed top-k indices per row."""
    x = mx.random.normal((1, max_width, dims), key=mx.random.key(2)).astype(dtype)
    experts = glu.gate_proj.num_experts
    top = min(8, experts)
    idx = (mx.arange(max_width * top).reshape(1, max_width, top) * 7) % experts

    def run(w: int) -> list[mx.array]:
        if w < 0:
            outs = [glu(x[:, j : j + 1], idx[:, j : j + 1])[0, 0] for j in range(max_width)]
        else:
            out = glu(x[:, :w], idx[:, :w])
            outs = [out[0, j] for j in range(w)]
        mx.eval(outs)
        return outs

    return run


def _linear_shape(module) -> Optional[tuple[str, str, int]]:
    """(op, shape, input width) of a linear-like module, or None."""
    if isinstance(module, nn.QuantizedLinear):
        out, dims = module.weight.shape[0], module.scales.shape[1] * module.group_size
        return "quantized_matmul", f"{dims}->{out} {module.bits}-bit group {module.group_size}", dims
    if isinstance(module, nn.Linear):
        out, dims = module.weight.shape
        return "matmul", f"{dims}->{out} {module.weight.dtype}".replace("mlx.core.", ""), dims
    return None


def op_differences(target, max_width: int = MAX_DRAFT + 1, keys: int = CONTEXT) -> list[Difference]:
    """Run each distinct linear and attention shape of the target alone at every width ->
    the operations whose rows depend on the width."""
    model, out, seen = target.model, [], set()
    dtype = _activation_dtype(target)
    for _, module in model.named_modules():
        shape = _linear_shape(module)
        if shape is None or shape[:2] in seen:
            continue
        seen.add(shape[:2])
        differ = _differing_widths(_linear_run(module, shape[2], max_width, dtype), max_width)
        if differ:
            out.append(Difference(shape[0], shape[1], differ))
    for _, module in model.named_modules():
        if isinstance(module, SwitchGLU):
            proj = module.gate_proj
            op = "gather_qmm" if isinstance(proj, QuantizedSwitchLinear) else "gather_mm"
            shape = f"{proj.num_experts} experts {proj.input_dims}->{proj.output_dims}"
            if (op, shape) in seen:
                continue
            seen.add((op, shape))
            differ = _differing_widths(_experts_run(module, proj.input_dims, max_width, dtype), max_width)
            if differ:
                out.append(Difference(op, shape, differ))
    head = model.model.embed_tokens
    if isinstance(head, nn.QuantizedEmbedding):  # the tied head is a quantised matmul too
        dims = head.scales.shape[1] * head.group_size
        differ = _differing_widths(_linear_run(head.as_linear, dims, max_width, dtype), max_width)
        if differ:
            shape = f"{dims}->{head.num_embeddings} {head.bits}-bit group {head.group_size} (tied head)"
            out.append(Difference("quantized_matmul", shape, differ))
    cfg = target.config
    for layer_type in sorted(set(cfg["layer_types"])):
        glob = layer_type == "full_attention"
        heads = cfg["num_attention_heads"]
        kv = cfg.get("num_global_key_value_heads") if glob and cfg.get("num_global_key_value_heads") else None
        kv = kv or cfg["num_key_value_heads"]
        dim = cfg.get("global_head_dim") if glob and cfg.get("global_head_dim") else cfg["head_dim"]
        differ = _differing_widths(_attention_run(heads, kv, dim, keys, max_width, dtype), max_width)
        if differ:
            out.append(Difference("attention", f"{heads} heads / {kv} KV heads x {dim} ({layer_type})", differ))
    return out


# --- the verdict, cached per device, MLX version, bundle config and dtype --------------------
def cache_key(bundle) -> str:
    config = json.dumps(bundle.target.config, sort_keys=True, default=str)
    text = "|".join([device_name(), mx.__version__, _dtype(bundle.target), config])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def verdict(bundle, fresh: bool = False) -> Verdict:
    """The bundle's verdict on this device: kept on the bundle, read from the cache folder, or
    measured (`fresh`: measured again) and cached. A cache folder that cannot be written is not an
    error: the verdict is then measured again next time."""
    if bundle.numerics is not None and not fresh:
        return bundle.numerics
    path = cache_dir() / "numerics" / f"{cache_key(bundle)}.json"
    found = None
    if not fresh:
        try:
            found = Verdict.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError, KeyError):
            found = None
    if found is None:
        found = measure(bundle)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, lambda f: f.write(json.dumps(found.to_json(), indent=1).encode()))
        except (OSError, SpecdecError):
            pass
    bundle.numerics = found
    return found


def cached_verdicts() -> dict[str, Verdict]:
    """The verdicts cached for this device and MLX version, by bundle name (the newest per name)."""
    out: dict[str, tuple[float, Verdict]] = {}
    device = device_name()
    for path in sorted((cache_dir() / "numerics").glob("*.json")):
        try:
            v = Verdict.from_json(json.loads(path.read_text()))
            when = path.stat().st_mtime
        except (OSError, ValueError, TypeError, KeyError):
            continue
        if v.device == device and v.mlx == mx.__version__ and when >= out.get(v.bundle, (0.0, None))[0]:
            out[v.bundle] = (when, v)
    return {name: v for name, (_, v) in out.items()}
