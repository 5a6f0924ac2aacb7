"""The lattice tables of the grid i-quants, built once per process the way ggml-quants.c's
iq2xs_init_impl / iq3xs_init_impl build them.

A grid i-quant stores each group of 8 (IQ2_*, IQ1_*) or 4 (IQ3_*) weights as the index
of one point of a fixed codebook. The codebooks themselves are facts of the format; we take
them from gguf-py (gguf.quants.IQ*.grid_hex / grid_map, the tables of ggml-common.h), as
level numbers l = 0, 1, 2, ... per coordinate. From them:

  grid        (n, width) int8, coordinate 2l + 1: the odd-integer lattice the encoder
              measures against (decoding uses the codebook's own values, `values`)
  kmap        for every possible group of levels u = sum l_i << (bits*i): the index of the
              codebook point equal to it, or -(offset + 1) into `neighbours`
  neighbours  at each offset: a count n, then the n codebook points nearest to u in
              squared distance — all those at the nwant smallest distinct distances,
              ordered by (distance, index) as ggml's qsort leaves them

The encoder rounds a group to levels, looks u up in kmap and, when u is not a codebook
point, picks the best of its neighbours under the weighted error.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from gguf import quants as gq


@dataclass(frozen=True)
class Spec:
    source: str  # gguf.quants class holding the codebook
    bits: int  # bits per coordinate in a kmap index
    kmap_size: int  # as ggml-quants.c sizes it
    nwant: int  # distinct nearest distances kept per off-grid point


# ggml-quants.c: kmap_size 43692 for the 8-wide 2-bit-indexed grids, 4096 for 4-wide;
# nwant 3 for IQ1_S/IQ1_M and the 512-point IQ3 grid, 1 for IQ2_S, 2 otherwise
SPECS = {
    "IQ2_XXS": Spec("IQ2_XXS", 2, 43692, 2),
    "IQ2_XS": Spec("IQ2_XS", 2, 43692, 2),
    "IQ2_S": Spec("IQ2_S", 2, 43692, 1),
    "IQ1_S": Spec("IQ1_S", 2, 43692, 3),
    "IQ1_M": Spec("IQ1_M", 2, 43692, 3),
    "IQ3_XXS": Spec("IQ3_XXS", 3, 4096, 2),
    "IQ3_S": Spec("IQ3_S", 3, 4096, 3),
}


@dataclass(frozen=True)
class Tables:
    values: np.ndarray  # (n, width) float32: what each codebook point decodes to (times scale)
    grid: np.ndarray  # (n, width) int8, 2l + 1
    kmap: np.ndarray  # (kmap_size,) int32
    neighbours: np.ndarray  # uint16, see the module docstring
    levels: np.ndarray  # (n, width) int8: each coordinate's level l (grid = 2l + 1)
    term_index: np.ndarray  # (n, width) int8: 3*i + l, for the 3-level grids' neighbour search


def codebook(type_name: str) -> tuple[np.ndarray, np.ndarray]:
    """(values float32 (n, width), levels int64 (n, width)) of a type's codebook."""
    cls = getattr(gq, SPECS[type_name].source)
    cls.init_grid()
    values = np.asarray(cls.grid, np.float32).reshape(cls.grid_shape)
    levels = np.searchsorted(np.asarray(cls.grid_map, np.float32), values)
    return values, levels


@lru_cache(maxsize=None)
def tables(type_name: str) -> Tables:
    spec = SPECS[type_name]
    values, levels = codebook(type_name)
    n, width = levels.shape
    grid = (2 * levels + 1).astype(np.int8)
    shifts = spec.bits * np.arange(width)
    kmap = np.full(spec.kmap_size, -1, np.int32)
    kmap[(levels << shifts).sum(axis=1)] = np.arange(n, dtype=np.int32)

    off = np.nonzero(kmap < 0)[0]  # the points that need neighbours, in index order
    pos = 2 * ((off[:, None] >> shifts) & ((1 << spec.bits) - 1)) + 1
    counts = np.empty(len(off), np.int64)
    lists = []
    g = grid.astype(np.int32)
    chunk = 512  # off-grid points per step: (chunk, n, width) int32 temporaries stay under 40 MB
    for c0 in range(0, len(off), chunk):
        d2 = ((pos[c0:c0 + chunk, None, :] - g[None]) ** 2).sum(axis=2)  # (c, n)
        thr = d2.min(axis=1)
        for _ in range(spec.nwant - 1):  # the next larger distinct distance
            thr = np.where(d2 > thr[:, None], d2, np.iinfo(np.int32).max).min(axis=1)
        rows, cols = np.nonzero(d2 <= thr[:, None])
        order = np.lexsort((cols, d2[rows, cols], rows))  # by row, then (distance, index)
        counts[c0:c0 + chunk] = np.bincount(rows, minlength=len(d2))
        lists.append(cols[order])
    flat = np.concatenate(lists)
    starts = np.concatenate([[0], np.cumsum(counts + 1)[:-1]])
    neighbours = np.empty(len(flat) + len(off), np.uint16)
    neighbours[starts] = counts
    slot = np.ones(len(neighbours), bool)
    slot[starts] = False
    neighbours[slot] = flat
    kmap[off] = -(starts + 1)
    term_index = (3 * np.arange(width) + levels).astype(np.int8)
    return Tables(values, grid, kmap, neighbours, levels.astype(np.int8), term_index)
