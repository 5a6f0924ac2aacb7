"""IQ2_XS: 256 weights, 2.3125 bits per weight; llama.cpp only makes it with importance
weights. Search in iq2_common.py, codebook and neighbour tables in iq_grids.py.

Block layout (74 bytes):
  off 0..1    d       fp16, little-endian
  off 2..65   qs      uint16 LE per group of 8 weights (two per 16-weight sub-block):
                      bits 0..8 = codebook index (of 512), bits 9..15 = sign index (ksigns)
  off 66..73  scales  byte j: low nibble = scale of sub-block 2j, high = of 2j + 1
A weight of sub-block ib decodes to (d * (0.5 + s_ib) * 0.25) * codebook value * sign."""

from __future__ import annotations

import numpy as np
from gguf import quants as gq

from . import KERNELS, Kernel, require_importance
from .flags import PARALLEL, njit, prange
from .iq2_common import encode_xs_block
from .iq_grids import tables
from .kquant_common import get_f16
from .reference import iq2_xs as ref

BLOCK = 256
TYPE_SIZE = 74
KSIGNS = np.frombuffer(gq.IQ2_XXS.ksigns, np.uint8).copy()


@njit(**PARALLEL)
def _encode(x, imp, grid, tix, kmap, neighbours):
    n = x.shape[0]
    out = np.empty((n, TYPE_SIZE), np.uint8)
    for b in prange(n):
        encode_xs_block(x[b], imp[b], grid, tix, kmap, neighbours, out[b])
    return out


@njit(**PARALLEL)
def _decode(q, values, ksigns):
    n = q.shape[0]
    y = np.empty((n, BLOCK), np.float32)
    for b in prange(n):
        blk = q[b]
        d = get_f16(blk, 0)
        for ib in range(16):
            sc = (blk[66 + ib // 2] >> (4 * (ib % 2))) & 0xF
            db = d * (np.float32(0.5) + np.float32(sc)) * np.float32(0.25)
            for k in range(2):
                v16 = np.int64(blk[2 + 4 * ib + 2 * k]) | (np.int64(blk[3 + 4 * ib + 2 * k]) << 8)
                g = v16 & 511
                s = ksigns[v16 >> 9]
                for j in range(8):
                    v = db * values[g, j]
                    y[b, 16 * ib + 8 * k + j] = -v if (s >> j) & 1 else v
    return y


def encode(x: np.ndarray, importance: np.ndarray | None = None) -> np.ndarray:
    require_importance("IQ2_XS", importance)
    t = tables("IQ2_XS")
    return _encode(x, importance, t.grid, t.term_index, t.kmap, t.neighbours)


def decode(q: np.ndarray) -> np.ndarray:
    return _decode(q, tables("IQ2_XS").values, KSIGNS)


KERNELS.add("IQ2_XS", Kernel("IQ2_XS", encode, decode, ref.encode, ref.decode))
