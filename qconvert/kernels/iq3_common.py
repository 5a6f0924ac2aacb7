"""The search shared by IQ3_XXS and IQ3_S, following llama.cpp's quantize_row_iq3_xxs_impl
and quantize_row_iq3_s_impl (with or without importance).

A super-block of 256 weights is eight 32-weight sub-blocks; each sub-block is
scale * (sign * codebook point) for its eight groups of 4 weights. Per sub-block:
  * signs are taken off (|x| is quantized); IQ3_XXS stores 7 sign bits per 8 weights and
    keeps the count of negatives even by flipping the least important one (w*x^2);
  * for 31 (XXS: is = -15..15) or 19 (S: -9..9) inverse scales (15 + 0.2*is)/max, each
    group is rounded to levels l = round((id*x - 1)/2) in 0..7; a group off the codebook
    takes its best listed neighbour; the least-squares scale of the best try is kept;
  * groups that ended off the codebook are re-rounded at that scale (S: all groups) and
    the scale refitted.
The eight sub-block scales become 4-bit numbers against d = max_scale/31, stored as fp16
d * 1.0125 (XXS) or d * 1.033 (S) — llama.cpp's fudge factors.

Weights: x^2, or with importance qw * sqrt(sigma2 + x^2), sigma2 = 2 * mean(x^2) over the
super-block; the neighbour search weighs by their square roots.
"""

from __future__ import annotations

import numpy as np

from .flags import JIT, njit
from .grid_search import best_neighbour4, fit, largest, round_group, split_signs
from .kquant_common import F0, F1, nearest_int, put_f16

EPS_XXS = np.float32(1e-8)  # GROUP_MAX_EPS_IQ3_XXS
HALF = np.float32(0.5)
P02 = np.float32(0.2)
F15 = np.float32(15.0)


@njit(**JIT)
def _sub_block(xb, weight, waux, xxs, grid, levels, kmap, neighbours, xval, L, signs, sg):
    """Search one 32-weight sub-block; L gets its levels, signs its sign bytes. Returns
    its scale, or -1 when the sub-block is (treated as) all zero."""
    for i in range(32):
        waux[i] = np.sqrt(weight[i])
    split_signs(xb, weight, 4, xxs, xval, signs)
    mx = largest(xval, 32)
    for i in range(32):
        L[i] = 0
    if (xxs and mx < EPS_XXS) or (not xxs and mx == F0):
        return np.float32(-1.0)
    Laux = np.empty(32, np.int8)
    on = np.empty(8, np.bool_)
    on_aux = np.empty(8, np.bool_)
    best = F0
    scale = mx / F15
    for k in range(8):
        on[k] = xxs
    nis = 15 if xxs else 9
    for is_ in range(-nis, nis + 1):
        id_ = (F15 + np.float32(is_) * P02) / mx
        this_scale = F1 / id_
        for k in range(8):
            u = round_group(id_, xval, 4 * k, 4, 3, 7, Laux)
            on_aux[k] = kmap[u] >= 0
            if not on_aux[k]:
                best_neighbour4(neighbours, kmap[u], levels, xval, waux, 4 * k, this_scale, Laux, sg)
        sumqx, sumq2 = fit(weight, xval, Laux, 32)
        if sumq2 > F0 and sumqx * sumqx > best * sumq2:
            scale = sumqx / sumq2
            best = scale * sumqx
            for i in range(32):
                L[i] = Laux[i]
            for k in range(8):
                on[k] = on_aux[k]
    n_off = 0
    for k in range(8):
        if not on[k]:
            n_off += 1
    if n_off > 0 and scale > F0:
        id_ = F1 / scale
        for k in range(8):
            if xxs and on[k]:
                continue
            u = round_group(id_, xval, 4 * k, 4, 3, 7, Laux)
            gi = kmap[u]
            if gi < 0:
                gi = best_neighbour4(neighbours, gi, levels, xval, waux, 4 * k, scale, L, sg)
            for i in range(4):
                L[4 * k + i] = (grid[gi, i] - 1) >> 1
        sumqx, sumq2 = fit(weight, xval, L, 32)
        if sumq2 > F0:
            scale = sumqx / sumq2
    if scale < F0:  # "should never happen" (ggml): flip the scale and the signs
        scale = -scale
        for k in range(4):
            signs[k] = (~signs[k]) & (127 if xxs else 255)
    return scale


@njit(**JIT)
def _group_index(kmap, L, k):
    u = 0
    for i in range(4):
        u |= np.int64(L[4 * k + i]) << (3 * i)
    gi = kmap[u]
    if gi < 0:
        raise ValueError("i-quant: a group ended off the codebook (llama.cpp aborts here too)")
    return gi


@njit(**JIT)
def encode_block(x, qw, has_qw, xxs, grid, levels, kmap, neighbours, out):
    """One 256-weight super-block into `out` (98 bytes for XXS, 110 for S; layouts drawn in
    iq3_xxs.py and iq3_s.py)."""
    for k in range(out.shape[0]):
        out[k] = 0
    sumx2 = F0
    for i in range(256):
        sumx2 += x[i] * x[i]
    sigma2 = np.float32(2.0) * sumx2 / np.float32(256.0)
    weight = np.empty(32, np.float32)
    waux = np.empty(32, np.float32)
    xval = np.empty(32, np.float32)
    L = np.empty(32, np.int8)
    signs = np.empty(4, np.int64)
    sg = np.empty(8, np.float32)
    scales = np.zeros(8, np.float32)
    max_scale = F0
    # IQ3_S: llama.cpp advances its qs/signs pointers only past sub-blocks it wrote, so a
    # sub-block after an all-zero one lands in the zero one's slot (and the last slot stays
    # empty); qh and the scales are indexed by sub-block. Reproduced for identical bytes.
    nw = 0
    for ib in range(8):
        xb = x[32 * ib:32 * ib + 32]
        for i in range(32):
            weight[i] = qw[32 * ib + i] * np.sqrt(sigma2 + xb[i] * xb[i]) if has_qw else xb[i] * xb[i]
        scale = _sub_block(xb, weight, waux, xxs, grid, levels, kmap, neighbours, xval, L, signs, sg)
        if scale < F0:
            continue
        slot = ib if xxs else nw
        nw += 1
        for k in range(8):
            gi = _group_index(kmap, L, k)
            out[2 + 8 * slot + k] = gi & 255
            if not xxs:
                out[66 + ib] |= (gi >> 8) << k
        if xxs:
            sas = signs[0] | (signs[1] << 7) | (signs[2] << 14) | (signs[3] << 21)
            for k in range(4):
                out[66 + 4 * ib + k] = (sas >> (8 * k)) & 0xFF
        else:
            for k in range(4):
                out[74 + 4 * slot + k] = signs[k]
        scales[ib] = scale
        max_scale = max_scale if max_scale > scale else scale
    if max_scale == F0:
        if xxs:  # llama.cpp clears the whole block; IQ3_S keeps what it wrote, with d = 0
            for k in range(out.shape[0]):
                out[k] = 0
        return
    d = max_scale / np.float32(31.0)
    put_f16(out, 0, d * (np.float32(1.0125) if xxs else np.float32(1.033)))
    id_ = F1 / d
    for ib in range(8):
        l = nearest_int(HALF * (id_ * scales[ib] - F1))
        l = max(0, min(15, l))
        if xxs:
            out[66 + 4 * ib + 3] |= l << 4
        else:
            out[106 + ib // 2] |= l << (4 * (ib % 2))
