"""AutoGPTQ and AutoAWQ weights decoded in one pass (numba, parallel over output rows): the
fast twins of source/int_packed.gptq_rows and awq_rows (NumPy: unpack every code and zero
point, then subtract and scale per group, float32 temporaries the size of the slice).
Both compute float32(code - zero) * scale, so the results are identical (tests compare
them). The layouts are drawn in source/int_packed.py.

Each loop runs over packed words in parallel and reads each word once. On a 4096 x 14336
int4 weight in 512-row slices, best of 3 on the 2-core development machine while it was
busy (load 12-19): GPTQ 74-130 M weights/s against the NumPy twin's 25-33, AWQ 58 against
38; an unloaded machine and more cores give more."""

from __future__ import annotations

import numpy as np

from .flags import PARALLEL, njit, prange

AWQ_NIBBLE = np.array([0, 4, 1, 5, 2, 6, 3, 7], dtype=np.int64)  # the nibble holding column k of a word


@njit(**PARALLEL)
def _gptq(qw, qz, scales, groups, bits, zero_offset, start, out):  # pragma: no cover - compiled
    rows, n_in = out.shape
    per = 32 // bits
    mask = np.uint32((1 << bits) - 1)
    zeros = np.empty((qz.shape[0], rows), dtype=np.float32)  # the rows' zero points, unpacked once
    for g in range(qz.shape[0]):
        for i in range(rows):
            o = start + i
            zeros[g, i] = np.float32(np.int64((qz[g, o // per] >> np.uint32((o % per) * bits)) & mask) + zero_offset)
    # a word of qweight holds `per` input columns of one output row: words in parallel, each
    # read once, the rows' words of one qweight row contiguous in memory
    for w in prange(n_in // per):
        for i in range(rows):
            word = qw[w, start + i]
            for k in range(per):
                j = w * per + k
                g = groups[j]
                out[i, j] = (np.float32((word >> np.uint32(k * bits)) & mask) - zeros[g, i]) * scales[g, i]


@njit(**PARALLEL)
def _awq(qw, qz, scales, group_size, start, out):  # pragma: no cover - compiled
    rows, n_in = out.shape
    shifts = np.empty(rows, dtype=np.uint32)
    zeros = np.empty((qz.shape[0], rows), dtype=np.float32)
    for i in range(rows):
        o = start + i
        shifts[i] = np.uint32(4 * AWQ_NIBBLE[o % 8])
        for g in range(qz.shape[0]):
            zeros[g, i] = np.float32((qz[g, o // 8] >> shifts[i]) & np.uint32(15))
    # a word holds 8 output rows of one input column: words in parallel, each read once,
    # the 8 rows written along their columns in order
    w0 = start // 8
    for wi in prange((start + rows + 7) // 8 - w0):
        w = w0 + wi
        lo, hi = max(start, w * 8), min(start + rows, w * 8 + 8)
        for j in range(n_in):
            g = j // group_size
            word = qw[j, w]
            for o in range(lo, hi):
                i = o - start
                out[i, j] = (np.float32((word >> shifts[i]) & np.uint32(15)) - zeros[g, i]) * scales[g, i]


def gptq_rows(qweight, qzeros, scales, groups, bits: int, zero_offset: int, start: int, stop: int) -> np.ndarray:
    """Rows start..stop of an AutoGPTQ weight; `scales` the (groups, stop-start) columns of
    those rows, `groups` each input column's group."""
    out = np.empty((stop - start, len(groups)), dtype=np.float32)
    _gptq(np.asarray(qweight).view(np.uint32), np.asarray(qzeros).view(np.uint32),
          np.ascontiguousarray(scales, dtype=np.float32), np.ascontiguousarray(groups, dtype=np.int64),
          bits, zero_offset, start, out)
    return out


def awq_rows(qweight, qzeros, scales, group_size: int, start: int, stop: int) -> np.ndarray:
    """Rows start..stop of an AutoAWQ (GEMM, 4-bit) weight; `scales` as for gptq_rows."""
    out = np.empty((stop - start, np.asarray(qweight).shape[0]), dtype=np.float32)
    _awq(np.asarray(qweight).view(np.uint32), np.asarray(qzeros).view(np.uint32),
         np.ascontiguousarray(scales, dtype=np.float32), group_size, start, out)
    return out
