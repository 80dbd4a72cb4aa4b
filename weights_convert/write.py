"""Stream a safetensors checkpoint into renamed, quantised safetensors shards.

Invariants:
* One source tensor may become several outputs (the 26B's fused `experts.gate_up_proj` becomes
  `switch_glu.gate_proj` and `up_proj`): `Sanitize` returns a list, and each source tensor is
  read and sanitized once for all of its outputs.
* A module whose `.scales` are already in the source (an MLX-quantised checkpoint) is copied
  through with the source's quantisation; it is never quantised again.
* `plan_tensors` returns, with the tensors, exactly what will be written per module (params or
  False): the config's `quantization` and the manifest are made from it, nothing else.
* Memory is bounded by `BLOCK_BYTES`, whatever the largest tensor: a source tensor is read,
  sanitized, quantised and written a block of rows (along axis 0) at a time, straight to its
  place in the output shard (`tensor_io`), whose header is computed in advance from the plan.
  (Quantisation groups run along the last axis, so row blocks quantise independently.) A
  sanitize that does not keep axis 0 (none of ours does so for a large tensor) gets the tensor
  whole. Shards are cut by planned size, at most `SHARD_BYTES` each.
Shards are named like mlx-lm's `save_model` (`model.safetensors` or
`model-0000i-of-0000n.safetensors`, with `model.safetensors.index.json`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx

from mlx_specdec.errors import SpecdecError
from mlx_specdec.files import load_safetensors, weight_files
from mlx_specdec.models.quantise import quantise, quantised_bytes, source_quantization
from weights_convert.tensor_io import ShardWriter, open_source, read_header, read_rows

SHARD_BYTES = 2 << 30
BLOCK_BYTES = 64 << 20  # source bytes read (and quantised) at once


@dataclass(frozen=True)
class Tensor:
    """One tensor to write: where it is read from, its new name, and how it is quantised."""

    file: Path
    key: str
    name: str
    shape: tuple
    itemsize: int
    params: dict | bool
    dtype: mx.Dtype = mx.float32  # of the sanitized tensor

    @property
    def out_bytes(self) -> int:
        return quantised_bytes(self.shape, self.itemsize, self.params)

    def outputs(self) -> dict[str, tuple[mx.Dtype, tuple]]:
        """The tensors written for this one: {name: (dtype, shape)}."""
        if not self.params:
            return {self.name: (self.dtype, self.shape)}
        *lead, cols = self.shape
        module = self.name.removesuffix(".weight")
        groups = (*lead, cols // self.params["group_size"])
        return {
            self.name: (mx.uint32, (*lead, cols * self.params["bits"] // 32)),
            f"{module}.scales": (self.dtype, groups),
            f"{module}.biases": (self.dtype, groups),
        }


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
        for key, array in load_safetensors(file).items():  # lazy: headers only
            found += [(file, key, name, out) for name, out in sanitize(key, array)]
    prequantised = {name.removesuffix(".scales") for _, _, name, _ in found if name.endswith(".scales")}
    written: dict[str, dict | bool] = {m: False for m in per_module}
    tensors = []
    for file, key, name, array in found:
        module = next((name.removesuffix(s) for s in QUANT_SUFFIXES if name.endswith(s)), name)
        if module in prequantised:
            params, written[module] = False, _source_params(module, source_quant)
        elif name.endswith(".weight") and per_module.get(module):
            if not mx.issubdtype(array.dtype, mx.floating):
                dtype = str(array.dtype).removeprefix("mlx.core.")
                raise SpecdecError(
                    f"{file}: {key} holds {dtype} values, not floating-point weights (already "
                    "quantised?); convert the original floating-point checkpoint"
                )
            params = written[module] = per_module[module]
        else:
            params = False
        tensors.append(Tensor(file, key, name, tuple(array.shape), array.itemsize, params, array.dtype))
    return tensors, written


def _source_params(module: str, source_quant: dict | None) -> dict:
    if not source_quant:
        raise SpecdecError(f"{module} is quantised in the source, but its config.json has no 'quantization' entry")
    entry = source_quant.get(module, True)
    if isinstance(entry, dict):
        out = {
            "group_size": entry.get("group_size", source_quant["group_size"]),
            "bits": entry.get("bits", source_quant["bits"]),
        }
        mode = entry.get("mode", source_quant.get("mode", "affine"))
    else:
        out = {"group_size": source_quant["group_size"], "bits": source_quant["bits"]}
        mode = source_quant.get("mode", "affine")
    return out if mode == "affine" else {**out, "mode": mode}


def write_tensors(tensors: list[Tensor], sanitize: Sanitize, out: Path, shard_bytes: int | None = None) -> int:
    """Write `tensors` (from `plan_tensors`, same `sanitize`) as shards into `out`; returns the bytes written."""
    shard_bytes = shard_bytes or SHARD_BYTES
    # Cut shards by planned size; all the outputs of one source tensor go into the same shard.
    groups: dict[tuple[Path, str], list[Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.file, t.key), []).append(t)
    shards: list[list[list[Tensor]]] = [[]]
    size = 0
    for group in groups.values():
        n = sum(t.out_bytes for t in group)
        if shards[-1] and size + n > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(group)
        size += n
    names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    total, weight_map, headers = 0, {}, {}
    for name, shard in zip(names, shards):
        layout = {k: v for group in shard for t in group for k, v in t.outputs().items()}
        # A Python file: a failed write (disk full, read-only) raises OSError with its errno.
        writer = ShardWriter(open(out / name, "wb"), layout)  # noqa: SIM115 (closed in finally)
        try:
            for group in shard:
                file = group[0].file
                if file not in headers:
                    headers[file] = read_header(file)
                _write_group(writer, file, headers[file][group[0].key], group, sanitize)
        finally:
            writer.close()
        total += writer.nbytes
        weight_map.update({k: name for k in layout})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=4))
    return total


def _write_group(writer: ShardWriter, file: Path, entry, group: list[Tensor], sanitize: Sanitize) -> None:
    """Read one source tensor in row blocks; sanitize, quantise and write every block of its outputs."""
    rows = entry.shape[0] if entry.shape else 1
    blockable = entry.shape and all(t.shape and t.shape[0] == rows for t in group)
    step = max(1, BLOCK_BYTES // max(1, entry.row_bytes)) if blockable else rows
    with open_source(file) as f:
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            outputs = dict(
                sanitize(group[0].key, read_rows(f, entry, start, stop) if entry.shape else read_rows(f, entry, 0, 0))
            )
            for t in group:
                block = outputs.pop(t.name)
                if t.params:
                    packed, scales, biases = quantise(block, t.params)
                    module = t.name.removesuffix(".weight")
                    parts = {t.name: packed, f"{module}.scales": scales, f"{module}.biases": biases}
                else:
                    parts = {t.name: block}
                mx.eval(list(parts.values()))
                for name, array in parts.items():
                    writer.write_rows(name, start if blockable else 0, array)
            del outputs
    mx.clear_cache()  # hand the block buffers back


def tower_quantisation(config: dict, raw: dict, tensors: list[Tensor], what: str, log) -> dict:
    """A tower quantised in the source (an mlx-community checkpoint) is copied as stored; its config
    says the source's mode and size (media.py reads each module's group and bits from its shapes)."""
    quantised = sum(t.name.endswith(".scales") for t in tensors)
    if quantised:
        q = source_quantization(raw) or {}
        config["quantization"] = {k: q[k] for k in ("group_size", "bits", "mode") if k in q}
        log(f"{what} tower: {quantised} modules are already quantised in the source; copied as they are")
    return config
