"""safetensors in row blocks: read rows of one source tensor, write rows of an output tensor.

Why: E2B's per-layer embedding is one 4.7 GB tensor, more than Metal's largest buffer on an 8 GB
Mac. `mx.load` reads a tensor whole, and `mx.save_safetensors` needs every tensor of a shard in
memory. Here a tensor is read with plain file reads (no mmap: touched mapped pages would count
against the process), a block of rows at a time, and an output shard is written by a header
computed in advance and then by blocks of rows at their final offsets. Memory is one block.

The format (https://github.com/huggingface/safetensors): 8-byte little-endian header length,
a JSON header {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}} padded
with spaces to a multiple of 8, then the data, row-major.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import mlx.core as mx
import numpy as np

# safetensors dtype <-> mlx dtype, and the numpy dtype its bytes are read as (bf16 as uint16).
DTYPES = {
    "BOOL": (mx.bool_, np.bool_),
    "U8": (mx.uint8, np.uint8),
    "I8": (mx.int8, np.int8),
    "U16": (mx.uint16, np.uint16),
    "I16": (mx.int16, np.int16),
    "U32": (mx.uint32, np.uint32),
    "I32": (mx.int32, np.int32),
    "U64": (mx.uint64, np.uint64),
    "I64": (mx.int64, np.int64),
    "F16": (mx.float16, np.float16),
    "BF16": (mx.bfloat16, np.uint16),
    "F32": (mx.float32, np.float32),
}
NAMES = {mx_dtype: name for name, (mx_dtype, _) in DTYPES.items()}


@dataclass(frozen=True)
class Entry:
    """One tensor of a safetensors file: dtype name, shape, absolute byte offset of its data."""

    dtype: str
    shape: tuple
    start: int

    @property
    def row_bytes(self) -> int:
        n = 1
        for d in self.shape[1:]:
            n *= d
        return n * np.dtype(DTYPES[self.dtype][1]).itemsize


def read_header(path: Path) -> dict[str, Entry]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return {
        k: Entry(v["dtype"], tuple(v["shape"]), 8 + n + v["data_offsets"][0])
        for k, v in header.items()
        if k != "__metadata__"
    }


def open_source(path: Path) -> BinaryIO:
    return open(path, "rb")


def read_rows(f: BinaryIO, entry: Entry, start: int, stop: int) -> mx.array:
    """Rows start..stop-1 (along axis 0) of a tensor of the open file `f` (0-d: the scalar)."""
    mx_dtype, np_dtype = DTYPES[entry.dtype]
    if not entry.shape:
        f.seek(entry.start)
        return mx.array(np.frombuffer(f.read(np.dtype(np_dtype).itemsize), np_dtype).reshape(())).view(mx_dtype)
    f.seek(entry.start + start * entry.row_bytes)
    data = np.frombuffer(f.read((stop - start) * entry.row_bytes), np_dtype)
    return mx.array(data.reshape((stop - start, *entry.shape[1:]))).view(mx_dtype)


class ShardWriter:
    """Writes one safetensors file whose tensors (name -> (mx dtype, shape)) are known up front;
    their data arrive in blocks of rows, in any order."""

    def __init__(self, f: BinaryIO, tensors: dict[str, tuple[mx.Dtype, tuple]]):
        """`f`: the output file, open for binary writing; `tensors`: name -> (dtype, shape), in order."""
        header, offset = {"__metadata__": {"format": "mlx"}}, 0
        self.entries: dict[str, Entry] = {}
        for name, (dtype, shape) in tensors.items():
            size = int(np.prod(shape, dtype=np.int64)) * dtype.size
            header[name] = {"dtype": NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
            self.entries[name] = (NAMES[dtype], tuple(shape), offset)
            offset += size
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        self.entries = {k: Entry(d, s, 8 + len(text) + o) for k, (d, s, o) in self.entries.items()}
        self.nbytes = offset
        self.f = f
        self.f.write(struct.pack("<Q", len(text)) + text)
        self.f.truncate(8 + len(text) + offset)

    def write_rows(self, name: str, start: int, array: mx.array) -> None:
        """Write `array` as rows start.. of tensor `name` (its shape past axis 0 must match)."""
        entry = self.entries[name]
        array = mx.contiguous(array)
        if array.dtype == mx.bfloat16:
            array = array.view(mx.uint16)
        data = np.ascontiguousarray(np.asarray(array))
        self.f.seek(entry.start + (start * entry.row_bytes if entry.shape else 0))
        self.f.write(memoryview(data).cast("B"))

    def close(self) -> None:
        self.f.close()
