"""IQ1_S: 256 weights, 1.5625 bits per weight; llama.cpp only makes it with importance
weights. Search in iq1_common.py (llama.cpp's quantize_row_iq1_s_impl), codebook and
neighbour tables in iq_grids.py.

Block layout (50 bytes):
  off 0..1    d   fp16, little-endian
  off 2..33   qs  low 8 bits of the codebook index (of 2048) of each group of 8 weights
  off 34..49  qh  uint16 LE per 32-weight sub-block ib: bits 3k..3k+2 = bits 8..10 of the
                  index of group k, bits 12..14 = 3-bit scale s, bit 15 = shift sign
A weight decodes to (d * (2s + 1)) * (codebook value + delta), delta = +-0.125."""

from __future__ import annotations

import numpy as np

from . import KERNELS, Kernel, require_importance
from .flags import PARALLEL, njit, prange
from .iq1_common import DELTA, encode_s_block
from .iq_grids import tables
from .kquant_common import get_f16
from .reference import iq1_s as ref

BLOCK = 256
TYPE_SIZE = 50


@njit(**PARALLEL)
def _encode(x, imp, grid, tix, kmap, neighbours):
    n = x.shape[0]
    out = np.empty((n, TYPE_SIZE), np.uint8)
    for b in prange(n):
        encode_s_block(x[b], imp[b], grid, tix, kmap, neighbours, out[b])
    return out


@njit(**PARALLEL)
def _decode(q, values):
    n = q.shape[0]
    y = np.empty((n, BLOCK), np.float32)
    for b in prange(n):
        blk = q[b]
        d = get_f16(blk, 0)
        for ib in range(8):
            qh = np.int64(blk[34 + 2 * ib]) | (np.int64(blk[35 + 2 * ib]) << 8)
            dl = d * np.float32(2 * ((qh >> 12) & 7) + 1)
            delta = -DELTA if qh & 0x8000 else DELTA
            for k in range(4):
                gi = np.int64(blk[2 + 4 * ib + k]) | (((qh >> (3 * k)) & 7) << 8)
                for j in range(8):
                    y[b, 32 * ib + 8 * k + j] = dl * (values[gi, j] + delta)
    return y


def encode(x: np.ndarray, importance: np.ndarray | None = None) -> np.ndarray:
    require_importance("IQ1_S", importance)
    t = tables("IQ1_S")
    return _encode(x, importance, t.grid, t.term_index, t.kmap, t.neighbours)


def decode(q: np.ndarray) -> np.ndarray:
    return _decode(q, tables("IQ1_S").values)


KERNELS.add("IQ1_S", Kernel("IQ1_S", encode, decode, ref.encode, ref.decode))
