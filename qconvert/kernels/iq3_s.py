"""IQ3_S: 256 weights, 3.4375 bits per weight. Search in iq3_common.py (llama.cpp's
quantize_row_iq3_s_impl), codebook and neighbour tables in iq_grids.py.

Block layout (110 bytes):
  off 0..1     d       fp16, little-endian
  off 2..65    qs      low 8 bits of the codebook index (of 512) of each group of 4
                       weights, 8 per sub-block
  off 66..73   qh      byte ib: bit g = bit 8 of the index of group g of sub-block ib
  off 74..105  signs   4 bytes per sub-block, bit i of byte k = sign of weight 8k + i
  off 106..109 scales  byte j: low nibble = scale of sub-block 2j, high = of 2j + 1
A weight decodes to (d * (1 + 2*scale)) * codebook value * sign."""

from __future__ import annotations

import numpy as np

from . import KERNELS, Kernel
from .flags import PARALLEL, njit, prange
from .iq3_common import encode_block
from .iq_grids import tables
from .kquant_common import get_f16
from .reference import iq3_s as ref

BLOCK = 256
TYPE_SIZE = 110


@njit(**PARALLEL)
def _encode(x, imp, has_imp, grid, levels, kmap, neighbours):
    n = x.shape[0]
    out = np.empty((n, TYPE_SIZE), np.uint8)
    for b in prange(n):
        encode_block(x[b], imp[b] if has_imp else x[b], has_imp, False, grid, levels, kmap, neighbours, out[b])
    return out


@njit(**PARALLEL)
def _decode(q, values):
    n = q.shape[0]
    y = np.empty((n, BLOCK), np.float32)
    for b in prange(n):
        blk = q[b]
        d = get_f16(blk, 0)
        for ib in range(8):
            sc = (blk[106 + ib // 2] >> (4 * (ib % 2))) & 0xF
            db = d * np.float32(1 + 2 * sc)
            for g in range(8):
                gi = np.int64(blk[2 + 8 * ib + g]) | (((np.int64(blk[66 + ib]) >> g) & 1) << 8)
                s = blk[74 + 4 * ib + g // 2]
                for j in range(4):
                    v = db * values[gi, j]
                    y[b, 32 * ib + 4 * g + j] = -v if (s >> (4 * (g % 2) + j)) & 1 else v
    return y


def encode(x: np.ndarray, importance: np.ndarray | None = None) -> np.ndarray:
    t = tables("IQ3_S")
    if importance is None:
        return _encode(x, x, False, t.grid, t.levels, t.kmap, t.neighbours)
    return _encode(x, importance, True, t.grid, t.levels, t.kmap, t.neighbours)


def decode(q: np.ndarray) -> np.ndarray:
    return _decode(q, tables("IQ3_S").values)


KERNELS.add("IQ3_S", Kernel("IQ3_S", encode, decode, ref.encode, ref.decode))
