"""IQ2_XXS: 256 weights, 2.0625 bits per weight; llama.cpp only makes it with importance
weights. Search in iq2_common.py, codebook and neighbour tables in iq_grids.py.

Block layout (66 bytes):
  off 0..1   d    fp16, little-endian
  then per 32-weight sub-block ib, 8 bytes at 2 + 8*ib:
    bytes 0..3  codebook index (of 256) of groups 0..3 (8 weights each)
    bytes 4..7  uint32 LE: bits 7k..7k+6 = sign index of group k (ksigns; even parity),
                bits 28..31 = 4-bit scale s
A weight decodes to (d * (0.5 + s) * 0.25) * codebook value * sign."""

from __future__ import annotations

import numpy as np
from gguf import quants as gq

from . import KERNELS, Kernel, require_importance
from .flags import PARALLEL, njit, prange
from .iq2_common import encode_xxs_block
from .iq_grids import tables
from .kquant_common import get_f16
from .reference import iq2_xxs as ref

BLOCK = 256
TYPE_SIZE = 66
KSIGNS = np.frombuffer(gq.IQ2_XXS.ksigns, np.uint8).copy()


@njit(**PARALLEL)
def _encode(x, imp, grid, tix, kmap, neighbours):
    n = x.shape[0]
    out = np.empty((n, TYPE_SIZE), np.uint8)
    for b in prange(n):
        encode_xxs_block(x[b], imp[b], grid, tix, kmap, neighbours, out[b])
    return out


@njit(**PARALLEL)
def _decode(q, values, ksigns):
    n = q.shape[0]
    y = np.empty((n, BLOCK), np.float32)
    for b in prange(n):
        blk = q[b]
        d = get_f16(blk, 0)
        for ib in range(8):
            aux = np.int64(0)
            for k in range(4):
                aux |= np.int64(blk[6 + 8 * ib + k]) << (8 * k)
            db = d * (np.float32(0.5) + np.float32(aux >> 28)) * np.float32(0.25)
            for k in range(4):
                g = blk[2 + 8 * ib + k]
                s = ksigns[(aux >> (7 * k)) & 127]
                for j in range(8):
                    v = db * values[g, j]
                    y[b, 32 * ib + 8 * k + j] = -v if (s >> j) & 1 else v
    return y


def encode(x: np.ndarray, importance: np.ndarray | None = None) -> np.ndarray:
    require_importance("IQ2_XXS", importance)
    t = tables("IQ2_XXS")
    return _encode(x, importance, t.grid, t.term_index, t.kmap, t.neighbours)


def decode(q: np.ndarray) -> np.ndarray:
    return _decode(q, tables("IQ2_XXS").values, KSIGNS)


KERNELS.add("IQ2_XXS", Kernel("IQ2_XXS", encode, decode, ref.encode, ref.decode))
