"""Numba pieces shared by the grid i-quants (IQ3_*, IQ2_*, IQ1_*): the neighbour search
of ggml-quants.c's iq2/iq3_find_best_neighbour over the tables of iq_grids.py, and small
byte helpers."""

from __future__ import annotations

import numpy as np

from .flags import JIT, njit
from .kquant_common import F0

FLT_MAX = np.float32(3.4028234663852886e38)


@njit(**JIT)
def best_neighbour(neighbours, kmap_entry, grid, xval, weight, o, scale, L):
    """For a group (xval[o:o+w], weights weight[o:o+w]) whose rounded levels are off the
    codebook (kmap_entry < 0): the listed neighbour with the least sum w*(scale*g - x)^2,
    the first on a tie; its levels go to L[o:o+w]. Returns its codebook index."""
    start = -kmap_entry - 1
    width = grid.shape[1]
    best_d2 = FLT_MAX
    best = -1
    for j in range(1, np.int64(neighbours[start]) + 1):
        g = np.int64(neighbours[start + j])
        d2 = F0
        for i in range(width):
            diff = scale * np.float32(grid[g, i]) - xval[o + i]
            d2 += weight[o + i] * diff * diff
        if d2 < best_d2:
            best_d2 = d2
            best = g
    if best < 0:  # every error was NaN or Inf: llama.cpp aborts here too
        raise ValueError("i-quant neighbour search found no finite error (weights too large or not finite)")
    for i in range(width):
        L[o + i] = (grid[best, i] - 1) // 2
    return best


@njit(**JIT)
def put_u32_or(out, pos, v):
    """out[pos:pos+4] |= the little-endian bytes of v."""
    for k in range(4):
        out[pos + k] |= (v >> (8 * k)) & 0xFF
