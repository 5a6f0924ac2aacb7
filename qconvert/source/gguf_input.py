"""A GGUF file as input: requantize an F32/F16/BF16 GGUF (or, when the user accepts the
quality cost, an already-quantized one).

The header goes through the bounded parser (gguf_header.read_gguf_header: every length
checked against the file, every tensor's byte range against the file size and its type's
block size). Tensor data is read lazily from a read-only mmap at those checked offsets, a
slice of rows at a time (every GGML type decodes each row on its own), each slice's pages
released once decoded; a 3-D tensor is a stack of slabs (experts) read the same way. A
header whose layout llama.cpp would refuse (overlapping data, misaligned offsets, over-long
names...) is refused here too: `qconvert inspect` lists the problems.

Metadata is carried over key by key, except what describes the file rather than the
model: the keys the writer sets anew (_OWN_KEYS), the data alignment (the writer lays out
the new file with its own), and a split file's `split.*` keys (the output is one file;
copied, they would make llama.cpp look for shards that do not exist).

A split set (gguf_split.py) is read whole, given any of its members: the metadata from the
first member, the tensors from every member in order, each member checked to be the one
its name says."""

from __future__ import annotations

import mmap
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

import gguf
import numpy as np

from ..errors import FormatError, InputError, UnsupportedError
from ..gguf_header import GGUFHeader, KV, TensorInfo, read_gguf_header, stored_bytes
from ..gguf_split import read_set
from .expert_stack import ExpertStack
from .finite import NonFiniteError, check_finite, count_nonfinite
from .safetensors_file import TensorHandle, release_pages
from .source_tensor import SourceTensor

FLOAT_TYPES = {"F32", "F16", "BF16"}
# quantized types a GGUF input's tensors keep as stored bytes when the plan keeps the type:
# MXFP4 is gpt-oss's own release format (llama.cpp's converter writes its experts so), not a
# rounding of a float model, so copying it is not a requantization
COPIED_TYPES = {"MXFP4"}
# keys that describe the file being written, not the model: the writer sets them anew
_OWN_KEYS = ("general.architecture", "general.file_type", "general.quantization_version")
# keys about this file's layout: never copied (see the module doc)
_LAYOUT_KEYS = ("general.alignment",)
_LAYOUT_PREFIXES = ("split.", "GGUF.")
_VT = gguf.GGUFValueType


def refuse_layout_problems(header: GGUFHeader) -> None:
    """What `inspect` reports as problems (overlapping or misaligned data, ...) is an error
    for a file qconvert reads data from: llama.cpp refuses such files too."""
    if not header.problems:
        return
    p = header.problems[0]
    more = f" (and {len(header.problems) - 1} more; `qconvert inspect` lists them)" \
        if len(header.problems) > 1 else ""
    raise FormatError(f"{header.path}: {'tensor ' + repr(p.tensor) + ': ' if p.tensor is not None else ''}"
                      f"{p.problem}{more}")


class GGUFData:
    """Tensor bytes of one GGUF file through a read-only mmap, at offsets the header reader
    has checked against the file's size; shared by model input and imatrix loading."""

    def __init__(self, header: GGUFHeader) -> None:
        self.h = header
        self._mm: mmap.mmap | None = None

    def _map(self) -> mmap.mmap:
        if self._mm is None:
            with open(self.h.path, "rb") as f:
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            if len(self._mm) != self.h.file_size:  # changed since its header was read
                raise FormatError(f"{self.h.path}: file changed size while being read")
        return self._mm

    def raw(self, t: TensorInfo) -> np.ndarray:
        """The stored bytes, shaped (rows..., bytes per row); a read-only view of the mmap."""
        if t.offset + t.n_bytes > self.h.file_size:  # the header reader refuses these; be sure
            raise FormatError(f"{self.h.path}: tensor {t.name!r} lies past the end of the file")
        data = np.frombuffer(self._map(), dtype=np.uint8, count=t.n_bytes, offset=t.offset)
        rows = [int(d) for d in reversed(t.ne[1:])]
        return data.reshape(*rows, -1) if t.n_bytes else data.reshape(*rows, 0)

    def decode(self, t: TensorInfo, raw: np.ndarray) -> np.ndarray:
        """Stored rows of t (..., bytes per row), all or some, as float32 (..., row width),
        a new array: every GGML type decodes each row on its own."""
        name = t.type.name
        if self.h.big_endian and name not in ("F32", "F16"):
            raise UnsupportedError(f"{self.h.path}: tensor {t.name!r} is {name} in a big-endian GGUF; only "
                                   "F32/F16 tensors of big-endian files can be read")
        order = ">" if self.h.big_endian else "<"
        if name == "F32":
            return raw.view(order + "f4").astype(np.float32)
        if name == "F16":
            return raw.view(order + "f2").astype(np.float32)
        if name == "BF16":
            return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
        try:
            # an Inf scale makes NaN here (inf * 0): the caller's NaN/Inf check reports it,
            # numpy's "invalid value" warning would only be noise before that error
            with np.errstate(all="ignore"):
                out = gguf.quants.dequantize(raw, t.type).astype(np.float32, copy=False)
        except NotImplementedError:
            raise UnsupportedError(f"{self.h.path}: tensor {t.name!r} is {name}, which qconvert cannot "
                                   "decode") from None
        return out.reshape(*raw.shape[:-1], -1)

    def float32(self, t: TensorInfo) -> np.ndarray:
        """The tensor decoded to float32 in numpy order (a new array)."""
        out = self.decode(t, self.raw(t)).reshape(tuple(int(d) for d in reversed(t.ne)))
        self.release(t.offset, t.offset + t.n_bytes)
        return out

    def release(self, begin: int, end: int) -> None:
        """Drop file bytes begin..end from the resident set once read (safetensors_file.py
        says why: RSS would otherwise count every page of the model ever touched)."""
        release_pages(self._mm, begin, end)

    def rows(self, t: TensorInfo, start: int, stop: int, expert: Optional[int] = None) -> np.ndarray:
        """Rows start..stop of axis 0 (with `expert`: of that slab of a 3-D tensor) as
        float32, checked for NaN/Inf, reading and keeping mapped only their bytes."""
        raw = self.raw(t)
        first = t.offset
        if expert is not None:
            raw = raw[expert]
            first += expert * raw.nbytes
        row_bytes = raw[0:1].nbytes
        out = self.decode(t, raw[start:stop])
        self.release(first + start * row_bytes, first + stop * row_bytes)
        try:
            check_finite(out, "F32", self._what(t))
        except NonFiniteError:
            raise NonFiniteError(self._what(t), *self._count_nonfinite(t)) from None
        return out

    def raw_copy(self, t: TensorInfo, expert: Optional[int] = None) -> np.ndarray:
        """A copy of the stored bytes (of one slab with `expert`), their pages released."""
        raw = self.raw(t)
        first = t.offset
        if expert is not None:
            raw = raw[expert]
            first += expert * raw.nbytes
        out = np.array(raw)
        self.release(first, first + raw.nbytes)
        return out

    def _count_nonfinite(self, t: TensorInfo) -> tuple[int, int]:
        """(NaN, Inf) of the whole decoded tensor, a few MB at a time: a slice's error
        names the counts a whole-tensor read reports."""
        raw = self.raw(t)
        raw = raw.reshape(-1, raw.shape[-1])
        step = max(1, (16 << 20) // max(1, 4 * int(t.ne[0])))
        nan = inf = 0
        for a in range(0, raw.shape[0], step):
            n, i = count_nonfinite(self.decode(t, raw[a:a + step]), "F32")
            nan, inf = nan + n, inf + i
            self.release(t.offset + a * raw.shape[1], t.offset + (a + step) * raw.shape[1])
        return nan, inf

    def _what(self, t: TensorInfo) -> str:
        return f"{self.h.path}: tensor {t.name!r}"

    def loader(self, t: TensorInfo) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            arr = self.float32(t)
            check_finite(arr, "F32", self._what(t))
            return arr

        return load


def _packed(d: GGUFData, t: TensorInfo, expert: Optional[int] = None) -> dict:
    """The SourceTensor fields of a tensor whose stored bytes are copied (COPIED_TYPES)."""
    if t.type.name not in COPIED_TYPES:
        return {}
    return {"packed_type": t.type.name, "packed_loader": partial(d.raw_copy, t, expert)}


def _slab_stack(d: GGUFData, t: TensorInfo, shape: tuple[int, ...]) -> ExpertStack:
    """A (n, rows, cols) tensor as n lazy slabs (experts), each read a slice of rows at a
    time: the writer never holds the stack, nor a large slab, whole."""
    parts = []
    for e in range(shape[0]):
        h = TensorHandle(f"{t.name}[{e}]", t.type.name, shape[1:], partial(d.rows, t, 0, shape[1], e),
                         str(d.h.path), partial(_slab_rows, d, t, e))
        parts.append(SourceTensor(t.name, t.name, shape[1:], t.type.name, h, **_packed(d, t, e)))
    stack = ExpertStack.of(t.name, t.name, parts)
    for k, v in _packed(d, t).items():
        setattr(stack, k, v)
    return stack


def _slab_rows(d: GGUFData, t: TensorInfo, expert: int, start: int, stop: int) -> np.ndarray:
    return d.rows(t, start, stop, expert)


def _is_text(s: str) -> bool:
    """False when an exact_strings string holds bytes that are not UTF-8 (as surrogates)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _plain(kv: KV, path: Path) -> Any:
    """A metadata value as GGUFWriter takes it. The header reader keeps non-finite floats
    as the text "nan"/"inf" (for JSON); they are numbers again here."""
    if kv.type in (_VT.FLOAT32, _VT.FLOAT64):
        return float(kv.value)
    if kv.type == _VT.ARRAY:
        if kv.value is None:
            raise UnsupportedError(f"{path}: metadata {kv.key!r} is an array of arrays, which qconvert "
                                   "cannot carry over")
        if kv.item_type in (_VT.FLOAT32, _VT.FLOAT64):
            return [float(v) for v in kv.value]
    return kv.value


def _read(path: Path) -> GGUFHeader:
    try:
        # every array in full, strings exactly as stored: the metadata is copied
        header = read_gguf_header(path, exact_strings=True)
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    refuse_layout_problems(header)
    return header


def kv_values(header: GGUFHeader) -> dict:
    return {kv.key: kv.value for kv in header.kv}


class GGUFInput:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        # a split set's members, first first; [the file] otherwise
        self.members = read_set(self.path, _read, kv_values, lambda h: len(h.tensors))
        self.header = self.members[0]  # the metadata
        self.kv = {kv.key: kv for kv in self.header.kv}
        self.data = [GGUFData(h) for h in self.members]
        arch = self.kv.get("general.architecture")
        if arch is None:
            raise FormatError(f"{self.path}: GGUF has no general.architecture key")
        if arch.type != _VT.STRING or not arch.value or not _is_text(arch.value):
            raise FormatError(f"{self.path}: general.architecture should be a non-empty UTF-8 string")
        self.arch_name = arch.value
        self._check_unique()

    @property
    def files(self) -> list[Path]:
        return [h.path for h in self.members]

    def _all(self) -> list[tuple[GGUFData, TensorInfo]]:
        return [(d, t) for d in self.data for t in d.h.tensors]

    def _check_unique(self) -> None:
        seen: dict[str, Path] = {}
        for d, t in self._all():
            if t.name in seen:
                raise FormatError(f"{d.h.path}: tensor {t.name!r} is also in {seen[t.name]}; the split set's "
                                  "files do not belong together")
            seen[t.name] = d.h.path

    def value(self, key: str, default=None):
        kv = self.kv.get(key)
        return default if kv is None else _plain(kv, self.path)

    def arch_value(self, suffix: str, default=None):
        return self.value(f"{self.arch_name}.{suffix}", default)

    def arch_int(self, suffix: str, default: int = 0, *, first_of_array: bool = False) -> int:
        """An integer model fact; per-layer arrays (head counts in some files) give their
        first item when `first_of_array`."""
        key = f"{self.arch_name}.{suffix}"
        v = self.value(key, default)
        if first_of_array and isinstance(v, list):
            v = v[0] if v else default
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise FormatError(f"{self.path}: metadata {key} should be a non-negative integer")
        return v

    def quantized_tensors(self) -> list[str]:
        return [t.name for _, t in self._all() if t.type.name not in FLOAT_TYPES and len(t.ne) > 1]

    def check_requantize(self, allow: bool) -> None:
        quantized = set(self.quantized_tensors())
        q = {t.name for _, t in self._all() if t.name in quantized and t.type.name not in COPIED_TYPES}
        if q and not allow:
            kinds = sorted({t.type.name for _, t in self._all() if t.name in q})
            raise InputError(
                f"{self.path}: {len(q)} tensors are already quantized ({', '.join(kinds)}); requantizing "
                "compounds rounding error (quality below quantizing the original weights). "
                "Convert from the F16/BF16/F32 model, or pass --allow-requantize to accept the loss"
            )

    def tensors(self) -> list[SourceTensor]:
        """Lazy tensors, read a slice of rows at a time by the writer (source/row_chunks.py);
        a 3-D tensor (experts) as a stack of per-slab tensors, each read by rows."""
        out = []
        for d, t in self._all():
            shape = tuple(int(n) for n in reversed(t.ne))
            if len(shape) == 3:
                out.append(_slab_stack(d, t, shape))
                continue
            rows = partial(d.rows, t) if len(shape) >= 2 else None
            h = TensorHandle(t.name, t.type.name, shape, d.loader(t), str(d.h.path), rows)
            out.append(SourceTensor(t.name, t.name, shape, t.type.name, h, **_packed(d, t)))
        return out

    def copy_metadata(self, w: gguf.GGUFWriter) -> None:
        for kv in self.header.kv:
            if kv.key in _OWN_KEYS or kv.key in _LAYOUT_KEYS or kv.key.startswith(_LAYOUT_PREFIXES):
                continue
            sub = kv.item_type if kv.type == _VT.ARRAY else None
            value = _plain(kv, self.path)
            # strings as the bytes stored: a token that is not UTF-8 on its own (half of a
            # multi-byte character) must reach llama.cpp unchanged. gguf-py writes bytes as is.
            if kv.type == _VT.STRING:
                value = stored_bytes(value)
            elif sub == _VT.STRING:
                value = [stored_bytes(v) for v in value]
            key = kv.key if _is_text(kv.key) else stored_bytes(kv.key)  # a bytes key is written as is too
            w.add_key_value(key, value, kv.type, sub_type=sub)
