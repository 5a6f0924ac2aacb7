"""Importance statistics of the kind llama.cpp calls an importance matrix ("imatrix").

For every linear weight W (out x in) and every input channel j, the mean of x_j^2 over
all calibration tokens. Importance-weighted rounding (llama.cpp's quantize with
--imatrix, our kquant scheme) minimises sum_j imp_j * (w_j - q_j)^2 per row: the
diagonal of the layer's Hessian X^T X, which is what the output error depends on when
channels are treated as independent.

An entry holds raw sums and token counts, so statistics from several runs can be added;
the mean is taken when read. Entries are keyed by GGUF tensor name ("blk.0.attn_q.weight")
because llama.cpp's files are and the GGUF writer looks them up by that name.

Files, both as written by llama.cpp's tools/imatrix (llama.cpp reads either):

GGUF-based (current; what save() writes for any suffix but .dat):
    key general.type = "imatrix"
    key imatrix.datasets    [string]   the calibration text(s)
    key imatrix.chunk_count u32        number of sequences
    key imatrix.chunk_size  u32        tokens per sequence
    per weight NAME, two F32 tensors:
        NAME.in_sum2  ne = (n_in, n_mat)   sum of x^2 per channel (n_mat > 1 for MoE experts)
        NAME.counts   ne = (1, n_mat)      tokens seen (float, rounded on load)

Legacy binary ".dat" (little-endian, entries in name order):
    int32 n_entries
    n_entries x { int32 len; char name[len]; int32 ncall; int32 nval; float32 values[nval] }
    int32 chunk_count;  int32 len; char dataset[len]          (this trailer is optional)
  values are the mean times ncall (ncall = chunks the entry was seen in), so the reader
  divides by ncall; that is how llama.cpp's quantize reads them and how load() stores them
  (sums = values, count = ncall).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Iterable, Optional

import gguf
import numpy as np

from ..errors import FormatError, InputError
from ..sink.atomic import atomic_path

SUM_SUFFIX = ".in_sum2"
COUNT_SUFFIX = ".counts"


class ImportanceMatrix:
    """Per-weight sums of squared inputs and token counts, keyed by GGUF tensor name."""

    def __init__(self, *, datasets: Iterable[str] = (), chunk_count: int = 0, chunk_size: int = 0,
                 arch: Optional[str] = None) -> None:
        self._sums: dict[str, np.ndarray] = {}  # (n_mat, n_in) float64
        self._counts: dict[str, np.ndarray] = {}  # (n_mat,) float64
        self.datasets = list(datasets)
        self.chunk_count = chunk_count
        self.chunk_size = chunk_size
        self.arch = arch  # written as general.architecture when known

    # -- building ---------------------------------------------------------------------------
    def add(self, name: str, sum_sq: np.ndarray, count) -> None:
        """Add sums of squares (n_in,) or (n_mat, n_in) over `count` tokens (scalar or (n_mat,))."""
        s = np.asarray(sum_sq, dtype=np.float64)
        s = s.reshape(1, -1) if s.ndim == 1 else s
        c = np.broadcast_to(np.asarray(count, dtype=np.float64), (s.shape[0],)).copy()
        if name not in self._sums:
            self._sums[name], self._counts[name] = s.copy(), c
            return
        if self._sums[name].shape != s.shape:
            raise FormatError(f"importance entry {name}: shape {s.shape} does not match {self._sums[name].shape}")
        self._sums[name] += s
        self._counts[name] += c

    # -- reading ----------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(self._sums)

    def __contains__(self, name: str) -> bool:
        return name in self._sums

    def __len__(self) -> int:
        return len(self._sums)

    def sums(self, name: str) -> np.ndarray:
        return self._sums[name]

    def counts(self, name: str) -> np.ndarray:
        return self._counts[name]

    def get(self, name: str) -> Optional[np.ndarray]:
        """Mean of x^2 per input channel as float32: shape (n_in,), or (n_mat, n_in) for
        expert weights; None when there is no entry. A matrix never seen (count 0) gets
        ones, i.e. no weighting, as llama.cpp's quantize does."""
        if name not in self._sums:
            return None
        s, c = self._sums[name], self._counts[name]
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = np.where(c[:, None] > 0, s / np.maximum(c, 1)[:, None], 1.0).astype(np.float32)
        return mean[0] if mean.shape[0] == 1 else mean

    # -- files ------------------------------------------------------------------------------
    def save(self, path: Path | str) -> None:
        """Write llama.cpp's GGUF-based format, or the legacy format when the name ends in .dat."""
        path = Path(path)
        if not path.parent.exists():
            raise InputError(f"{path.parent}: output directory does not exist")
        with atomic_path(path) as tmp:
            if path.suffix == ".dat":
                tmp.write_bytes(self._legacy_bytes())
            else:
                self._write_gguf(tmp)

    def _write_gguf(self, path: Path) -> None:
        w = gguf.GGUFWriter(path, self.arch or "")  # an empty arch string writes no key
        w.add_string(gguf.Keys.General.TYPE, gguf.GGUFType.IMATRIX)
        # llama.cpp's quantize refuses a GGUF imatrix without all three keys
        w.add_key_value(gguf.Keys.IMatrix.DATASETS, list(self.datasets), gguf.GGUFValueType.ARRAY,
                        sub_type=gguf.GGUFValueType.STRING)
        w.add_uint32(gguf.Keys.IMatrix.CHUNK_COUNT, int(self.chunk_count))
        w.add_uint32(gguf.Keys.IMatrix.CHUNK_SIZE, int(self.chunk_size))
        for name in self.names():
            w.add_tensor(name + SUM_SUFFIX, self._sums[name].astype(np.float32))
            w.add_tensor(name + COUNT_SUFFIX, self._counts[name].astype(np.float32).reshape(-1, 1))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    def _legacy_bytes(self) -> bytes:
        chunk = max(int(self.chunk_size), 1)
        out = [struct.pack("<i", len(self._sums))]
        for name in self.names():
            s, c = self._sums[name], self._counts[name]
            ncall = max(int(-(-c.max() // chunk)), 1)  # ceiling, as llama.cpp: never 0
            mean = self.get(name).reshape(-1).astype(np.float64)
            raw = name.encode("utf-8")
            out += [struct.pack("<i", len(raw)), raw, struct.pack("<ii", ncall, s.size),
                    (mean * ncall).astype("<f4").tobytes()]
        dataset = (self.datasets[-1] if self.datasets else "").encode("utf-8")
        out += [struct.pack("<ii", int(self.chunk_count), len(dataset)), dataset]
        return b"".join(out)

    @classmethod
    def load(cls, path: Path | str) -> "ImportanceMatrix":
        """Read either llama.cpp format (told apart by the GGUF magic)."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: importance matrix file not found")
        with path.open("rb") as f:
            magic = f.read(4)
        if magic == b"GGUF":
            return cls._load_gguf(path)
        return cls._load_legacy(path)

    @classmethod
    def _load_gguf(cls, path: Path) -> "ImportanceMatrix":
        # the bounded header parser: a damaged file is one FormatError, never a wild read
        from ..gguf_header import read_gguf_header
        from ..source.gguf_input import GGUFData, refuse_layout_problems

        h = read_gguf_header(path)
        refuse_layout_problems(h)
        kvs = {kv.key: kv for kv in h.kv}

        def field(key, default, types):
            kv = kvs.get(key)
            if kv is None:
                return default
            if kv.type not in types:
                raise FormatError(f"{path}: metadata {key} is {kv.type.name}, expected {types[0].name}")
            return kv.value

        vt = gguf.GGUFValueType
        ints = (vt.UINT32, vt.INT32, vt.UINT64, vt.INT64, vt.UINT16, vt.INT16, vt.UINT8, vt.INT8)
        kind = field(gguf.Keys.General.TYPE, gguf.GGUFType.IMATRIX, (vt.STRING,))
        if kind != gguf.GGUFType.IMATRIX:
            raise FormatError(f"{path}: a GGUF of type {kind!r}, not an importance matrix")
        keys = gguf.Keys.IMatrix
        datasets = field(keys.DATASETS, [], (vt.ARRAY,))
        if not all(isinstance(d, str) for d in datasets or ()):
            raise FormatError(f"{path}: metadata {keys.DATASETS} should be an array of strings")
        m = cls(datasets=datasets or [], chunk_count=field(keys.CHUNK_COUNT, 0, ints),
                chunk_size=field(keys.CHUNK_SIZE, 0, ints),
                arch=field(gguf.Keys.General.ARCHITECTURE, None, (vt.STRING,)))
        data = GGUFData(h)
        sums, counts = {}, {}
        for t in h.tensors:
            for suffix, into in ((SUM_SUFFIX, sums), (COUNT_SUFFIX, counts)):
                if t.name.endswith(suffix):
                    if t.type != gguf.GGMLQuantizationType.F32:
                        raise FormatError(f"{path}: tensor {t.name} is {t.type.name}; imatrix tensors are F32")
                    into[t.name[: -len(suffix)]] = _statistics(data.float32(t), f"{path}: tensor {t.name}")
        if not sums:
            raise FormatError(f"{path}: no importance entries (no *{SUM_SUFFIX} tensors); is this an imatrix file?")
        for name in sorted(set(sums) | set(counts)):
            if name not in sums or name not in counts:
                raise FormatError(f"{path}: {name} has {'no' if name not in sums else 'a'} {SUM_SUFFIX} tensor "
                                  f"but {'no' if name not in counts else 'a'} {COUNT_SUFFIX} tensor")
            n_mat = counts[name].size
            if not n_mat or not sums[name].size or sums[name].size % n_mat:
                raise FormatError(f"{path}: {name}: {sums[name].size} sums do not split into {n_mat} matrices")
            m.add(name, sums[name].reshape(n_mat, -1), np.round(counts[name]))
        return m

    @classmethod
    def _load_legacy(cls, path: Path) -> "ImportanceMatrix":
        data = path.read_bytes()
        pos = 0

        def take(fmt: str):
            nonlocal pos
            size = struct.calcsize(fmt)
            if pos + size > len(data):
                raise FormatError(f"{path}: truncated legacy imatrix file (needed {size} bytes at offset {pos})")
            vals = struct.unpack_from(fmt, data, pos)
            pos += size
            return vals

        (n_entries,) = take("<i")
        if n_entries < 1:
            raise FormatError(f"{path}: not an importance matrix (neither GGUF nor a legacy file with entries)")
        entries = []
        for _ in range(n_entries):
            (n,) = take("<i")
            if n < 1 or n > 4096:
                raise FormatError(f"{path}: implausible name length {n} at offset {pos - 4}; not a legacy imatrix")
            name = bytes(take(f"<{n}s")[0]).decode("utf-8", errors="replace")
            ncall, nval = take("<ii")
            if nval < 1:
                raise FormatError(f"{path}: entry {name} has {nval} values")
            values = _statistics(np.array(take(f"<{nval}f")), f"{path}: entry {name}")
            entries.append((name, ncall, values))
        m = cls()
        if pos < len(data):  # optional trailer: chunk count, then the dataset's name
            (m.chunk_count,) = take("<i")
            if pos + 4 <= len(data):
                (n,) = take("<i")
                if n > 0:
                    m.datasets.append(bytes(take(f"<{n}s")[0]).decode("utf-8", errors="replace"))
        for name, ncall, values in entries:
            # llama.cpp's quantize divides by ncall, or takes the values as they are when it is 0
            m.add(name, values, ncall if ncall > 0 else 1)
        return m


def _statistics(values: np.ndarray, what: str) -> np.ndarray:
    """Sums of squares or token counts as float64: finite and not negative, or the file is
    damaged (NaN importance would make every scale search pick garbage)."""
    with np.errstate(all="ignore"):  # a damaged value is reported below, not warned about
        v = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.isfinite(v).all():
        raise FormatError(f"{what} holds NaN or Inf values; the importance matrix is damaged")
    if (v < 0).any():
        raise FormatError(f"{what} holds negative values; sums of squares and counts cannot be negative")
    return v
