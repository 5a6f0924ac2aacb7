"""Checkpoints whose linear weights are already quantized, read as float weights.

Each quantized module P becomes one handle named P.weight with the (out, in) shape of
the weight it stands for, decoded on the fly a slice of rows at a time; the tensors it is
stored as (scales, zero points, packed codes, g_idx, shape) are consumed, never emitted.
The converter then quantizes it like any float weight, so both roundings' errors add up
(the plan says so, as for requantizing a GGUF).

    FP8      P.weight F8_E4M3 / F8_E5M2 with a float scale it is multiplied by:
             P.weight_scale_inv in blocks (DeepSeek-V3, Qwen3-FP8: weight_block_size
             from quantization_config, 128x128 by default), or P.weight_scale / _inv per
             tensor, per output channel or per group of input columns
    int8     P.weight I8 with P.weight_scale (and P.weight_zero_point): compressed-tensors
             int-quantized
    packed   P.weight_packed (compressed-tensors pack-quantized), P.qweight (AutoGPTQ or
             AutoAWQ, told apart by quantization_config.quant_method or the shapes):
             source/int_packed.py

Activation and KV-cache scales (input_scale, k_scale, v_scale) describe how a runtime
would quantize activations; they carry no weight and are dropped."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from ..errors import FormatError, UnsupportedError
from . import int_packed
from .finite import check_finite
from .fp8 import FP8_DTYPES, TABLES
from .safetensors_file import FLOAT_DTYPES, SafetensorsFile, TensorHandle
from .safetensors_file import _widen as widen

RUNTIME_SCALES = (".input_scale", ".input_scale_ub", ".k_scale", ".v_scale", ".q_scale", ".kv_scale")
DEFAULT_BLOCK = (128, 128)


@dataclass
class Quantized:
    """One quantized module found in the checkpoint."""
    name: str  # the weight it stands for: P.weight
    shape: tuple[int, int]
    dtype: str  # the stored codes: F8_E4M3, I8, I4...
    kind: str  # for messages: "FP8 (128x128 block scales)", "GPTQ int4"...
    parts: tuple[str, ...]  # every stored tensor it consumes, the codes first
    rows: Callable[[int, int], np.ndarray]
    by_rows: bool = True  # the codes are stored a weight row after another (not GPTQ's, AWQ's)


class Parts:
    """The stored tensors of one checkpoint, by name: float ones through their handles,
    integer and FP8 ones as stored (read-only views of the mmap)."""

    def __init__(self, handles: dict[str, TensorHandle], files: list[SafetensorsFile], config: dict) -> None:
        self.handles = handles
        self.file = {name: f for f in files for name in f.names()}
        q = config.get("quantization_config")
        self.qc = q if isinstance(q, dict) else {}
        self.method = str(self.qc.get("quant_method", "")).lower()

    def release(self, name: str, rows: Optional[tuple[int, int, int]] = None) -> None:
        """Drop a stored tensor's mapped pages from the resident set (see
        SafetensorsFile.release): all of them, or those of rows (start, stop, of n)."""
        f = self.file[name]
        if rows is None:
            f.release(name)
            return
        start, stop, n = rows
        per = f.entries[name].n_bytes // max(1, n)
        f.release(name, start * per, stop * per)

    def has(self, name: str) -> bool:
        return name in self.handles

    def raw(self, name: str) -> np.ndarray:
        return self.file[name].raw(name)

    def check_float(self, name: str) -> str:
        h = self.handles[name]
        if h.dtype not in FLOAT_DTYPES:
            raise FormatError(f"{h.source}: tensor {name!r} should hold float scales, not {h.dtype}")
        return name

    def check_int(self, name: str, dtypes: tuple[str, ...] = ("I32", "I64", "I16", "I8", "U8")) -> str:
        """Packed words, zero points and group indices are integers: read as floats (or
        floats read as them) they decode to other weights with no error."""
        h = self.handles[name]
        if h.dtype not in dtypes:
            raise FormatError(f"{h.source}: tensor {name!r} should hold {' or '.join(dtypes)} integers, not {h.dtype}")
        return name

    def floats(self, name: str, shape: Optional[tuple[int, ...]] = None, rows: slice = slice(None),
               cols: slice = slice(None)) -> np.ndarray:
        """A slice of a float tensor (viewed as `shape`) as float32: scales are read when a
        slice of the weight needs them, never all at once (a 70B GPTQ model's would be GBs)."""
        arr = self.raw(self.check_float(name))
        arr = arr.reshape(shape) if shape is not None else arr
        return widen(np.ascontiguousarray(arr[rows, cols]), self.handles[name].dtype)

    def need(self, owner: str, name: str) -> str:
        if name not in self.handles:
            h = self.handles[owner]
            raise FormatError(f"{h.source}: tensor {owner!r} is stored quantized, but {name!r} (its "
                              f"{name.rsplit('.', 1)[-1]}) is not in the checkpoint")
        return name

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.handles[name].shape)

    def where(self, name: str) -> str:
        return f"{self.handles[name].source}: tensor {name!r}"


def _block(parts: Parts) -> tuple[int, int]:
    b = parts.qc.get("weight_block_size")
    if isinstance(b, list) and len(b) == 2 and all(isinstance(x, int) and x > 0 for x in b):
        return b[0], b[1]
    return DEFAULT_BLOCK


def scale_grid(scale_shape: tuple[int, ...], shape: tuple[int, int], block: tuple[int, int],
               what: str) -> tuple[int, int]:
    """(rows, columns) of the weight each scale covers, from the scale's shape: one for
    the tensor, per output channel, per block (ceil(out/b0), ceil(in/b1)), per group."""
    n_out, n_in = shape
    size = math.prod(scale_shape)
    s2 = tuple(scale_shape) if len(scale_shape) == 2 else (size, 1) if len(scale_shape) == 1 else (1, 1)
    if size == 1:
        return n_out, n_in
    if s2 == (n_out, 1):
        return 1, n_in
    if s2 == (-(-n_out // block[0]), -(-n_in // block[1])):
        return block
    if s2[0] == n_out and n_in % s2[1] == 0:
        return 1, n_in // s2[1]
    raise FormatError(f"{what}: scale shape {list(scale_shape)} fits none of the layouts of a "
                      f"{list(shape)} weight (one scale, per output channel, {block[0]}x{block[1]} blocks, "
                      "per group of columns)")


def grid_words(grid: tuple[int, int], shape: tuple[int, int]) -> str:
    if grid == shape:
        return "one scale"
    if grid == (1, shape[1]):
        return "per-channel scales"
    return f"scales per {grid[1]} columns" if grid[0] == 1 else f"{grid[0]}x{grid[1]} block scales"


Cells = Callable[[slice], np.ndarray]  # rows of cells -> 2-D float32 (a scale or zero point per cell)


def grid_rows(codes: Callable[[int, int], np.ndarray], scales: Cells, zeros: Optional[Cells],
              grid: tuple[int, int], start: int, stop: int) -> np.ndarray:
    """Rows start..stop of (codes - zero) * scale, with scales and zero points given per
    cell of `grid` (grid[0] x grid[1] weights each), one column of cells at a time: no
    temporary the size of the rows."""
    x = codes(start, stop)
    br, bc = grid
    r0 = start // br
    cells = slice(r0, -(-stop // br))
    scale = scales(cells)
    zero = None if zeros is None else zeros(cells)
    r = np.arange(start, stop) // br - r0
    for c in range(scale.shape[1]):
        cols = slice(c * bc, (c + 1) * bc)
        if zero is not None:
            x[:, cols] -= zero[r, c][:, None]
        x[:, cols] *= scale[r, c][:, None]
    return x


def _fp8(parts: Parts, p: str) -> Optional[Quantized]:
    w = p + ".weight"
    dtype = parts.handles[w].dtype
    for suffix in (".weight_scale_inv", ".weight_scale"):
        if parts.has(p + suffix):
            s_name = p + suffix
            break
    else:
        raise FormatError(f"{parts.where(w)} is {dtype} without a scale (weight_scale_inv or weight_scale); "
                          "qconvert cannot tell its values")
    shape = parts.shape(w)
    if len(shape) != 2:
        raise UnsupportedError(f"{parts.where(w)}: {dtype} tensors of {len(shape)} dimensions are not supported")
    grid = scale_grid(parts.shape(s_name), shape, _block(parts), parts.where(s_name))
    cells = (-(-shape[0] // grid[0]), -(-shape[1] // grid[1]))
    parts.check_float(s_name)

    def rows(a: int, b: int) -> np.ndarray:  # decoded and scaled in one pass (NumPy twin: grid_rows)
        from ..kernels.fp8_scaled import fp8_grid_rows

        scale = parts.floats(s_name, cells, slice(a // grid[0], -(-b // grid[0])))
        return fp8_grid_rows(parts.raw(w)[a:b], TABLES[dtype], scale, a, grid)

    kind = f"FP8 {dtype[3:]} ({grid_words(grid, shape)})"
    return Quantized(w, shape, dtype, kind, (w, s_name), rows)


def _int8(parts: Parts, p: str) -> Quantized:
    w, s_name, z_name = p + ".weight", p + ".weight_scale", p + ".weight_zero_point"
    shape = parts.shape(w)
    grid = scale_grid(parts.shape(s_name), shape, _block(parts), parts.where(s_name))
    cells = (-(-shape[0] // grid[0]), -(-shape[1] // grid[1]))
    parts.check_float(s_name)
    zeros = (lambda r: parts.raw(z_name).reshape(cells)[r].astype(np.float32)) if parts.has(z_name) else None
    used = (w, s_name) + ((z_name,) if zeros is not None else ())
    return Quantized(w, shape, "I8", "int8 (compressed-tensors)", used,
                     lambda a, b: grid_rows(lambda a, b: parts.raw(w)[a:b].astype(np.float32),
                                            lambda r: parts.floats(s_name, cells, r), zeros, grid, a, b))


def _packed(parts: Parts, p: str) -> Quantized:
    """compressed-tensors pack-quantized."""
    names = {k: p + ".weight_" + k for k in ("packed", "scale", "zero_point", "shape", "g_idx")}
    if parts.handles[names["packed"]].dtype != "I32":
        raise UnsupportedError(f"{parts.where(names['packed'])} is {parts.handles[names['packed']].dtype}, not "
                               "int32 words: a packing qconvert does not read (FP4 formats such as NVFP4)")
    parts.need(names["packed"], names["scale"])
    parts.need(names["packed"], names["shape"])
    parts.check_int(names["shape"])
    shape = tuple(int(x) for x in parts.raw(names["shape"]).reshape(-1))
    words = parts.shape(names["packed"])
    bits = next((b for b in (2, 3, 4, 5, 6, 7, 8) if len(shape) == 2 and words == (shape[0], -(-shape[1] * b // 32))),
                None)
    if bits is None:
        raise FormatError(f"{parts.where(names['packed'])}: shape {list(words)} is no packing of a {list(shape)} "
                          "weight (weight_shape)")
    parts.check_float(names["scale"])
    zp = parts.raw(parts.check_int(names["zero_point"], ("I32",))) if parts.has(names["zero_point"]) else None
    g_idx = parts.raw(parts.check_int(names["g_idx"])) if parts.has(names["g_idx"]) else None
    scale_shape = parts.shape(names["scale"])
    if g_idx is not None and len(scale_shape) == 2:
        _check_groups(parts, names["g_idx"], g_idx, scale_shape[1])
    used = tuple(n for n in names.values() if parts.has(n))
    kind = f"compressed-tensors int{bits} ({'asymmetric' if zp is not None else 'symmetric'})"
    def rows(a: int, b: int) -> np.ndarray:
        scale = parts.floats(names["scale"], rows=slice(a, b))
        return int_packed.ct_rows(parts.raw(names["packed"]), scale, zp, g_idx, bits, shape, a, b)

    return Quantized(p + ".weight", shape, f"I{bits}", kind, used, rows)


def _check_groups(parts: Parts, name: str, g_idx: Optional[np.ndarray], n_groups: int) -> None:
    """Group indices pick rows of the scales (the decoders do not bound-check them)."""
    if g_idx is None or not len(g_idx):
        return
    lo, hi = int(np.min(g_idx)), int(np.max(g_idx))
    if lo < 0 or hi >= n_groups:
        raise FormatError(f"{parts.where(name)}: group indices run from {lo} to {hi}, but the scales hold "
                          f"{n_groups} groups (0 to {n_groups - 1}); the checkpoint is damaged")


def _qweight(parts: Parts, p: str) -> Quantized:
    """AutoGPTQ or AutoAWQ, decoded by numba (kernels/packed_int.py; NumPy twins in int_packed)."""
    from ..kernels import packed_int

    qw, qz, sc, gi = (p + s for s in (".qweight", ".qzeros", ".scales", ".g_idx"))
    for n in (qz, sc):
        parts.need(qw, n)
    (r, c), (n_groups, n_out) = parts.shape(qw), parts.shape(sc)
    awq = parts.method == "awq" or (parts.method != "gptq" and c * 8 == n_out)
    parts.check_float(sc)
    for n in (qw, qz):
        parts.check_int(n, ("I32",))

    def scales(a: int, b: int) -> np.ndarray:  # the columns of output rows a..b
        return parts.floats(sc, cols=slice(a, b))
    if awq:
        if str(parts.qc.get("version", "gemm")).lower() != "gemm" or c * 8 != n_out:
            raise UnsupportedError(f"{parts.where(qw)}: AWQ layout {parts.qc.get('version')!r} with qweight "
                                   f"{[r, c]} is not supported (AutoAWQ GEMM 4-bit is)")
        shape, group = (n_out, r), r // n_groups
        return Quantized(p + ".weight", shape, "I4", f"AWQ int4 (groups of {group})", (qw, qz, sc),
                         lambda a, b: packed_int.awq_rows(parts.raw(qw), parts.raw(qz), scales(a, b), group, a, b),
                         by_rows=False)
    g_idx = parts.raw(parts.check_int(gi)) if parts.has(gi) else None
    _check_groups(parts, gi, g_idx, n_groups)
    bits = parts.qc.get("bits", 4)
    n_in = len(g_idx) if g_idx is not None else r * 32 // bits if isinstance(bits, int) and bits else 0
    if n_in and r * 32 % n_in == 0:
        bits = r * 32 // n_in
    if bits not in (2, 4, 8) or c != n_out or n_in == 0:
        raise UnsupportedError(f"{parts.where(qw)}: GPTQ qweight {[r, c]} with scales {[n_groups, n_out]} is not "
                               "a supported layout (AutoGPTQ 2, 4 or 8 bits)")
    zero_offset = 0 if str(parts.qc.get("checkpoint_format", "gptq")).lower() == "gptq_v2" else 1
    group = n_in // n_groups
    used = (qw, qz, sc) + ((gi,) if g_idx is not None else ())
    groups = int_packed.columns_to_groups(n_in, group, g_idx)
    return Quantized(p + ".weight", (n_out, n_in), f"I{bits}", f"GPTQ int{bits} (groups of {group})", used,
                     lambda a, b: packed_int.gptq_rows(parts.raw(qw), parts.raw(qz), scales(a, b), groups, bits,
                                                       zero_offset, a, b),
                     by_rows=False)


def find_quantized(parts: Parts) -> list[Quantized]:
    found = []
    for name, h in parts.handles.items():
        if name.endswith(".weight_packed"):
            found.append(_packed(parts, name[:-len(".weight_packed")]))
        elif name.endswith(".qweight"):
            found.append(_qweight(parts, name[:-len(".qweight")]))
        elif name.endswith(".weight") and h.dtype in FP8_DTYPES:
            found.append(_fp8(parts, name[:-len(".weight")]))
        elif name.endswith(".weight") and h.dtype == "I8" and parts.has(name + "_scale"):
            found.append(_int8(parts, name[:-len(".weight")]))
    return found


def handle_of(q: Quantized, source: str, parts: Parts) -> TensorHandle:
    what = f"{source}: tensor {q.name!r} (decoded from {q.dtype})"
    n = q.shape[0]

    def rows(start: int, stop: int) -> np.ndarray:
        out = q.rows(start, stop)
        # the pages read stay out of the resident set: a slice's own as it goes where the
        # codes are stored by rows, everything once the last row is read
        if q.by_rows:
            parts.release(q.parts[0], (start, stop, n))
        if stop >= n:
            for name in q.parts:
                parts.release(name)
        check_finite(out, "F32", what)  # a NaN code (FP8) or a non-finite scale
        return out

    h = TensorHandle(q.name, q.dtype, q.shape, lambda: rows(0, q.shape[0]), source)
    h.rows = rows  # read a slice of rows at a time (source_tensor.py)
    return h


def dequantized(config: dict, handles: dict[str, TensorHandle],
                files: list[SafetensorsFile]) -> tuple[dict[str, TensorHandle], dict[str, str]]:
    """`handles` with every quantized module's stored tensors replaced by one float handle
    (in the place of its first part) and runtime scales dropped; and {weight name: kind}
    of those decoded."""
    parts = Parts(handles, files, config)
    found = find_quantized(parts)
    if not found:
        return handles, {}
    first = {q.parts[0]: q for q in found}
    used = {n for q in found for n in q.parts}
    out: dict[str, TensorHandle] = {}
    for name, h in handles.items():
        if name in first:
            q = first[name]
            out[q.name] = handle_of(q, h.source, parts)
        elif name not in used and not name.endswith(RUNTIME_SCALES):
            out[name] = h
    return out, {q.name: q.kind for q in found}
