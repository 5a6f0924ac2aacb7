"""IQ1_M: 256 weights, 1.75 bits per weight, with or without importance. Search in
iq1_common.py (llama.cpp's quantize_row_iq1_m_impl), codebook and neighbour tables in
iq_grids.py (shared with IQ1_S).

Block layout (56 bytes, no separate d field):
  off 0..31   qs      low 8 bits of the codebook index (of 2048) of each group of 8 weights
  off 32..47  qh      byte ib (16-weight sub-block): bits 0..2 = bits 8..10 of group 2ib's
                      index, bit 3 = its shift sign; bits 4..6 and 7 the same for 2ib + 1
  off 48..55  scales  four uint16 LE: bits 3t..3t+2 of word j = 3-bit scale of sub-block
                      4j + t; bits 12..15 of words 0..3 = the fp16 d, low nibble first
A weight decodes to (d * (2s + 1)) * (codebook value + delta), delta = +-0.125."""

from __future__ import annotations

import numpy as np

from . import KERNELS, Kernel
from .flags import PARALLEL, njit, prange
from .half import f16_bits_to_f32
from .iq1_common import DELTA, encode_m_block
from .iq_grids import tables
from .reference import iq1_m as ref

BLOCK = 256
TYPE_SIZE = 56


@njit(**PARALLEL)
def _encode(x, imp, has_imp, grid, tix, kmap, neighbours):
    n = x.shape[0]
    out = np.empty((n, TYPE_SIZE), np.uint8)
    for b in prange(n):
        encode_m_block(x[b], imp[b] if has_imp else x[b], has_imp, grid, tix, kmap, neighbours, out[b])
    return out


@njit(**PARALLEL)
def _decode(q, values):
    n = q.shape[0]
    y = np.empty((n, BLOCK), np.float32)
    for b in prange(n):
        blk = q[b]
        sc = np.empty(4, np.int64)
        for j in range(4):
            sc[j] = np.int64(blk[48 + 2 * j]) | (np.int64(blk[49 + 2 * j]) << 8)
        d = f16_bits_to_f32((sc[0] >> 12) | ((sc[1] >> 8) & 0xF0) | ((sc[2] >> 4) & 0xF00) | (sc[3] & 0xF000))
        for ib in range(16):
            s = (sc[ib // 4] >> (3 * (ib % 4))) & 7
            dl = d * np.float32(2 * s + 1)
            for k in range(2):
                nib = np.int64(blk[32 + ib]) >> (4 * k)
                gi = np.int64(blk[2 * ib + k]) | ((nib & 7) << 8)
                delta = -DELTA if nib & 8 else DELTA
                for j in range(8):
                    y[b, 16 * ib + 8 * k + j] = dl * (values[gi, j] + delta)
    return y


def encode(x: np.ndarray, importance: np.ndarray | None = None) -> np.ndarray:
    t = tables("IQ1_M")
    if importance is None:
        return _encode(x, x, False, t.grid, t.term_index, t.kmap, t.neighbours)
    return _encode(x, importance, True, t.grid, t.term_index, t.kmap, t.neighbours)


def decode(q: np.ndarray) -> np.ndarray:
    return _decode(q, tables("IQ1_M").values)


KERNELS.add("IQ1_M", Kernel("IQ1_M", encode, decode, ref.encode, ref.decode))
