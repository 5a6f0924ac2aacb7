"""A safetensors file read by hand: the header is parsed as JSON and each tensor is a
lazy view into one shared read-only mmap of the file. Nothing is read from disk until a
tensor's bytes are touched, and bf16 needs no torch.

Layout: u64 little-endian N | N bytes of JSON header | data. The header maps each tensor
name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the data
start), plus an optional "__metadata__" dict of strings.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..errors import FormatError, UnsupportedError
from .finite import NonFiniteError, check_finite
from .json_text import parse_json

# safetensors dtype name -> numpy dtype of the stored bytes (the ones qconvert can read)
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # raw bits; widened to f32 on load
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "U16": np.dtype("<u2"), "U32": np.dtype("<u4"), "U64": np.dtype("<u8"),
    "F8_E4M3": np.dtype("u1"), "F8_E5M2": np.dtype("u1"),  # raw bits; decoded by fp8.py
    "BOOL": np.dtype("?"),
}
# bits per element of every dtype the format defines (safetensors 0.6), readable or not:
# a valid FP8/FP4 checkpoint is still inspected, and its sizes still checked
DTYPE_BITS: dict[str, int] = {**{k: v.itemsize * 8 for k, v in DTYPES.items()},
                              "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8, "F6_E2M3": 6, "F6_E3M2": 6,
                              "F4": 4, "C64": 64}
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")
MAX_HEADER = 100 * 1024 * 1024  # the limit the safetensors library itself enforces
MAX_RANK = 16  # numpy allows 64; no model tensor comes close
_FAULT_AROUND = 64 * 1024  # Linux maps up to this much around a faulting page (fault_around_bytes)
# stored bytes read at once when a region takes a column range of every row (region())
_REGION_BLOCK = 4 << 20


@dataclass(frozen=True)
class Entry:
    """One validated header entry; offsets are relative to the start of the data section."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def n_bytes(self) -> int:
        return self.end - self.begin


@dataclass
class TensorHandle:
    """A tensor not yet read: its name, stored dtype, shape and a loader."""

    name: str
    dtype: str  # safetensors dtype name: BF16, F16, F32...
    shape: tuple[int, ...]
    loader: Callable[[], np.ndarray]
    source: str = ""
    # rows start..stop of axis 0 as float32, read without touching the rest (None: the
    # handle can only load the whole tensor, and the writer encodes it in one piece)
    rows: Optional[Callable[[int, int], np.ndarray]] = None
    # of a 3-D (n, rows, cols) tensor: region(i, rows, cols, transpose) is float32
    # stored[i, rows, cols] (transposed when asked), reading only those rows of slab i
    # (an expert's part of a stored expert stack; None: only `rows` or `load` read it)
    region: Optional[Callable[..., np.ndarray]] = None

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
    """Parse the JSON header; return (header, byte offset of the data section). The
    entries are not checked yet: `validate_header` does that."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            raw = f.read(8)
            if len(raw) != 8:
                raise FormatError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", raw)
            # the length is never echoed: for a file that is not safetensors it is its first bytes
            if n > MAX_HEADER or n > size - 8:
                raise FormatError(f"{path}: not a safetensors file (its header length is larger than "
                                  f"{'the file' if n <= MAX_HEADER else '100 MB'})")
            blob = f.read(n)
    except OSError as e:
        raise FormatError(f"{path}: cannot read ({e.strerror})") from None
    if len(blob) != n:
        raise FormatError(f"{path}: truncated safetensors header")
    header = parse_json(blob, f"{path}: safetensors header")
    if not isinstance(header, dict):
        raise FormatError(f"{path}: safetensors header is not a JSON object")
    return header, 8 + n


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _count(n: int) -> str:
    """A size or dimension for a message: digits up to 2^64, beyond that its magnitude
    (a shape of 16 dims of 4,000 digits each is valid JSON, and no use printed)."""
    return str(n) if n < 1 << 64 else f"about 2^{n.bit_length() - 1}"


def _entry(path: Path, name: str, e: Any, data_len: int) -> Entry:
    def bad(why: str) -> FormatError:
        return FormatError(f"{path}: tensor {name!r}: {why}")

    if not isinstance(e, dict):
        raise bad("entry is not a JSON object")
    dtype, shape, offsets = e.get("dtype"), e.get("shape"), e.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise bad(f"unknown dtype {dtype!r}" if isinstance(dtype, str) else "dtype is missing or not a string")
    if not isinstance(shape, list) or len(shape) > MAX_RANK or not all(_int(d) and d >= 0 for d in shape):
        raise bad(f"shape should be a list of at most {MAX_RANK} non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_int(x) for x in offsets):
        raise bad("data_offsets should be two integers [begin, end]")
    begin, end = offsets
    if not 0 <= begin <= end:
        raise bad(f"data_offsets [{begin}, {end}] are not an ordered byte range")
    if end > data_len:
        raise bad(f"data ends at byte {end} of a {data_len}-byte data section (truncated download?)")
    n = math.prod(shape)
    if (end - begin) * 8 != n * DTYPE_BITS[dtype]:
        need, part = divmod(n * DTYPE_BITS[dtype], 8)  # integers: 10**39 elements overflow a float
        raise bad(f"holds {end - begin} bytes, but {dtype} [{', '.join(map(_count, shape))}] needs "
                  f"{_count(need)}{f'.{part * 125:03d}'.rstrip('0') if part else ''}")
    return Entry(name, dtype, tuple(shape), begin, end)


def validate_header(path: Path, header: dict, data_start: int, size: int) -> tuple[dict[str, Entry], dict]:
    """Every entry checked (dtype known, shape, offsets inside the data section, byte count
    = elements x dtype size) -> ({name: Entry} in header order, __metadata__). Shared by
    quantize (SafetensorsFile) and inspect, so both accept and refuse the same files;
    `overlaps` is the one layout check they treat differently."""
    header = dict(header)
    meta = header.pop("__metadata__", None)
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise FormatError(f"{path}: __metadata__ is not a JSON object")
    data_len = size - data_start
    return {name: _entry(path, name, e, data_len) for name, e in header.items()}, meta


def overlaps(entries: dict[str, Entry]) -> list[tuple[Entry, Entry, str]]:
    """Pairs of tensors whose bytes overlap, each with a sentence saying where. quantize
    refuses such a file (a write to one would be a write to the other: it was not made by a
    safetensors writer); inspect lists them as problems."""
    out = []
    prev: Entry | None = None
    for e in sorted((e for e in entries.values() if e.n_bytes), key=lambda e: (e.begin, e.end)):
        if prev is not None and e.begin < prev.end:
            out.append((prev, e, f"tensors {prev.name!r} and {e.name!r} overlap "
                                 f"(bytes {e.begin}..{min(prev.end, e.end)} of the data section)"))
        if prev is None or e.end > prev.end:
            prev = e
    return out


def release_pages(mm: Optional[mmap.mmap], begin: int, end: int) -> None:
    """Drop bytes begin..end of a read-only file mapping from this process's resident set
    (clean file pages: the page cache keeps them, a later read costs a minor fault).
    Widened by the kernel's fault-around window: a read maps up to 64 KiB of the
    neighbours' pages too, and nothing else would drop them (with 128 experts of 0.5 MB
    per shard they stayed as 14 MB per shard)."""
    if mm is None or not hasattr(mmap, "MADV_DONTNEED"):
        return
    first = max(0, (begin - _FAULT_AROUND) // mmap.PAGESIZE * mmap.PAGESIZE)
    end = min(len(mm), end + _FAULT_AROUND)
    if end <= first:
        return
    try:
        mm.madvise(mmap.MADV_DONTNEED, first, end - first)
    except (OSError, ValueError):
        pass


def _read_at(f, view: np.ndarray, offset: int) -> None:
    """Fill a contiguous array with the file's bytes at `offset` (one pread where the OS has it)."""
    mv = memoryview(view).cast("B")
    if hasattr(os, "preadv"):
        n = os.preadv(f.fileno(), [mv], offset)
    else:
        f.seek(offset)
        n = f.readinto(mv)
    if n != len(mv):
        raise FormatError(f"{f.name}: file changed size while being read")


def _widen(arr: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        # bf16 is the high half of a float32: place the bits into zeroed words (one
        # strided copy; calloc'd zeros cost nothing until touched); flat, as numpy cannot
        # view a 0-d array (Apertus' per-layer xIELU scalars) as another item size
        out = np.zeros(arr.size, dtype=np.uint32)
        out.view(np.uint16)[1::2] = arr.reshape(-1)
        return out.view(np.float32).reshape(arr.shape)
    return arr.astype(np.float32)


class SafetensorsFile:
    """One safetensors file: its tensor entries, every one validated up front (see
    `validate_header`), as lazy handles over one mmap."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        header, self.data_start = read_header(self.path)
        try:
            self.size = self.path.stat().st_size
        except OSError as e:
            raise FormatError(f"{self.path}: cannot read ({e.strerror})") from None
        self.entries, self.metadata = validate_header(self.path, header, self.data_start, self.size)
        for _, _, why in overlaps(self.entries)[:1]:
            raise FormatError(f"{self.path}: {why}")
        # the raw entries, now known to be well-typed (callers read "dtype" from them)
        self.header = {name: header[name] for name in self.entries}
        self._mm: mmap.mmap | None = None

    def names(self) -> list[str]:
        return list(self.entries)

    def _map(self) -> mmap.mmap:
        if self._mm is None:
            with open(self.path, "rb") as f:
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            if len(self._mm) != self.size:  # the file changed under us since the header was checked
                raise FormatError(f"{self.path}: file changed size while being read")
        return self._mm

    def raw(self, name: str) -> np.ndarray:
        """The stored array (no copy, read-only, stored dtype; bf16 as uint16 bits). Float
        data is checked for NaN/Inf here, the one place every reader passes through."""
        e = self.entries[name]
        dt = DTYPES.get(e.dtype)
        if dt is None:
            raise UnsupportedError(f"{self.path}: tensor {name!r} has unsupported dtype {e.dtype}")
        arr = np.frombuffer(self._map(), dtype=dt, count=e.n_elements, offset=self.data_start + e.begin)
        arr = arr.reshape(e.shape)
        check_finite(arr, e.dtype, f"{self.path}: tensor {name!r}")
        return arr

    def release(self, name: str, start: int = 0, stop: Optional[int] = None) -> None:
        """Drop a tensor's mapped pages (bytes start..stop of it, default all) from this
        process's resident set. They are clean file pages, so the kernel would reclaim them
        anyway, but RSS would count every page ever touched: converting a 100 GB model
        would look like using 100 GB."""
        e = self.entries[name]
        release_pages(self._mm, self.data_start + e.begin + start,
                      self.data_start + (e.end if stop is None else e.begin + stop))

    def _check_float(self, name: str) -> Entry:
        e = self.entries[name]
        if e.dtype not in FLOAT_DTYPES:
            raise UnsupportedError(
                f"{self.path}: tensor {name!r} has dtype {e.dtype}; only F32, F16 and BF16 weights are supported"
            )
        return e

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows start..stop (axis 0) of a float tensor as float32, read from the mmap and
        checked for NaN/Inf; only their pages are touched, and released after."""
        e = self._check_float(name)
        dt = DTYPES[e.dtype]
        row = math.prod(e.shape[1:])
        arr = np.frombuffer(self._map(), dtype=dt, count=(stop - start) * row,
                            offset=self.data_start + e.begin + start * row * dt.itemsize)
        arr = arr.reshape((stop - start, *e.shape[1:]))
        try:
            check_finite(arr, e.dtype, f"{self.path}: tensor {name!r}")
        except NonFiniteError:
            self.raw(name)  # the counts of the whole tensor, as a whole-tensor read reports them
            raise
        out = _widen(arr, e.dtype)  # a copy: the mapped pages can go
        self.release(name, start * row * dt.itemsize, stop * row * dt.itemsize)
        return out

    def region(self, name: str, i: int, rows: slice, cols: slice, transpose: bool = False) -> np.ndarray:
        """stored[i, rows, cols] of a 3-D float tensor as float32, (rows, cols) or, with
        `transpose`, (cols, rows). Whole rows come from the mmap like `rows`. A column range
        (one expert's output rows of a stack stored transposed, (n, in, out)) lies in every
        stored row of slab i: those rows are read a block at a time into one buffer with
        plain reads, not the mmap (mapping and dropping the whole slab for each slice of
        its columns cost 0.7 s per slice of a Llama 4 Maverick expert; reads, 0.02 s)."""
        e = self._check_float(name)
        dt = DTYPES[e.dtype]
        _, n_rows, n_cols = e.shape
        r0, r1, step = rows.indices(n_rows)
        if step != 1:
            raise ValueError(f"{name}: region rows must be a contiguous range")
        row_bytes = n_cols * dt.itemsize
        first = self.data_start + e.begin + i * n_rows * row_bytes  # slab i's first byte in the file
        if cols == slice(None):
            arr = np.frombuffer(self._map(), dtype=dt, count=(r1 - r0) * n_cols, offset=first + r0 * row_bytes)
            out = self._widened(name, e, arr.reshape(r1 - r0, n_cols))
            self.release(name, first - self.data_start - e.begin + r0 * row_bytes,
                         first - self.data_start - e.begin + r1 * row_bytes)
            return out.T.copy() if transpose else out
        lo, hi, col_step = cols.indices(n_cols)
        if col_step < 1:
            raise ValueError(f"{name}: region columns must run forward")
        hi = max(lo, hi)
        width = len(range(lo, hi, col_step))
        out = np.empty((width, r1 - r0) if transpose else (r1 - r0, width), dtype=np.float32)
        # read the columns' span of each row when it is a small part of the row, else whole rows
        span = hi - lo if (hi - lo) * 4 <= n_cols else n_cols
        skip = lo if span < n_cols else 0
        block = max(1, min(r1 - r0, _REGION_BLOCK // max(1, span * dt.itemsize)))
        buf = np.empty((block, span), dtype=dt)
        with open(self.path, "rb", buffering=0) as f:
            for a in range(r0, r1, block):
                b = min(r1, a + block)
                view = buf[:b - a]
                if span == n_cols:
                    _read_at(f, view, first + a * row_bytes)
                else:
                    for r in range(a, b):
                        _read_at(f, view[r - a], first + r * row_bytes + skip * dt.itemsize)
                part = self._widened(name, e, view[:, lo - skip:hi - skip:col_step])
                if transpose:
                    out[:, a - r0:b - r0] = part.T
                else:
                    out[a - r0:b - r0] = part
        return out

    def _widened(self, name: str, e: Entry, arr: np.ndarray) -> np.ndarray:
        """Stored values of tensor `name` (some of them) checked for NaN/Inf and widened
        to a new float32 array."""
        try:
            check_finite(arr, e.dtype, f"{self.path}: tensor {name!r}")
        except NonFiniteError:
            self.raw(name)  # the whole tensor's counts, as a whole-tensor read reports them
            raise
        return _widen(np.ascontiguousarray(arr), e.dtype)

    def handle(self, name: str) -> TensorHandle:
        e = self.entries[name]

        def load() -> np.ndarray:
            self._check_float(name)
            arr = _widen(self.raw(name), e.dtype)  # a copy: the mapped pages can go
            self.release(name)
            return arr

        def rows(start: int, stop: int) -> np.ndarray:
            return self.rows(name, start, stop)

        def region(i: int, rows: slice, cols: slice, transpose: bool = False) -> np.ndarray:
            return self.region(name, i, rows, cols, transpose)

        return TensorHandle(name, e.dtype, e.shape, load, str(self.path), rows if e.shape else None,
                            region if len(e.shape) == 3 else None)
