"""IQ3_XXS: 256 weights, 3.0625 bits per weight. Search in iq3_common.py (llama.cpp's
quantize_row_iq3_xxs_impl), codebook and neighbour tables in iq_grids.py.

Block layout (98 bytes):
  off 0..1    d    fp16, little-endian
  off 2..65   qs   byte 2 + 8*ib + g: codebook index (of 256) of group g (4 weights) of
                   sub-block ib
  off 66..97  sas  uint32 LE per sub-block ib at 66 + 4*ib: bits 7k..7k+6 = sign index of
                   weights 8k..8k+7 (ksigns: the 8th sign makes the count of negatives
                   even), bits 28..31 = 4-bit scale s
A weight decodes to (d * (0.5 + s) * 0.5) * codebook value * sign."""

from __future__ import annotations

import numpy as np
from gguf import quants as gq

from . import KERNELS, Kernel
from .flags import PARALLEL, njit, prange
from .iq3_common import encode_block
from .iq_grids import tables
from .kquant_common import get_f16
from .reference import iq3_xxs as ref

BLOCK = 256
TYPE_SIZE = 98
KSIGNS = np.frombuffer(gq.IQ2_XXS.ksigns, np.uint8).copy()
HALF = np.float32(0.5)


@njit(**PARALLEL)
def _encode(x, imp, has_imp, grid, levels, kmap, neighbours):
    n = x.shape[0]
    out = np.empty((n, TYPE_SIZE), np.uint8)
    for b in prange(n):
        encode_block(x[b], imp[b] if has_imp else x[b], has_imp, True, grid, levels, kmap, neighbours, out[b])
    return out


@njit(**PARALLEL)
def _decode(q, values, ksigns):
    n = q.shape[0]
    y = np.empty((n, BLOCK), np.float32)
    for b in prange(n):
        blk = q[b]
        d = get_f16(blk, 0)
        for ib in range(8):
            sas = np.int64(0)
            for k in range(4):
                sas |= np.int64(blk[66 + 4 * ib + k]) << (8 * k)
            db = d * (HALF + np.float32(sas >> 28)) * HALF
            for k in range(4):
                s = ksigns[(sas >> (7 * k)) & 127]
                for h in range(2):
                    g = blk[2 + 8 * ib + 2 * k + h]
                    for j in range(4):
                        v = db * values[g, j]
                        y[b, 32 * ib + 8 * k + 4 * h + j] = -v if (s >> (4 * h + j)) & 1 else v
    return y


def encode(x: np.ndarray, importance: np.ndarray | None = None) -> np.ndarray:
    t = tables("IQ3_XXS")
    if importance is None:
        return _encode(x, x, False, t.grid, t.levels, t.kmap, t.neighbours)
    return _encode(x, importance, True, t.grid, t.levels, t.kmap, t.neighbours)


def decode(q: np.ndarray) -> np.ndarray:
    return _decode(q, tables("IQ3_XXS").values, KSIGNS)


KERNELS.add("IQ3_XXS", Kernel("IQ3_XXS", encode, decode, ref.encode, ref.decode))
