"""Safetensors files written by hand, one tensor at a time.

A safetensors file is  u64 little-endian N | N bytes of JSON header | data,  and the
header must list every tensor's byte range before any data. Those ranges follow from
names, dtypes and shapes alone, so the whole output is planned first (which tensor goes
into which shard, at which offset), each shard's header is written when the shard is
opened, and tensors are then streamed in the planned order: memory holds one tensor,
never a shard. The header is padded with spaces to a multiple of 8 bytes (as the
reference writer does, so that data starts aligned); tensors follow each other with no
gaps, which the reference reader requires.

More than one shard: model-00001-of-0000N.safetensors ... and
model.safetensors.index.json ({"metadata": {"total_size"}, "weight_map": name -> file}),
the layout `save_pretrained` writes and transformers reads.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional

import numpy as np

INDEX = "model.safetensors.index.json"
ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
            "U8": 1, "U16": 2, "U32": 4, "U64": 8, "BOOL": 1}


@dataclass(frozen=True)
class Entry:
    name: str
    dtype: str  # safetensors dtype name
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = ITEMSIZE[self.dtype]
        for d in self.shape:
            n *= d
        return n


def assign_shards(entries: list[Entry], shard_bytes: int) -> list[list[Entry]]:
    """Consecutive runs of entries, a new shard whenever the next tensor would push the
    current one past shard_bytes (a tensor larger than that gets a shard of its own)."""
    shards: list[list[Entry]] = [[]]
    size = 0
    for e in entries:
        if shards[-1] and size + e.nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += e.nbytes
    return shards


def shard_file_names(n: int) -> list[str]:
    if n == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]


def header_bytes(entries: list[Entry], metadata: dict[str, str]) -> bytes:
    header: dict = {"__metadata__": metadata}
    offset = 0
    for e in entries:
        header[e.name] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob


class ShardedWriter:
    """Writes the planned entries into out_dir, in order: `write(name, array)` for each."""

    def __init__(self, out_dir: Path, entries: list[Entry], shard_bytes: int,
                 metadata: Optional[dict[str, str]] = None) -> None:
        names = [e.name for e in entries]
        if len(set(names)) != len(names):
            raise ValueError("duplicate tensor names in the safetensors plan")
        self.dir = Path(out_dir)
        self.shards = assign_shards(entries, shard_bytes)
        self.files = shard_file_names(len(self.shards))
        self.metadata = {"format": "pt", **(metadata or {})}
        self._queue = [(i, e) for i, shard in enumerate(self.shards) for e in shard]
        self._pos = 0
        self._open: Optional[tuple[int, BinaryIO]] = None

    def write(self, name: str, arr: np.ndarray) -> None:
        if self._pos >= len(self._queue):
            raise AssertionError(f"{name}: every planned tensor is already written")
        shard, e = self._queue[self._pos]
        arr = np.ascontiguousarray(arr)
        if name != e.name or tuple(arr.shape) != e.shape or arr.nbytes != e.nbytes:
            raise AssertionError(f"writing {name} {tuple(arr.shape)} ({arr.nbytes} bytes); the plan has "
                                 f"{e.name} {e.shape} ({e.nbytes} bytes) next")
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        f = self._file(shard)
        f.write(arr.reshape(-1).view(np.uint8).data)
        self._pos += 1

    def _file(self, shard: int) -> BinaryIO:
        if self._open is not None and self._open[0] == shard:
            return self._open[1]
        self._close_current()
        f = open(self.dir / self.files[shard], "wb")
        f.write(header_bytes(self.shards[shard], self.metadata))
        self._open = (shard, f)
        return f

    def _close_current(self) -> None:
        if self._open is not None:
            self._open[1].close()
            self._open = None

    def close(self) -> list[str]:
        """Finish: every planned tensor must have been written. Returns the file names."""
        self._close_current()
        if self._pos != len(self._queue):
            raise AssertionError(f"{len(self._queue) - self._pos} planned tensors were never written "
                                 f"(next: {self._queue[self._pos][1].name})")
        if len(self.files) > 1:
            index = {"metadata": {"total_size": sum(e.nbytes for s in self.shards for e in s)},
                     "weight_map": {e.name: f for s, f in zip(self.shards, self.files) for e in s}}
            (self.dir / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        return list(self.files)

    def abort(self) -> None:
        self._close_current()
