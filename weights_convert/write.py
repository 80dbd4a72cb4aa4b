"""Stream a safetensors checkpoint into renamed, quantised safetensors shards.

Invariants:
* One source tensor may become several outputs (the 26B's fused `experts.gate_up_proj` becomes
  `switch_glu.gate_proj` and `up_proj`): `Sanitize` returns a list, and each source tensor is
  read and sanitized once for all of its outputs.
* A module whose `.scales` are already in the source (an MLX-quantised checkpoint) is copied
  through with the source's quantisation; it is never quantised again.
* `plan_tensors` returns, with the tensors, exactly what will be written per module (params or
  False): the config's `quantization` and the manifest are made from it, nothing else.
* At most one source tensor is materialised at a time (`mx.load` is lazy: a tensor is read from
  disk when evaluated), and the written shard is flushed once it reaches `shard_bytes`, so peak
  memory is about the largest tensor plus one output shard, whatever the checkpoint size.
Shards are named like mlx-lm's `save_model` (`model.safetensors` or
`model-0000i-of-0000n.safetensors`, with `model.safetensors.index.json`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import mlx.core as mx

from mlx_specdec.load import weight_files

from .quantise import quantise, quantised_bytes

SHARD_BYTES = 2 << 30


@dataclass(frozen=True)
class Tensor:
    """One tensor to write: where it is read from, its new name, and how it is quantised."""

    file: Path
    key: str
    name: str
    shape: tuple
    itemsize: int
    params: dict | bool

    @property
    def out_bytes(self) -> int:
        return quantised_bytes(self.shape, self.itemsize, self.params)


# (source name, lazy array) -> [(new name, array), ...]: empty to drop the tensor, several to split it.
Sanitize = Callable[[str, mx.array], "list[tuple[str, mx.array]]"]
QUANT_SUFFIXES = (".weight", ".scales", ".biases")


def plan_tensors(
    folder: Path, sanitize: Sanitize, per_module: dict[str, dict | bool], source_quant: dict | None = None
) -> tuple[list[Tensor], dict[str, dict | bool]]:
    """Every tensor that `sanitize` makes of the checkpoint in `folder`, with its quantisation.

    Reads only the safetensors headers. A `<module>.weight` of a quantisable module gets that
    module's params from `per_module`; a module already quantised in the source (its `.scales`
    are there) is copied with the params `source_quant` (mlx-lm's format, our names) gives it;
    everything else is copied as it is. Returns (tensors, {module: params as written or False}).
    """
    found = []
    for file in weight_files(folder):
        for key, array in mx.load(str(file)).items():  # lazy: headers only
            found += [(file, key, name, out) for name, out in sanitize(key, array)]
    prequantised = {name.removesuffix(".scales") for _, _, name, _ in found if name.endswith(".scales")}
    written: dict[str, dict | bool] = {m: False for m in per_module}
    tensors = []
    for file, key, name, array in found:
        module = next((name.removesuffix(s) for s in QUANT_SUFFIXES if name.endswith(s)), name)
        if module in prequantised:
            params, written[module] = False, _source_params(module, source_quant)
        elif name.endswith(".weight") and per_module.get(module):
            params = written[module] = per_module[module]
        else:
            params = False
        tensors.append(Tensor(file, key, name, tuple(array.shape), array.itemsize, params))
    return tensors, written


def _source_params(module: str, source_quant: dict | None) -> dict:
    if not source_quant:
        raise ValueError(f"{module} is quantised in the source, whose config has no quantization entry")
    entry = source_quant.get(module, True)
    if isinstance(entry, dict):
        out = {"group_size": entry.get("group_size", source_quant["group_size"]),
               "bits": entry.get("bits", source_quant["bits"])}
        mode = entry.get("mode", source_quant.get("mode", "affine"))
    else:
        out = {"group_size": source_quant["group_size"], "bits": source_quant["bits"]}
        mode = source_quant.get("mode", "affine")
    return out if mode == "affine" else {**out, "mode": mode}


def write_tensors(tensors: list[Tensor], sanitize: Sanitize, out: Path, shard_bytes: int | None = None) -> int:
    """Write `tensors` (from `plan_tensors` with the same `sanitize`) as shards into `out`; returns the bytes written."""
    shard_bytes = shard_bytes or SHARD_BYTES
    total = 0
    names: list[str] = []  # shards written so far, numbered; renamed once their count is known
    keys: list[list[str]] = []
    pending: dict[str, mx.array] = {}
    pending_bytes = 0

    def flush():
        nonlocal pending, pending_bytes
        if pending:
            name = f"model-{len(names) + 1:05d}.safetensors"
            mx.save_safetensors(str(out / name), pending, metadata={"format": "mlx"})
            names.append(name)
            keys.append(list(pending))
        pending, pending_bytes = {}, 0

    for name, array in _stream(tensors, sanitize):
        if pending and pending_bytes + array.nbytes > shard_bytes:
            flush()
        pending[name] = array
        pending_bytes += array.nbytes
        total += array.nbytes
    flush()

    # Final names, as mlx-lm's save_model writes them.
    final = ["model.safetensors"] if len(names) == 1 else [
        f"model-{i + 1:05d}-of-{len(names):05d}.safetensors" for i in range(len(names))]
    weight_map = {}
    for name, new, shard_keys in zip(names, final, keys):
        (out / name).rename(out / new)
        weight_map.update({k: new for k in shard_keys})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=4))
    return total


def _stream(tensors: list[Tensor], sanitize: Sanitize) -> Iterator[tuple[str, mx.array]]:
    """(name, evaluated array) pairs, reading one source tensor at a time."""
    by_source: dict[Path, dict[str, list[Tensor]]] = {}
    for t in tensors:
        by_source.setdefault(t.file, {}).setdefault(t.key, []).append(t)
    for file, by_key in by_source.items():
        lazy = mx.load(str(file))
        for key, group in by_key.items():
            # pop: drop the dict's reference so the source buffer is freed once written
            outputs = dict(sanitize(key, lazy.pop(key)))
            for t in group:
                yield from _written(t, outputs.pop(t.name))
            del outputs


def _written(t: Tensor, weight: mx.array) -> Iterator[tuple[str, mx.array]]:
    """The output tensors of one planned tensor: packed weight, scales and biases, or the tensor itself."""
    if t.params:
        packed, scales, biases = quantise(weight, t.params)
        module = t.name.removesuffix(".weight")
        yield t.name, packed
        yield f"{module}.scales", scales
        yield f"{module}.biases", biases
    else:
        mx.eval(weight)
        yield t.name, weight
