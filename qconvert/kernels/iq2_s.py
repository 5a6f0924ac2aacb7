"""IQ2_S: 256 weights, 2.5625 bits per weight, with or without importance. Search in
iq2_common.py (llama.cpp's quantize_row_iq2_s_impl), codebook and neighbour tables in
iq_grids.py.

Block layout (82 bytes):
  off 0..1    d       fp16, little-endian
  off 2..33   qs      low 8 bits of the codebook index (of 1024) of each group of 8 weights
  off 34..65  signs   byte g: bit i = sign of weight 8g + i
  off 66..73  qh      byte j: bits 2t..2t+1 = bits 8..9 of the index of group 4j + t
  off 74..81  scales  byte j: low nibble = scale of 16-weight sub-block 2j, high = of 2j + 1
A weight of sub-block ib decodes to (d * (0.5 + s_ib) * 0.25) * codebook value * sign."""

from __future__ import annotations

import numpy as np

from . import KERNELS, Kernel
from .flags import PARALLEL, njit, prange
from .iq2_common import encode_s_block
from .iq_grids import tables
from .kquant_common import get_f16
from .reference import iq2_s as ref

BLOCK = 256
TYPE_SIZE = 82


@njit(**PARALLEL)
def _encode(x, imp, has_imp, grid, tix, kmap, neighbours):
    n = x.shape[0]
    out = np.empty((n, TYPE_SIZE), np.uint8)
    for b in prange(n):
        encode_s_block(x[b], imp[b] if has_imp else x[b], has_imp, grid, tix, kmap, neighbours, out[b])
    return out


@njit(**PARALLEL)
def _decode(q, values):
    n = q.shape[0]
    y = np.empty((n, BLOCK), np.float32)
    for b in prange(n):
        blk = q[b]
        d = get_f16(blk, 0)
        for ib in range(16):
            sc = (blk[74 + ib // 2] >> (4 * (ib % 2))) & 0xF
            db = d * (np.float32(0.5) + np.float32(sc)) * np.float32(0.25)
            for k in range(2):
                g8 = 2 * ib + k
                gi = np.int64(blk[2 + g8]) | (((np.int64(blk[66 + g8 // 4]) >> (2 * (g8 % 4))) & 3) << 8)
                s = blk[34 + g8]
                for j in range(8):
                    v = db * values[gi, j]
                    y[b, 8 * g8 + j] = -v if (s >> j) & 1 else v
    return y


def encode(x: np.ndarray, importance: np.ndarray | None = None) -> np.ndarray:
    t = tables("IQ2_S")
    if importance is None:
        return _encode(x, x, False, t.grid, t.term_index, t.kmap, t.neighbours)
    return _encode(x, importance, True, t.grid, t.term_index, t.kmap, t.neighbours)


def decode(q: np.ndarray) -> np.ndarray:
    return _decode(q, tables("IQ2_S").values)


KERNELS.add("IQ2_S", Kernel("IQ2_S", encode, decode, ref.encode, ref.decode))
