"""Stream a safetensors checkpoint into renamed, quantised safetensors shards.

Invariant: at most one source tensor is materialised at a time (`mx.load` is lazy: a tensor is
read from disk when evaluated), and the written shard is flushed once it reaches `shard_bytes`,
so peak memory is about the largest tensor plus one output shard, whatever the checkpoint size.
Shards are named like mlx-lm's `save_model` (`model.safetensors` or
`model-0000i-of-0000n.safetensors`, with `model.safetensors.index.json`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import mlx.core as mx

from mlx_specdec.errors import SpecdecError
from mlx_specdec.files import load_safetensors, weight_files

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


# (source name, lazy array) -> (new name, array), or None to drop the tensor.
Sanitize = Callable[[str, mx.array], "tuple[str, mx.array] | None"]


def plan_tensors(folder: Path, sanitize: Sanitize, per_module: dict[str, dict | bool]) -> list[Tensor]:
    """Every tensor of the checkpoint in `folder` that `sanitize` keeps, with its quantisation.

    Reads only the safetensors headers. A `<module>.weight` of a quantisable module gets that
    module's params from `per_module`; everything else is copied as it is.
    """
    tensors = []
    for file in weight_files(folder):
        for key, array in load_safetensors(file).items():  # lazy: headers only
            kept = sanitize(key, array)
            if kept is None:
                continue
            name, array = kept
            module = name.removesuffix(".weight")
            params = per_module.get(module, False) if name.endswith(".weight") else False
            if params and not mx.issubdtype(array.dtype, mx.floating):
                dtype = str(array.dtype).removeprefix("mlx.core.")
                raise SpecdecError(f"{file}: {key} holds {dtype} values, not floating-point weights (already "
                                   "quantised?); convert the original floating-point checkpoint")
            tensors.append(Tensor(file, key, name, tuple(array.shape), array.itemsize, params))
    return tensors


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
            save_shard(out / name, pending)
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


def save_shard(path: Path, arrays: dict[str, mx.array]) -> None:
    """Write one shard through a Python file: a failed write (disk full, read-only) raises OSError
    with its errno, where mlx's own file writer raises a RuntimeError that does not say why."""
    with open(path, "wb") as f:
        mx.save_safetensors(f, arrays, metadata={"format": "mlx"})


def _stream(tensors: list[Tensor], sanitize: Sanitize) -> Iterator[tuple[str, mx.array]]:
    """(name, evaluated array) pairs, reading one source tensor at a time."""
    by_file: dict[Path, list[Tensor]] = {}
    for t in tensors:
        by_file.setdefault(t.file, []).append(t)
    for file, group in by_file.items():
        lazy = load_safetensors(file)
        for t in group:
            # pop: drop the dict's reference so the source buffer is freed once written
            _, weight = sanitize(t.key, lazy.pop(t.key))
            if t.params:
                packed, scales, biases = quantise(weight, t.params)
                module = t.name.removesuffix(".weight")
                yield t.name, packed
                yield f"{module}.scales", scales
                yield f"{module}.biases", biases
            else:
                mx.eval(weight)
                yield t.name, weight
            del weight
