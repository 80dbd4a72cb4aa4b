"""Folders -> (target, drafter, tokenizer), with pairing checks.

Accepted inputs:
* a bundle made by `specdec convert`: `BUNDLE/target/` (also loadable by `mlx_lm.load`),
  `BUNDLE/drafter/`, `BUNDLE/manifest.json`; the tokenizer lives in `BUNDLE/target/`;
* Hugging Face-format folders: a Gemma 4 target (`gemma4_text` or multimodal `gemma4`) and a
  `gemma4_assistant` drafter, given separately.

All file IO for models lives here, in `files.py` (the checked readers) and in `weights_convert/`.
Every failure is a `SpecdecError` whose one line names the file and the problem.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import mlx.core as mx
import mlx.nn as nn

from .errors import SpecdecError, UsageError
from .files import as_path, check_regular, read_config, read_eos_ids, read_weights
from .models.drafter import Drafter, DrafterArgs, drafter_quantization
from .models.target import Target, head_dim, kv_heads, make_model, text_config, text_quantization, text_weights
from .numerics import Verdict

DEMO_DIR = Path(__file__).parent / "demo"

PathLike = Union[str, Path]


# --- weights ------------------------------------------------------------------------------
def apply_quantization(model: nn.Module, config: dict, weights: dict) -> None:
    """Quantise the modules whose scales are in `weights`, as config["quantization"] says (mlx-lm's format)."""
    q = config.get("quantization")
    if not q:
        return

    def predicate(path, module):
        if path in q:
            return q[path]
        if not hasattr(module, "to_quantized") or f"{path}.scales" not in weights:
            return False
        return True

    nn.quantize(
        model, group_size=q["group_size"], bits=q["bits"], mode=q.get("mode", "affine"), class_predicate=predicate
    )


def _load_into(model: nn.Module, weights: dict, folder: Path, split=None) -> None:
    _check_dtypes(weights, folder)
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as e:
        msg = " ".join(str(e).split())
        raise SpecdecError(f"{folder}: weights do not match config.json ({msg[:300]})") from None
    if split is not None:
        weights.clear()  # the whole tensors: held here, each would stay in memory once read
        split(model)  # still lazy: only this process's slices are kept
    mx.eval(model.parameters())


def _check_dtypes(weights: dict, folder: Path) -> None:
    """Weights are floating point, except a quantised module's packed `.weight` (its `.scales` are
    there) and the drafter's `token_ordering`: integers elsewhere would run as numbers, silently wrong."""
    for name, value in weights.items():
        if mx.issubdtype(value.dtype, mx.floating) or name.endswith("token_ordering"):
            continue
        if name.endswith(".weight") and f"{name.removesuffix('.weight')}.scales" in weights:
            continue
        dtype = str(value.dtype).removeprefix("mlx.core.")
        raise SpecdecError(
            f"{folder}: {name} holds {dtype} values, not floating-point weights; re-convert or re-download it"
        )


# --- models ------------------------------------------------------------------------------
def load_target(folder: PathLike, split=None) -> Target:
    """Hugging Face or converted Gemma 4 target folder -> Target. `split(model, config)`: this
    process's part of the model when several share it (models/shard.py), applied before the
    weights are read."""
    folder = Path(folder)
    raw = read_config(folder)
    try:
        cfg = text_config(raw)
    except SpecdecError as e:
        raise SpecdecError(f"{folder / 'config.json'}: {e}") from None
    quantization = text_quantization(raw, cfg)  # an already-quantised source (mlx-lm or mlx-community)
    if quantization:
        cfg["quantization"] = quantization
    model = make_model(cfg)
    weights = {}
    for k, v in read_weights(folder).items():
        weights.update(text_weights(k, v, cfg, model))
    apply_quantization(model, cfg, weights)
    _load_into(model, weights, folder, split and (lambda m: split(m, cfg)))
    return Target(model, cfg)


def load_drafter(folder: PathLike, target_cfg: Optional[dict] = None) -> Drafter:
    """Hugging Face or converted `gemma4_assistant` folder -> Drafter (checked against target_cfg)."""
    folder = Path(folder)
    raw = read_config(folder)
    try:
        args = DrafterArgs.from_config(raw)
    except SpecdecError as e:
        raise SpecdecError(f"{folder / 'config.json'}: {e}") from None
    if target_cfg is not None:
        check_pair(target_cfg, args, where=str(folder))
    drafter = Drafter(args)
    weights = drafter.sanitize(read_weights(folder))
    apply_quantization(drafter, {"quantization": drafter_quantization(raw)}, weights)
    _load_into(drafter, weights, folder)
    if args.use_ordered_embeddings:  # ids past the vocabulary would index outside the head: a crash, not an error
        order = drafter.masked_embedding.token_ordering
        low, high = mx.min(order).item(), mx.max(order).item()
        if low < 0 or high >= drafter.vocab_size:
            bad = low if low < 0 else high
            raise SpecdecError(
                f"{folder}: masked_embedding.token_ordering holds token id {bad}, outside the vocabulary "
                f"(0-{drafter.vocab_size - 1}); re-convert or re-download the drafter"
            )
    return drafter


def check_pair(target_cfg: dict, drafter_args: DrafterArgs, where: str = "drafter") -> None:
    """Raise SpecdecError when the drafter cannot read this target's hidden states and K/V."""
    d = drafter_args.text
    checks = [
        ("backbone width", drafter_args.backbone_hidden_size, target_cfg["hidden_size"]),
        ("vocabulary size", d["vocab_size"], target_cfg["vocab_size"]),
        ("head_dim", d["head_dim"], target_cfg["head_dim"]),
        ("global_head_dim", d["global_head_dim"], target_cfg["global_head_dim"]),
        ("num_key_value_heads", d["num_key_value_heads"], target_cfg["num_key_value_heads"]),
        ("sliding_window", d["sliding_window"], target_cfg["sliding_window"]),
    ]
    # What the drafter's attention expects of each K/V it reads (k_eq_v full layers have their own head count).
    for t in sorted(set(d["layer_types"])):
        checks.append((f"{t} K/V heads", kv_heads(d, t), kv_heads(target_cfg, t)))
        checks.append((f"{t} head_dim", head_dim(d, t), head_dim(target_cfg, t)))
    for what, got, want in checks:
        if got != want:
            raise SpecdecError(
                f"{where}: does not fit the target: {what} is {got}, the target's is {want}; "
                "use the assistant made for this target"
            )
    needed = {t for t in d["layer_types"]}
    have = set(target_cfg["layer_types"][: target_cfg["num_hidden_layers"] - target_cfg.get("num_kv_shared_layers", 0)])
    if not needed <= have:
        raise SpecdecError(f"{where}: needs K/V of {sorted(needed - have)} layers the target does not have")


def load_tokenizer(folder: Path):
    """mlx-lm's TokenizerWrapper, with EOS ids from generation_config.json (end-of-turn included)."""
    from mlx_lm.tokenizer_utils import load as load_tok

    names = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
    if not any((folder / n).is_file() for n in names):
        raise SpecdecError(f"{folder}: no tokenizer files (tokenizer.json / tokenizer.model)")
    for name in (*names, "special_tokens_map.json", "chat_template.jinja"):  # a FIFO would block the read
        if os.path.lexists(folder / name):
            check_regular(folder / name, "re-download or re-convert it")
    eos = read_eos_ids(folder)
    try:
        return load_tok(folder, eos_token_ids=eos)
    except Exception as e:
        raise SpecdecError(f"{folder}: cannot load the tokenizer ({' '.join(str(e).split())[:200]})") from None


# --- bundles -----------------------------------------------------------------------------
@dataclass
class Bundle:
    """A target, its drafter (None for plain decoding only) and the tokenizer."""

    target: Target
    drafter: Optional[Drafter]
    tokenizer: object
    name: str
    path: Optional[Path] = None
    # This device's verdict on which pass widths round alike (probe.py), measured on first use.
    numerics: Optional[Verdict] = None
    # The target's folder, where media.py finds the vision tower; the tower once an image needed it.
    target_path: Optional[Path] = None
    vision: Optional[object] = None
    audio: Optional[object] = None  # (tower, spec) once a clip needed it (media_audio.py)


def is_bundle(folder: Path) -> bool:
    """A complete bundle: `convert` writes one into a temporary folder and renames it at the end,
    so `target/config.json` exists only once everything does."""
    return (folder / "target" / "config.json").is_file()


def load(
    model: Optional[PathLike] = None,
    *,
    target: Optional[PathLike] = None,
    drafter: Optional[PathLike] = None,
    demo: bool = False,
    split=None,
) -> Bundle:
    """Load a bundle folder, the demo pair, or a target folder (+ optional drafter folder).
    `split`: see `load_target` (None: the whole model, one process)."""
    model, target, drafter = as_path(model, "MODEL"), as_path(target, "--target"), as_path(drafter, "--drafter")
    if demo:
        if model is not None or target is not None or drafter is not None:
            raise UsageError("--demo is the bundled pair; give either --demo or a model, not both")
        if not is_bundle(DEMO_DIR):
            raise SpecdecError(f"{DEMO_DIR}: the demo pair is not installed; reinstall mlx-specdec")
        model = DEMO_DIR
    if model is not None and target is not None:
        raise UsageError("give either MODEL or --target/--drafter, not both")
    if model is not None:
        folder = model
        if is_bundle(folder):
            target = folder / "target"
            if drafter is None and (folder / "drafter").is_dir():
                drafter = folder / "drafter"
        else:
            target = folder
    if target is None:
        raise UsageError("no model given; pass MODEL, --target DIR or --demo")
    target_dir = target
    tgt = load_target(target_dir, split)
    drf = None
    if drafter is not None:
        drf = load_drafter(drafter, tgt.config)
    tokenizer = load_tokenizer(target_dir)
    name = Path(model).name if model is not None else target_dir.name
    return Bundle(tgt, drf, tokenizer, name, model, target_path=target_dir)
