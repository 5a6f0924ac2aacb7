"""A bounds-checked reader for the header of a GGUF file: metadata and tensor infos, no data.

gguf-py's GGUFReader builds numpy views for every part of every field: on llama.cpp's
Llama 3 vocabulary GGUF (128k tokens, 280k merges) it took 55 s and 660 MB peak, against
3 s and 40 MB here (same busy 2-core machine, process start included). A garbled count
also sends it past the end of the file or into 2**63 empty reads. This reader walks the
same bytes once, checks every length against the file, decodes only the first items of
long arrays, and reads scalar arrays with one `np.frombuffer`. Tests compare it with
GGUFReader key for key and tensor for tensor.

Layout (little-endian, or big-endian throughout when the version reads byte-swapped):

    "GGUF" | u32 version | u64 n_tensors | u64 n_kv
    n_kv      x ( string key | u32 value type | value )
    n_tensors x ( string name | u32 n_dims | n_dims x u64 ne (ne0 first) | u32 ggml type | u64 offset )
    zero padding to general.alignment (default 32) | tensor data (offsets are relative to here)

    string = u64 byte length | utf-8 bytes
    array  = u32 item type | u64 count | count items

What is an error and what is a problem. `read_gguf_header` raises FormatError (naming the
file, and the tensor where there is one) when the header cannot be read or a tensor cannot be
located: truncation, garbled counts, unknown value or ggml types, arrays nested deeper than
MAX_DEPTH, a `general.alignment` that is not a non-zero power-of-two UINT32 (the start of the
data is then undefined), dimensions that are negative as int64 or whose product overflows
64 bits, rows that are not whole blocks, duplicate names, data past the end of the file.
A header that reads but whose layout llama.cpp would refuse, or whose data ranges are
shared, is returned with `problems`: overlapping data ranges, offsets not a multiple of the
alignment (and a `general.alignment` that disagrees with where the tensors lie), tensors not
stored back to back in header order, empty or over-long names, more than 4 dimensions, a zero
dimension, and bytes after the last tensor. A tensor count one too high usually reads the
padding before the data as an extra tensor with an empty name at offset 0: that shows up as
the empty-name and overlap problems (or, when the padding is short, as data past the end).
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType, GGUFValueType

from .errors import FormatError, UnsupportedError

_VT = GGUFValueType
_SCALAR = {  # value type -> (struct code, numpy dtype code)
    _VT.UINT8: ("B", "u1"), _VT.INT8: ("b", "i1"), _VT.BOOL: ("?", "?"),
    _VT.UINT16: ("H", "u2"), _VT.INT16: ("h", "i2"),
    _VT.UINT32: ("I", "u4"), _VT.INT32: ("i", "i4"), _VT.FLOAT32: ("f", "f4"),
    _VT.UINT64: ("Q", "u8"), _VT.INT64: ("q", "i8"), _VT.FLOAT64: ("d", "f8"),
}
_VALUE_TYPES = {int(t): t for t in _VT}
_MIN_ITEM_BYTES = {_VT.STRING: 8, _VT.ARRAY: 12}  # u64 length; u32 type + u64 count
_GGML_TYPES = {int(t): t for t in GGMLQuantizationType}
MAX_DIMS = 8  # ggml uses 4; a little room, then it is garbage
GGML_MAX_DIMS = 4
GGML_MAX_NAME = 64  # llama.cpp refuses tensor names of this many bytes or more
MAX_DEPTH = 4  # arrays of arrays: llama.cpp writes none; a few levels, then it is garbage
MAX_PROBLEMS = 50  # a badly garbled layout would otherwise list every tensor pair
_INT64_LIMIT = 2**63  # llama.cpp reads ne and element counts as int64


@dataclass
class KV:
    key: str
    type: GGUFValueType
    value: Any  # arrays: a list of the first items (None for nested arrays)
    item_type: GGUFValueType | None = None
    length: int | None = None  # arrays: the full item count

    @property
    def truncated(self) -> bool:
        return self.length is not None and (self.value is None or len(self.value) < self.length)


@dataclass
class TensorInfo:
    name: str
    type: GGMLQuantizationType
    ne: list[int]  # ne0 first: the row (contiguous) dimension leads
    offset: int  # absolute byte offset of the data in the file
    n_elements: int
    n_bytes: int


@dataclass(frozen=True)
class Problem:
    """Something llama.cpp would refuse, or data shared between tensors, in a header that
    reads: `tensor` is None for the file as a whole."""

    tensor: str | None
    problem: str


@dataclass
class GGUFHeader:
    path: Path
    version: int
    n_tensors: int
    n_kv: int
    big_endian: bool
    alignment: int
    data_offset: int
    file_size: int
    kv: list[KV] = field(default_factory=list)
    tensors: list[TensorInfo] = field(default_factory=list)
    alignment_key: bool = False  # general.alignment was present
    problems: list[Problem] = field(default_factory=list)


def _float(x: float, t: GGUFValueType) -> float | str:
    # str(np.float32) is the shortest text that reads back as the same float32 (0.1, not
    # 0.10000000149011612). JSON has no NaN/Infinity, so those stay text.
    v = float(str(np.float32(x))) if t == _VT.FLOAT32 else float(x)
    return v if math.isfinite(v) else str(v)


def _q(s: str) -> str:
    """A name or key for a message: quoted, and cut (a garbled length can make it megabytes)."""
    return repr(s if len(s) <= 80 else s[:80] + "…")


class _Cursor:
    def __init__(self, buf: mmap.mmap, path: Path, errors: str = "backslashreplace") -> None:
        self.buf, self.path, self.e, self.pos = buf, path, "<", 0
        self.errors = errors  # how metadata keys and string values are decoded

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > len(self.buf):
            raise FormatError(f"{self.path}: truncated or garbled GGUF header ({what} at byte {self.pos} "
                              f"runs past the end of the {len(self.buf)}-byte file)")

    def num(self, code: str, what: str) -> Any:
        size = struct.calcsize(code)
        self.need(size, what)
        (v,) = struct.unpack_from(self.e + code, self.buf, self.pos)
        self.pos += size
        return v

    def string(self, what: str, keep: bool = True, errors: str | None = None) -> str | None:
        n = self.num("Q", what)
        self.need(n, what)
        s = bytes(self.buf[self.pos:self.pos + n]).decode("utf-8", errors or self.errors) if keep else None
        self.pos += n
        return s

    def vtype(self, what: str) -> GGUFValueType:
        raw = self.num("I", what)
        if raw not in _VALUE_TYPES:
            raise FormatError(f"{self.path}: {what} has unknown GGUF value type {raw}")
        return _VALUE_TYPES[raw]

    def value(self, t: GGUFValueType, what: str, keep: int | None, depth: int = 0) -> KV:
        """Read one value; `keep` = array items to decode (None: all)."""
        if t in _SCALAR:
            v = self.num(_SCALAR[t][0], what)
            return KV("", t, _float(v, t) if t in (_VT.FLOAT32, _VT.FLOAT64) else v)
        if t == _VT.STRING:
            return KV("", t, self.string(what))
        if depth >= MAX_DEPTH:
            raise FormatError(f"{self.path}: {what} nests arrays more than {MAX_DEPTH} deep (garbled?)")
        item = self.vtype(what)
        count = self.num("Q", what)
        # every item takes at least its smallest encoding: a count the rest of the file cannot
        # hold fails here, before any loop or allocation
        self.need(count * _MIN_ITEM_BYTES.get(item, 1), f"{what} ({count} array items)")
        n_keep = count if keep is None else min(count, keep)
        if item in _SCALAR:
            dt = np.dtype(self.e + _SCALAR[item][1])
            self.need(count * dt.itemsize, what)
            arr = np.frombuffer(self.buf, dt, count=n_keep, offset=self.pos)
            self.pos += count * dt.itemsize
            vals: list | None = [_float(x, item) for x in arr] if item in (_VT.FLOAT32, _VT.FLOAT64) else arr.tolist()
        elif item == _VT.STRING:
            vals = []
            for i in range(count):  # every length is read; only the kept items are decoded
                v = self.string(what, keep=i < n_keep)
                if i < n_keep:
                    vals.append(v)
        else:  # arrays of arrays: walked for their length, not expanded
            for _ in range(count):
                self.value(item, what, 0, depth + 1)
            vals = None
        return KV("", t, vals, item, count)


def read_gguf_header(path: str | Path, max_array_items: int | None = None, *,
                     exact_strings: bool = False) -> GGUFHeader:
    """Metadata and tensor infos of a GGUF file. Raises FormatError (naming the file) for
    anything truncated or garbled, UnsupportedError for versions other than 2 and 3.

    Strings that are not UTF-8 (a token holding part of a multi-byte character, say) are
    decoded with 'backslashreplace' for display, or with exact_strings with
    'surrogateescape' (metadata keys and values; tensor names stay displayable), so that
    `stored_bytes(s)` gives back exactly the bytes in the file: GGUF input copies them."""
    path = Path(path)
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size < 24:
            raise FormatError(f"{path}: truncated GGUF file ({size} bytes)")
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        return _read(buf, path, size, max_array_items, "surrogateescape" if exact_strings else "backslashreplace")
    finally:
        buf.close()


def stored_bytes(s: str) -> bytes:
    """A string of an exact_strings header as the bytes the file stores."""
    return s.encode("utf-8", "surrogateescape")


def _read(buf: mmap.mmap, path: Path, size: int, keep: int | None, errors: str) -> GGUFHeader:
    c = _Cursor(buf, path, errors)
    if buf[:4] != b"GGUF":
        raise FormatError(f"{path}: not a GGUF file (magic bytes {bytes(buf[:4])!r})")
    c.pos = 4
    version = c.num("I", "version")
    if version & 0xFFFF == 0:  # byte-swapped: a big-endian file
        c.e, c.pos = ">", 4
        version = c.num("I", "version")
    if version not in (2, 3):
        raise UnsupportedError(f"{path}: GGUF version {version} is not supported (versions 2 and 3 are)")
    n_tensors, n_kv = c.num("Q", "tensor count"), c.num("Q", "metadata count")
    if n_tensors > size or n_kv > size:
        raise FormatError(f"{path}: garbled GGUF header (claims {n_kv} metadata entries and "
                          f"{n_tensors} tensors in a {size}-byte file)")
    h = GGUFHeader(path, version, n_tensors, n_kv, c.e == ">", GGUF_DEFAULT_ALIGNMENT, 0, size)
    seen: set[str] = set()
    for i in range(n_kv):
        key = c.string(f"metadata key #{i}")
        kv = c.value(c.vtype(f"metadata {_q(key)} type"), f"metadata {_q(key)}", keep)
        if key in seen:
            raise FormatError(f"{path}: metadata key {_q(key)} appears twice")
        seen.add(key)
        kv.key = key
        h.kv.append(kv)
        if key == "general.alignment":
            a = kv.value
            if kv.type != _VT.UINT32 or a == 0 or a & (a - 1):
                raise FormatError(f"{path}: general.alignment must be a power-of-two UINT32 (where the tensor "
                                  f"data starts depends on it), not {kv.type.name} {repr(a)[:80]}")
            h.alignment, h.alignment_key = a, True
    raw_tensors = []
    for i in range(n_tensors):
        name = c.string(f"tensor #{i} name", errors="backslashreplace")  # names are text for the writer
        n_dims = c.num("I", f"tensor {_q(name)} dims")
        if n_dims > MAX_DIMS:
            raise FormatError(f"{path}: garbled GGUF header (tensor {_q(name)} claims {n_dims} dimensions)")
        ne = [c.num("Q", f"tensor {_q(name)} shape") for _ in range(n_dims)]
        gtype = c.num("I", f"tensor {_q(name)} type")
        if gtype not in _GGML_TYPES or _GGML_TYPES[gtype] not in GGML_QUANT_SIZES:
            raise FormatError(f"{path}: tensor {_q(name)} has unknown ggml type {gtype}")
        raw_tensors.append((name, _GGML_TYPES[gtype], ne, c.num("Q", f"tensor {_q(name)} offset")))
    h.data_offset = -(-c.pos // h.alignment) * h.alignment
    names: set[str] = set()
    for name, gt, ne, rel in raw_tensors:
        if name in names:
            raise FormatError(f"{path}: tensor {_q(name)} appears twice")
        names.add(name)
        h.tensors.append(_tensor(path, size, h.data_offset, name, gt, ne, rel))
    h.problems = layout_problems(h)
    return h


def _tensor(path: Path, size: int, data_offset: int, name: str, gt: GGMLQuantizationType, ne: list[int],
            rel: int) -> TensorInfo:
    """One tensor's info, its size checked against its type and the file."""
    block, type_size = GGML_QUANT_SIZES[gt]
    # llama.cpp reads ne as int64 and refuses negative ones and element counts past INT64_MAX
    if any(d >= _INT64_LIMIT for d in ne) or math.prod(max(d, 1) for d in ne) >= _INT64_LIMIT:
        raise FormatError(f"{path}: tensor {_q(name)} has shape {ne}, whose element count does not fit "
                          f"in 64 bits (garbled header?)")
    n = math.prod(ne)
    if ne and ne[0] % block:
        raise FormatError(f"{path}: tensor {_q(name)} has rows of {ne[0]}, not a multiple of "
                          f"{gt.name}'s block of {block}")
    t = TensorInfo(name, gt, ne, data_offset + rel, n, n // block * type_size)
    if t.offset + t.n_bytes > size:
        raise FormatError(f"{path}: tensor {_q(name)} ends at byte {t.offset + t.n_bytes}, past the end "
                          f"of the {size}-byte file (truncated download?)")
    return t


def _padded(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


def layout_problems(h: GGUFHeader) -> list[Problem]:
    """What llama.cpp's loader would refuse (or silently misread) in a header that reads: see
    the module doc. At most MAX_PROBLEMS, then one line counting the rest."""
    out: list[Problem] = []
    for i, t in enumerate(h.tensors):
        raw = len(t.name.encode("utf-8", "surrogateescape"))
        if raw == 0:
            out.append(Problem(t.name, f"tensor #{i} has an empty name (a tensor count one too high reads "
                                       "the padding before the data as a tensor)"))
        elif raw >= GGML_MAX_NAME:
            out.append(Problem(t.name, f"name is {raw} bytes long; llama.cpp refuses names of "
                                       f"{GGML_MAX_NAME} bytes or more"))
        if len(t.ne) > GGML_MAX_DIMS:
            out.append(Problem(t.name, f"has {len(t.ne)} dimensions; ggml has at most {GGML_MAX_DIMS}"))
        if t.n_elements == 0:
            out.append(Problem(t.name, f"has a zero dimension (shape {t.ne}): it holds no data"))
    # the order rule only says something new when misalignment or overlap does not explain it
    layout = _alignment_problems(h) + _overlaps(h.tensors)
    out += layout or _order_problems(h)
    if h.tensors:
        end = _padded(max(t.offset + t.n_bytes for t in h.tensors), h.alignment)
        if h.file_size > end:
            out.append(Problem(None, f"{h.file_size - end:,} bytes after the last tensor's data belong to no "
                                     "tensor (a tensor count too low, or appended data?)"))
    if len(out) > MAX_PROBLEMS:
        out = out[:MAX_PROBLEMS] + [Problem(None, f"... and {len(out) - MAX_PROBLEMS:,} more problems")]
    return out


def _alignment_problems(h: GGUFHeader) -> list[Problem]:
    rel = [t.offset - h.data_offset for t in h.tensors]
    bad = [(t, r) for t, r in zip(h.tensors, rel) if r % h.alignment]
    out = [Problem(t.name, f"data offset {r:,} is not a multiple of the alignment {h.alignment}")
           for t, r in bad]
    if bad:
        g = math.gcd(*rel)
        fits = g & -g  # the largest power of two dividing every offset
        source = "general.alignment" if h.alignment_key else "the default alignment"
        out.insert(0, Problem(None, f"{source} is {h.alignment}, but the tensor offsets are laid out for "
                                    f"{fits}: llama.cpp will refuse the file"))
    return out


def _overlaps(tensors: list[TensorInfo]) -> list[Problem]:
    """Pairs of tensors whose byte ranges share bytes (one sweep over ranges sorted by start)."""
    out: list[Problem] = []
    spans = sorted((t.offset, t.offset + t.n_bytes, t.name) for t in tensors if t.n_bytes)
    reach = (-1, -1, "")  # the span reaching furthest so far
    for start, end, name in spans:
        if start < reach[1]:
            out.append(Problem(name, f"data (bytes {start:,}..{end:,}) overlaps the data of tensor "
                                     f"{_q(reach[2])} (bytes {reach[0]:,}..{reach[1]:,})"))
            if len(out) > MAX_PROBLEMS:
                break
        if end > reach[1]:
            reach = (start, end, name)
    return out


def _order_problems(h: GGUFHeader) -> list[Problem]:
    """llama.cpp wants each tensor right after the previous one (in header order), padded to
    the alignment; it stops at the first that is not (gguf.cpp: "tensor has offset X, expected Y")."""
    expected = 0
    for t in h.tensors:
        rel = t.offset - h.data_offset
        if rel != expected:
            return [Problem(t.name, f"data offset {rel:,}, but llama.cpp expects {expected:,} (tensors must be "
                                    "stored back to back in header order, each padded to the alignment)")]
        expected += _padded(t.n_bytes, h.alignment)
    return []
