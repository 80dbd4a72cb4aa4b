"""Model provisioning: MODEL as typed -> a bundle folder, converted on first use; memory fit.

`model_folder(model)` is what the front ends call (`load_model` loads what it returns): an
existing folder is used as it is; a known name or hub id (`e2b`, `gemma-4-26b-a4b`,
`google/gemma-4-31B-it`, an mlx-community repo; see `registry.resolve`) becomes the bundle
`cache_dir()/<bundle-name>`, converted by `weights_convert.convert` on first use (its
huggingface-hub progress bars show the download) and reused afterwards. `check_memory_fit` runs
before any conversion and on the folder returned. An mlx-community target name converts from
that pre-quantised repo (a quarter of the bf16 download; its weights copied through, never
quantised again) into a bundle of its own, beside the Google-converted one.

Invariants:
- A bundle in the cache counts as present only once complete (`target/config.json` exists):
  `convert` writes into a temporary folder and renames it at the end.
- Memory estimate = weights + KV cache at the requested context + a fixed allowance for
  activations, per machine: split over N machines (`mlx.launch`, distributed.py) each holds its
  part of the target's cut layers (`models.shard.tensor_cuts`, the same cuts the split makes:
  of an MoE target, 1/N of the experts), the rest of the weights whole, its K/V heads' share of
  the cache and the same allowance. The KV term follows what `cache.make_target_cache` allocates
  (one cache per non-KV-shared layer; sliding layers keep window + 1 + rewind slack plus one
  prefill chunk, full layers the context); a test checks it against the bytes those caches really
  hold. Pipeline parallel (`parallel`), the figure is the rank that needs most: its block of
  decoder layers (`models.pipeline.blocks`, the split's cuts) and their caches, the drafter's
  source layers' caches, the rest whole.
- Every failure is a one-line SpecdecError.
"""

from __future__ import annotations

import inspect
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from mlx_lm.models.cache import KVCache

from . import decode, registry
from .cache import PromptCache, SlidingKVCache
from .errors import SpecdecError, UsageError
from .files import cache_dir, shown, user_path
from .load import is_bundle
from .media import whole_image_tokens
from .media_memory import media_bytes, published_media_bytes
from .registry import Pair

DEFAULT_NAME = "e2b"
DEFAULT_BITS = 4
DEFAULT_BUNDLE = "gemma-4-E2B-it-4bit"
DEFAULT_TARGET = "google/gemma-4-E2B-it"
DEFAULT_DRAFTER = "google/gemma-4-E2B-it-assistant"

# Context the memory estimate assumes when no --max-context is given (the caches grow with the
# context, so a chat rarely needs the model's full 128K-256K).
DEFAULT_CONTEXT = 32768
# Activations (a verify pass, logits rows, prefill chunk), the drafter's workspace, allocator slack.
OVERHEAD_BYTES = 512 << 20
# What the caches allocate (read from the code that allocates, so the estimate follows it):
KV_STEP = max(KVCache.step, SlidingKVCache.step)  # both grow in steps of 256 entries
PREFILL_CHUNK = decode.PREFILL_CHUNK  # a sliding cache briefly holds one prefill chunk past its keep
MAX_REWIND = inspect.signature(PromptCache).parameters["max_rewind"].default  # 2 * MAX_DRAFT


# --- where bundles live ----------------------------------------------------------------------
def hub_reachable(timeout: float = 3.0) -> bool:
    """A cheap check before a multi-GB download; False when HF_HUB_OFFLINE is set."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy")):
        return True  # the proxy decides; the download reports its own errors
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def local_bundle(pair: Pair, bits: int = 4) -> Optional[Path]:
    """The converted bundle of `pair` at `bits` in the cache, or None."""
    folder = cache_dir() / pair.bundle_name(bits)
    return folder if is_bundle(folder) else None


def local_bundles(pair: Pair) -> dict[int, Path]:
    """{bits: folder} of every converted bundle of `pair` in the cache."""
    from .models.quantise import BITS

    return {b: f for b in BITS if (f := local_bundle(pair, b)) is not None}


def local_mlx_bundles(pair: Pair) -> dict[str, Path]:
    """{mlx-community repo: folder} of every bundle of `pair` in the cache converted from an MLX repo."""
    folders = {repo: cache_dir() / registry.mlx_bundle_name(repo) for repo in pair.mlx_repos}
    return {repo: f for repo, f in folders.items() if is_bundle(f)}


# --- MODEL -> folder -------------------------------------------------------------------------
def ensure_bundle(
    name: str,
    bits: Optional[int] = None,
    *,
    max_context: Optional[int] = None,
    convert_fn=None,
    reachable: Callable[[], bool] = hub_reachable,
    log: Callable[[str], None] = lambda line: None,
    available: Optional[int] = None,
    machines: Optional[int] = None,
    parallel: str = "tensor",
) -> Path:
    """The cached bundle of the pair `name` names, converting it on first use. Raises SpecdecError.

    `bits` (None: 4) applies to Google's bf16 repos. An mlx-community target name converts from that
    repo instead (its quantised weights copied through, at the bits its name states; a different
    `bits` is said in one `log` line and not applied), with the pair's mlx-community drafter where
    the registry has one, into a bundle of its own (`registry.mlx_bundle_name`).
    Before converting: the memory fit on each of `machines` (see `check_memory_fit`), then whether the
    hub can be reached.
    `convert_fn` defaults to `weights_convert.convert`.
    """
    pair = registry.resolve(name)
    target, drafter, repo = pair.target, pair.drafter, registry.mlx_source(name)
    if repo is None:
        bits = DEFAULT_BITS if bits is None else bits
        folder = cache_dir() / pair.bundle_name(bits)
    else:
        own = registry.repo_bits(repo)
        if bits is not None and bits != own:
            log(f"--bits {bits} does not apply to {repo}: it is already {own}-bit; its weights are used as they are")
        bits, target, drafter = own, repo, pair.mlx_drafter or pair.drafter
        folder = cache_dir() / registry.mlx_bundle_name(repo)
    if is_bundle(folder):
        return folder
    check_memory_fit(pair, bits, max_context, available=available, label=target, machines=machines, parallel=parallel)
    if not reachable():
        raise SpecdecError(
            f"no {target} bundle in {shown(folder.parent)} and the Hugging Face hub is unreachable (offline?); "
            "try `specdec chat --demo`, or pass a converted bundle folder"
        )
    if convert_fn is None:
        from weights_convert import convert as convert_fn
    log(f"first run: converting {target} + {drafter} ({bits}-bit) into {folder}")
    convert_fn(target=target, drafter=drafter, output=folder, bits=bits, log=log)
    return folder


def default_bundle(*, convert_fn=None, reachable: Callable[[], bool] = hub_reachable, console=None) -> Path:
    """The cached converted Gemma 4 E2B bundle, converting it on first use."""

    def log(line: str) -> None:
        if console is not None:
            console.print(line, highlight=False, markup=False)

    return ensure_bundle(DEFAULT_NAME, 4, convert_fn=convert_fn, reachable=reachable, log=log)


def model_folder(
    model: Union[str, Path, None],
    *,
    bits: Optional[int] = None,
    max_context: Optional[int] = None,
    log: Callable[[str], None] = lambda line: None,
    available: Optional[int] = None,
    machines: Optional[int] = None,
    parallel: str = "tensor",
    media: tuple[bool, bool] = (False, False),
    **kwargs,
) -> Optional[Path]:
    """MODEL as typed -> a folder that fits this machine: an existing folder as it is; a known name
    or hub id -> its cached bundle (converted on first use; `bits` and `kwargs` as `ensure_bundle`).
    None stays None (the caller's default: --demo, --target, the chat's default bundle). A folder
    whose weights and KV cache at `max_context` do not fit `available` bytes (None: ask the machine)
    is refused (`check_memory_fit`, on each of `machines`; None: the `mlx.launch` group, which splits it).
    Raises SpecdecError."""
    if model is None:
        return None
    text = str(model)
    path = user_path(text, "MODEL")
    if path.is_dir():
        folder = path
    elif path.exists():
        raise UsageError(f"{text} is a file; pass a bundle folder or a model name (see `specdec models`)")
    elif registry.find(text) is None and (text.startswith((".", "~", os.sep)) or text.count("/") > 1):
        raise UsageError(f"{text}: no such folder")
    else:
        folder = ensure_bundle(
            text,
            bits,
            max_context=max_context,
            log=log,
            available=available,
            machines=machines,
            parallel=parallel,
            **kwargs,
        )
    check_memory_fit(
        folder, max_context=max_context, available=available, machines=machines, parallel=parallel, media=media
    )
    return folder


def load_model(
    model: Union[str, Path, None] = None,
    *,
    target: Optional[Path] = None,
    drafter: Optional[Path] = None,
    demo: bool = False,
    max_context: Optional[int] = None,
    log: Callable[[str], None] = lambda line: None,
    split=None,
    parallel: str = "tensor",
    media: tuple[bool, bool] = (False, False),
):
    """MODEL (through `model_folder`), --target/--drafter or --demo -> a loaded `load.Bundle`
    (`split`: this process's part of the target, distributed.py, split as `parallel` says; `media`:
    (images, clips) the run is given, whose towers the memory check counts)."""
    from .load import load

    # Unsplit (bench, check), every process holds the whole model, even under mlx.launch.
    machines = None if split else 1
    folder = model_folder(model, max_context=max_context, log=log, machines=machines, parallel=parallel, media=media)
    return load(folder, target=target, drafter=drafter, demo=demo, split=split)


# --- memory fit ------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a model needs at `context` tokens on each of `machines`: weights + KV cache + a fixed
    allowance (weights and KV cache: each machine's share), + the media towers when a run is given
    images or clips (media_memory.py; every process runs them whole)."""

    weights: int
    kv: int
    context: int
    overhead: int = OVERHEAD_BYTES
    machines: int = 1
    media: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.overhead + self.media


def machines_here() -> int:
    """Processes in the group `mlx.launch` started this one in; 1 outside it."""
    import mlx.core as mx

    return mx.distributed.init().size()


def _cuts(text_cfg: dict, machines: int) -> dict:
    """The tensor-parallel cuts of rank 0 of `machines` (every rank keeps as much); {} for one."""
    if machines == 1:
        return {}
    from .models.shard import tensor_cuts
    from .models.target import make_model, text_config

    cfg = text_config(text_cfg)
    return tensor_cuts(make_model(cfg), cfg, machines, 0)  # lazy: nothing is allocated


def kv_bytes(
    text_cfg: dict,
    context: int,
    itemsize: int = 2,
    max_rewind: int = MAX_REWIND,
    machines: int = 1,
    image_tokens: int = 0,
    layers: Optional[range] = None,
) -> int:
    """KV-cache bytes the target's caches hold at `context` tokens (batch 1), on each of `machines`.

    Per non-KV-shared layer, K and V of [kv_heads, entries, head_dim]: full layers hold the
    context (rounded up to the cache step), sliding layers at most window + 1 + `max_rewind`
    plus one prefill chunk (never more than the context) plus the step of room `SlidingKVCache`
    keeps after every write; that peak is reached once a full chunk arrives past the window.
    Full layers use `global_head_dim` and, with `attention_k_eq_v`, `num_global_key_value_heads`.
    k_eq_v shares the projection, not the cache: V (v_norm of the projection) and K (k_norm +
    RoPE) differ, so both are stored. Split over machines, a layer whose `k_proj` is cut caches
    only the heads it keeps (the drafter's source layers all). `layers`: pipeline parallel, this
    rank's block (`machines` is then ignored): its layers' caches and the drafter's source layers'.
    `image_tokens`: the longest image (soft tokens) a prompt may hold on a target whose images
    attend to themselves (26B-A4B, 31B): its prefill chunk holds the whole image, so an image longer
    than a chunk (budgets 560 and 1120; the default 280 is not) makes that chunk the sliding
    caches' bound.
    """
    from .models.target import kv_source_layers, text_config

    cfg = text_config(text_cfg)
    kept = None if layers is None else set(layers) | set(kv_source_layers(cfg).values())
    machines = machines if layers is None else 1
    cuts = _cuts(cfg, machines)
    steps = -(-context // KV_STEP) * KV_STEP
    chunk = max(PREFILL_CHUNK, image_tokens)
    sliding = min(context, cfg["sliding_window"] + 1 + max_rewind + chunk) + SlidingKVCache.step
    first_shared = cfg["num_hidden_layers"] - cfg.get("num_kv_shared_layers", 0)
    total = 0
    for i, layer_type in enumerate(cfg["layer_types"][:first_shared]):
        if kept is not None and i not in kept:
            continue  # its K/V are another rank's
        if layer_type == "full_attention":
            heads = cfg["num_key_value_heads"]
            if cfg.get("attention_k_eq_v") and cfg.get("num_global_key_value_heads"):
                heads = cfg["num_global_key_value_heads"]
            entries, dim = steps, cfg.get("global_head_dim") or cfg["head_dim"]
        else:
            heads, entries, dim = cfg["num_key_value_heads"], sliding, cfg["head_dim"]
        if (cut := cuts.get(f"model.layers.{i}.self_attn.k_proj")) is not None:
            heads = (cut.stop - cut.start) // dim
        total += 2 * heads * entries * dim * itemsize
    return total


Source = Union[Pair, str, Path, dict]


def estimate(
    source: Source,
    bits: int = 4,
    max_context: Optional[int] = None,
    *,
    group_size: int = 64,
    itemsize: int = 2,
    machines: int = 1,
    parallel: str = "tensor",
    media: tuple[bool, bool] = (False, False),
) -> MemoryEstimate:
    """Memory for `source` at `bits` and `max_context` (None: DEFAULT_CONTEXT, capped at the model's),
    on each of `machines` sharing it split as `parallel` says (pipeline: the rank that needs most),
    for a run given (images, clips) as `media` says (the towers load only then).
    Raises SpecdecError when it cannot be split so.

    `source`: a Pair or a known name (weights computed from its shapes at `bits`); a Hugging Face
    target config dict (weights computed likewise, drafter not counted); a folder (a bundle, or a
    target folder: weights are its safetensors files as they are, `bits` does not apply; split, less
    what the other machines hold of the cut layers, computed at the folder's own quantisation).
    """
    folder = user_path(source, "MODEL") if isinstance(source, (str, Path)) else None
    images = whole_image_tokens(folder) if folder is not None and folder.is_dir() else 0
    towers = 0
    if any(media) and folder is not None and folder.is_dir():
        towers = media_bytes(folder, *media)
    elif any(media) and isinstance(source, (Pair, str)):
        pair = source if isinstance(source, Pair) else registry.find(source)
        towers = (published_media_bytes(pair.name) or 0) if pair is not None else 0
    if machines > 1 and parallel == "pipeline":
        ranks, cfg = _pipeline_weights(source, bits, group_size, itemsize, machines)
        context = min(max_context or DEFAULT_CONTEXT, _max_context(cfg))
        weights, kv = max(
            ((w, kv_bytes(cfg, context, itemsize, layers=held, image_tokens=images)) for w, held in ranks), key=sum
        )
        return MemoryEstimate(weights, kv, context, machines=machines, media=towers)
    weights, cfg = _weights_and_config(source, bits, group_size, itemsize, machines)
    context = min(max_context or DEFAULT_CONTEXT, _max_context(cfg))
    kv = kv_bytes(cfg, context, itemsize, machines=machines, image_tokens=images)
    return MemoryEstimate(weights, kv, context, machines=machines, media=towers)


def available_memory() -> tuple[int, str]:
    """(bytes the machine can give a model, what that figure is)."""
    if sys.platform == "darwin":
        try:
            import mlx.core as mx

            info = mx.device_info() if hasattr(mx, "device_info") else mx.metal.device_info()
            size = int(info.get("max_recommended_working_set_size", 0))
            if size:
                return size, "Metal's recommended working set"
        except Exception:  # no Metal device: fall back to RAM
            pass
    import psutil

    return int(psutil.virtual_memory().total), "RAM"


def check_memory_fit(
    source: Source,
    bits: int = 4,
    max_context: Optional[int] = None,
    *,
    available: Optional[int] = None,
    label: Optional[str] = None,
    machines: Optional[int] = None,
    parallel: str = "tensor",
    media: tuple[bool, bool] = (False, False),
) -> MemoryEstimate:
    """The estimate when it fits; else SpecdecError with the numbers and what would fit.
    `media`: (images, clips) the run is given: their towers count (estimate).

    `available`: bytes the model may use on each machine; None asks this machine (`available_memory`).
    `label`: what the message calls the model (default: the pair's target, or the source as given).
    `machines`: how many share the model; None: this process's group (`machines_here`), split as
    `parallel` says.
    """
    if isinstance(source, str) and not user_path(source, "MODEL").is_dir():
        source = registry.resolve(source)
    machines = machines_here() if machines is None else machines
    need = estimate(source, bits, max_context, machines=machines, parallel=parallel, media=media)
    if available is None:
        available, what = available_memory()
    else:
        what = "available"
    if need.total <= available:
        return need
    label = label or (source.target if isinstance(source, Pair) else str(source))
    at = f" at {bits} bits" if not isinstance(source, Path) else ""
    hints = _what_fits(source, bits, need.context, available, machines, parallel)
    each = f" on each of {machines} machines" if machines > 1 else ""
    raise SpecdecError(
        f"{label}{at} with a {need.context}-token context needs {_gb(need.total)}{each} (weights {_gb(need.weights)}"
        f" + KV cache {_gb(need.kv)} + {_gb(need.overhead)} working memory"
        + (f" + image/audio towers {_gb(need.media)}" if need.media else "")
        + "), but this machine has "
        f"{_gb(available)} ({what})" + (f"; would fit: {', or '.join(hints)}" if hints else "; nothing smaller fits")
    )


def _what_fits(
    source: Source, bits: int, context: int, available: int, machines: int = 1, parallel: str = "tensor"
) -> list[str]:
    """What would fit instead: fewer bits, a shorter context, a smaller known model, more machines."""

    def fits(source, bits, context, machines=machines) -> bool:
        try:
            return estimate(source, bits, context, machines=machines, parallel=parallel).total <= available
        except SpecdecError:  # its heads or widths do not split that many ways
            return False

    hints = []
    if not isinstance(source, Path):
        for b in (8, 4):
            if b < bits and fits(source, b, context):
                hints.append(f"--bits {b}")
                break
    lo, hi = 0, context // 1024  # the longest context, in 1024-token units, that fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(source, bits, mid * 1024) else (lo, mid - 1)
    if lo:
        hints.append(f"--max-context {lo * 1024}")
    pair = source if isinstance(source, Pair) else registry.find(source) if isinstance(source, str) else None
    if pair is not None:
        size = sum(registry.bundle_bytes(pair, bits))
        smaller = [
            p.name
            for p in registry.PAIRS
            if not p.qat and sum(registry.bundle_bytes(p, bits)) < size and fits(p, bits, context)
        ]
        if smaller:
            hints.append(f"a smaller model ({', '.join(reversed(smaller))})")
    for more in (2, 4, 8):  # the fewest machines it fits on, split the same way (mlx.launch)
        if more > machines and fits(source, bits, context, more):
            hints.append(f"{more} such machines under mlx.launch")
            break
    return hints


def _pipeline_weights(
    source: Source, bits: int, group_size: int, itemsize: int, machines: int
) -> tuple[list[tuple[int, range]], dict]:
    """([(weight bytes, decoder layers) of each of `machines` split pipeline parallel], the target's
    config): the whole less the other ranks' layers, weighed at the files' quantisation (a folder)."""
    from .models.pipeline import blocks

    if isinstance(source, str) and not user_path(source, "MODEL").is_dir():
        source = registry.resolve(source)
    whole, cfg = _weights_and_config(source, bits, group_size, itemsize)
    quant = cfg.get("quantization") or {}
    if not isinstance(source, (Pair, dict)):  # a folder: as its files are
        bits, group_size = (quant["bits"], quant.get("group_size", 64)) if quant else (16, 64)
        itemsize = 4 if (cfg.get("dtype") or cfg.get("torch_dtype")) == "float32" else 2
    if isinstance(source, Pair) and itemsize == 2:
        _, layers = registry.bundle_layer_bytes(source, bits, group_size)
    else:
        _, layers = registry.layer_bytes(cfg, bits, group_size, itemsize)
    return [(whole - sum(layers) + sum(layers[a:b]), range(a, b)) for a, b in blocks(layers, machines)], cfg


def _weights_and_config(
    source: Source, bits: int, group_size: int, itemsize: int, machines: int = 1
) -> tuple[int, dict]:
    """(weight bytes on each of `machines`, the target's config)."""
    if isinstance(source, str) and not user_path(source, "MODEL").is_dir():
        source = registry.resolve(source)
    if isinstance(source, Pair):
        return sum(registry.bundle_bytes(source, bits, group_size, machines)), source.target_config()
    if isinstance(source, dict):
        return registry.config_bytes(source, None, bits, group_size, itemsize, machines)[0], source
    from .load import read_config
    from .models.target import text_config

    folder = user_path(source, "MODEL")
    target = folder / "target" if is_bundle(folder) else folder
    parts = [target] + ([folder / "drafter"] if (folder / "drafter").is_dir() else [])
    # Regular files only: loading names whatever else is there (a dangling link, a folder) in one line.
    weights = sum(f.stat().st_size for part in parts for f in part.glob("*.safetensors") if f.is_file())
    raw = read_config(target)
    try:  # range-checked here too, so that a bad value is named with its file
        text_config(raw)
    except SpecdecError as e:
        raise SpecdecError(f"{target / 'config.json'}: {e}") from None
    if machines > 1:  # less what the other machines hold of the cut layers, at the files' quantisation
        quant = raw.get("quantization") or {}
        b, g = (quant["bits"], quant.get("group_size", 64)) if quant else (16, 64)
        size = 4 if (raw.get("dtype") or raw.get("torch_dtype")) == "float32" else 2
        whole = registry.config_bytes(raw, None, b, g, size)[0]
        weights -= whole - registry.config_bytes(raw, None, b, g, size, machines)[0]
    return weights, raw


def _max_context(cfg: dict) -> int:
    text = cfg.get("text_config", cfg) if isinstance(cfg.get("text_config"), dict) else cfg
    return int(text.get("max_position_embeddings") or 131072)


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"  # decimal GB, as `specdec models` and the hub show sizes


# --- the list `specdec models` shows -----------------------------------------------------------
def model_rows(
    bits: int = 4, context: int = DEFAULT_CONTEXT, machines: int = 1, parallel: str = "tensor"
) -> list[dict]:
    """One dict per known pair: names, repos, sizes in bytes, memory at `context`, local bundles.

    Keys: name, target, drafter, kind, head, qat, mlx_repos, mlx_drafter, download_bytes, bundle_bytes (at
    `bits`), media_bytes (the image and audio towers, loaded on the first image or clip: estimates,
    media_memory.py; None: none counted), memory_bytes (weights + KV at `context` + working memory,
    on each of `machines`; None when the model cannot be split that many ways), split_error (why not,
    else None), machines, parallel, context, bits,
    local ({bits: folder} of the bundles converted from Google's repos), local_mlx ({mlx repo: folder} of
    those converted from one).
    """
    rows = []
    for pair in registry.PAIRS:
        try:
            memory, split_error = estimate(pair, bits, context, machines=machines, parallel=parallel).total, None
        except SpecdecError as e:
            memory, split_error = None, str(e)
        rows.append(
            {
                "name": pair.name,
                "target": pair.target,
                "drafter": pair.drafter,
                "kind": pair.kind,
                "head": pair.head,
                "qat": pair.qat,
                "mlx_repos": list(pair.mlx_repos),
                "mlx_drafter": pair.mlx_drafter,
                "download_bytes": pair.download_bytes,
                "bundle_bytes": sum(registry.bundle_bytes(pair, bits)),
                "memory_bytes": memory,
                "media_bytes": published_media_bytes(pair.name),
                "split_error": split_error,
                "machines": machines,
                "parallel": parallel,
                "context": context,
                "bits": bits,
                "local": {str(b): str(f) for b, f in local_bundles(pair).items()},
                "local_mlx": {repo: str(f) for repo, f in local_mlx_bundles(pair).items()},
            }
        )
    return rows
