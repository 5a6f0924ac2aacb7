"""Numba pieces shared by the grid i-quants (IQ3_*, IQ2_*, IQ1_*): the neighbour searches
of ggml-quants.c's iq2/iq3_find_best_neighbour over the tables of iq_grids.py, and the
sign split, rounding and fit loops their searches share."""

from __future__ import annotations

import numpy as np

from .flags import JIT, njit
from .kquant_common import F0, nearest_int

FLT_MAX = np.float32(3.4028234663852886e38)


@njit(**JIT)
def best_neighbour4(neighbours, kmap_entry, levels, xval, weight, o, scale, L, sg):
    """For a 4-wide group (IQ3_*: xval[o:o+4], weights weight[o:o+4]) whose rounded levels
    are off the codebook (kmap_entry < 0): the listed neighbour with the least sum
    w*(scale*g - x)^2, the first on a tie (ggml's iq3_find_best_neighbour); its levels go
    to L[o:o+4]. Returns its codebook index. The eight products scale*g are formed once
    (sg, scratch of 8), the same floats ggml forms per neighbour."""
    for lv in range(8):
        sg[lv] = scale * np.float32(2 * lv + 1)
    x0, x1, x2, x3 = xval[o], xval[o + 1], xval[o + 2], xval[o + 3]
    w0, w1, w2, w3 = weight[o], weight[o + 1], weight[o + 2], weight[o + 3]
    start = -kmap_entry - 1
    best_d2 = FLT_MAX
    best = -1
    for j in range(1, np.int64(neighbours[start]) + 1):
        g = np.int64(neighbours[start + j])
        t = levels[g]
        d0 = sg[t[0]] - x0
        d1 = sg[t[1]] - x1
        d2_ = sg[t[2]] - x2
        d3 = sg[t[3]] - x3
        d2 = F0 + w0 * d0 * d0
        d2 = d2 + w1 * d1 * d1
        d2 = d2 + w2 * d2_ * d2_
        d2 = d2 + w3 * d3 * d3
        if d2 < best_d2:
            best_d2 = d2
            best = g
    if best < 0:  # every error was NaN or Inf: llama.cpp aborts here too
        raise ValueError("i-quant neighbour search found no finite error (weights too large or not finite)")
    for i in range(4):
        L[o + i] = levels[best, i]
    return best


@njit(**JIT)
def best_neighbour8(neighbours, kmap_entry, grid, xval, weight, o, scale, L, terms):
    """best_neighbour for the 8-wide 2-bit grids (IQ2_*), the same result with a third of
    the arithmetic: coordinate i takes one of three lattice values (1, 3, 5), so the 24
    possible terms w*(scale*g - x)^2 are computed once, exactly as the per-neighbour loop
    would compute them, and each neighbour's error is the sum, in order, of its 8 terms.
    `grid` here is tables().term_index: 3*i + level per coordinate; `terms` is (24,) scratch."""
    for i in range(8):
        for lv in range(3):
            diff = scale * np.float32(2 * lv + 1) - xval[o + i]
            terms[3 * i + lv] = weight[o + i] * diff * diff
    start = -kmap_entry - 1
    best_d2 = FLT_MAX
    best = -1
    for j in range(1, np.int64(neighbours[start]) + 1):
        g = np.int64(neighbours[start + j])
        t = grid[g]
        d2 = terms[t[0]] + terms[t[1]] + terms[t[2]] + terms[t[3]]
        d2 = d2 + terms[t[4]] + terms[t[5]] + terms[t[6]] + terms[t[7]]
        if d2 < best_d2:
            best_d2 = d2
            best = g
    if best < 0:  # every error was NaN or Inf: llama.cpp aborts here too
        raise ValueError("i-quant neighbour search found no finite error (weights too large or not finite)")
    for i in range(8):
        L[o + i] = grid[best, i] - 3 * i
    return best


@njit(**JIT)
def put_u32_or(out, pos, v):
    """out[pos:pos+4] |= the little-endian bytes of v."""
    for k in range(4):
        out[pos + k] |= (v >> (8 * k)) & 0xFF


@njit(**JIT)
def split_signs(xb, weight, n8, even, xval, signs):
    """|x| into xval and the sign bits of each group of 8 into signs[k] (bit i = weight
    8k + i negative). With `even` (IQ2_XXS, IQ2_XS, IQ3_XXS: 7 stored sign bits, the 8th
    implied by parity) an odd count of negatives is made even by flipping the sign of the
    group's least important weight (least w*x^2, the first on a tie); signs then keep 7 bits."""
    for k in range(n8):
        nflip = 0
        s = 0
        for i in range(8):
            v = xb[8 * k + i]
            if v >= F0:
                xval[8 * k + i] = v
            else:
                xval[8 * k + i] = -v
                nflip += 1
                s |= 1 << i
        if even and nflip % 2 == 1:
            imin = 0
            mn = weight[8 * k] * xb[8 * k] * xb[8 * k]
            for i in range(1, 8):
                ax = weight[8 * k + i] * xb[8 * k + i] * xb[8 * k + i]
                if ax < mn:
                    mn = ax
                    imin = i
            xval[8 * k + imin] = -xval[8 * k + imin]
            s ^= 1 << imin
        signs[k] = s & 127 if even else s


@njit(**JIT)
def fit(weight, xval, L, n):
    """(sum w*x*q, sum w*q*q) over n weights with q = 2l + 1, in C's order."""
    sumqx = F0
    sumq2 = F0
    for i in range(n):
        w = weight[i]
        q = np.float32(2 * L[i] + 1)
        sumqx += w * xval[i] * q
        sumq2 += w * q * q
    return sumqx, sumq2


@njit(**JIT)
def round_group(id_, xval, o, width, bits, lmax, L):
    """Levels l = round((id*x - 1)/2) clamped to 0..lmax of xval[o:o+width] into L; returns
    their kmap index sum l_i << (bits*i)."""
    u = 0
    for i in range(width):
        l = nearest_int(np.float32(0.5) * (id_ * xval[o + i] - np.float32(1.0)))
        l = max(0, min(lmax, l))
        L[o + i] = l
        u |= l << (bits * i)
    return u


@njit(**JIT)
def largest(x, n):
    """C's running MAX(max, x[i]) from x[0]."""
    mx = x[0]
    for i in range(1, n):
        mx = mx if mx > x[i] else x[i]
    return mx
