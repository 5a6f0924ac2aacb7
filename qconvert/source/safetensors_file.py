"""A safetensors file read by hand: the header is parsed as JSON and each tensor is a
lazy view into one shared read-only mmap of the file. Nothing is read from disk until a
tensor's bytes are touched, and bf16 needs no torch.

Layout: u64 little-endian N | N bytes of JSON header | data. The header maps each tensor
name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the data
start), plus an optional "__metadata__" dict of strings.
"""

from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import FormatError, UnsupportedError

# safetensors dtype name -> (numpy dtype of the stored bytes, bytes per element)
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # raw bits; widened to f32 on load
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "U16": np.dtype("<u2"), "U32": np.dtype("<u4"), "U64": np.dtype("<u8"),
    "BOOL": np.dtype("?"),
}
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")
MAX_HEADER = 100 * 1024 * 1024


@dataclass
class TensorHandle:
    """A tensor not yet read: its name, stored dtype, shape and a loader."""

    name: str
    dtype: str  # safetensors dtype name: BF16, F16, F32...
    shape: tuple[int, ...]
    loader: Callable[[], np.ndarray]
    source: str = ""

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def load(self) -> np.ndarray:
        """The tensor as float32 (a new array; the mmap stays untouched)."""
        return self.loader()


def read_header(path: Path) -> tuple[dict, int]:
    """Parse the JSON header; return (header, byte offset of the data section)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise FormatError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER:
                raise FormatError(f"{path}: not a safetensors file (header length {n} is implausible)")
            blob = f.read(n)
    except OSError as e:
        raise FormatError(f"{path}: cannot read ({e.strerror})") from None
    if len(blob) != n:
        raise FormatError(f"{path}: truncated safetensors header")
    try:
        header = json.loads(blob)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"{path}: garbled safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise FormatError(f"{path}: safetensors header is not a JSON object")
    return header, 8 + n


def _widen(arr: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        # bf16 is the high half of a float32: place the bits into zeroed words (one
        # strided copy; calloc'd zeros cost nothing until touched)
        out = np.zeros(arr.shape, dtype=np.uint32)
        out.view(np.uint16)[..., 1::2] = arr
        return out.view(np.float32)
    return arr.astype(np.float32)


class SafetensorsFile:
    """One safetensors file: its tensor entries as lazy handles over one mmap."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.header, self.data_start = read_header(self.path)
        self.metadata = self.header.pop("__metadata__", None) or {}
        self._mm: mmap.mmap | None = None
        self.size = self.path.stat().st_size
        for name, e in self.header.items():
            try:
                begin, end = e["data_offsets"]
                e["shape"] = [int(d) for d in e["shape"]]
                e["dtype"]
            except (KeyError, TypeError, ValueError):
                raise FormatError(f"{self.path}: entry for tensor {name!r} is malformed") from None
            if self.data_start + end > self.size or begin > end:
                raise FormatError(
                    f"{self.path}: tensor {name!r} lies past the end of the file (truncated download?)"
                )

    def names(self) -> list[str]:
        return list(self.header)

    def _map(self) -> mmap.mmap:
        if self._mm is None:
            with open(self.path, "rb") as f:
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return self._mm

    def raw(self, name: str) -> np.ndarray:
        """The stored array (no copy, read-only, stored dtype; bf16 as uint16 bits)."""
        e = self.header[name]
        dt = DTYPES.get(e["dtype"])
        if dt is None:
            raise UnsupportedError(f"{self.path}: tensor {name!r} has unsupported dtype {e['dtype']}")
        begin, end = e["data_offsets"]
        count = (end - begin) // dt.itemsize
        arr = np.frombuffer(self._map(), dtype=dt, count=count, offset=self.data_start + begin)
        return arr.reshape(e["shape"])

    def release(self, name: str) -> None:
        """Drop a tensor's mapped pages from this process's resident set. They are clean
        file pages, so the kernel would reclaim them anyway, but RSS would count every page
        ever touched: converting a 100 GB model would look like using 100 GB."""
        if self._mm is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        begin, end = self.header[name]["data_offsets"]
        start = (self.data_start + begin) // mmap.PAGESIZE * mmap.PAGESIZE
        stop = self.data_start + end
        try:
            self._mm.madvise(mmap.MADV_DONTNEED, start, stop - start)
        except (OSError, ValueError):
            pass

    def handle(self, name: str) -> TensorHandle:
        e = self.header[name]
        dtype = e["dtype"]

        def load() -> np.ndarray:
            if dtype not in FLOAT_DTYPES:
                raise UnsupportedError(
                    f"{self.path}: tensor {name!r} has dtype {dtype}; only F32, F16 and BF16 weights are supported"
                )
            arr = _widen(self.raw(name), dtype)  # a copy: the mapped pages can go
            self.release(name)
            return arr

        return TensorHandle(name, dtype, tuple(e["shape"]), load, str(self.path))
