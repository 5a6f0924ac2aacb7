"""The searches of IQ2_XXS, IQ2_XS and IQ2_S (llama.cpp's quantize_row_iq2_xxs_impl,
quantize_row_iq2_xs_impl, quantize_row_iq2_s_impl; the first two need importance weights).

A super-block of 256 weights: sub-blocks of 32 (XXS) or 16 (XS) weights, each
scale * (sign * codebook point) for its groups of 8, levels 0..2 per coordinate (lattice
values 1, 3, 5); 7 sign bits per group of 8, the 8th implied by an even count.
Weights: qw * sqrt(sigma2 + x^2) with sigma2 = mean(x^2) over the super-block (not twice
it, unlike IQ3); the neighbour search weighs by their square roots.

XXS: a first scale from make_qp_quants (levels 0..4), eff_max = 3*scale, then 13 inverse
scales (5 + 0.1*is)/eff_max, is = -6..6; afterwards every group is re-rounded at the best
scale and the scale refitted. XS: 19 inverse scales (5 + 0.1*is)/max, is = -9..9, then only
the groups left off the codebook are re-rounded, as in IQ3_XXS. Sub-block scales become 4
bits against d = max_scale/31 (no fudge factor).
"""

from __future__ import annotations

import numpy as np

from .flags import JIT, njit
from .grid_search import best_neighbour8, fit, largest, round_group, split_signs
from .kquant_common import F0, F1, GROUP_MAX_EPS, make_qp_quants, nearest_int, put_f16

F5 = np.float32(5.0)
P01 = np.float32(0.1)
HALF = np.float32(0.5)
EPS_S = np.float32(1e-8)  # GROUP_MAX_EPS_IQ2_S


@njit(**JIT)
def _weights(x, qw, o, n, sigma2, weight, waux):
    for i in range(n):
        weight[i] = qw[o + i] * np.sqrt(sigma2 + x[o + i] * x[o + i])
        waux[i] = np.sqrt(weight[i])


@njit(**JIT)
def _sigma2(x):
    s = F0
    for i in range(256):
        s += x[i] * x[i]
    return s / np.float32(256.0)


@njit(**JIT)
def _group_index(kmap, L, o):
    u = 0
    for i in range(8):
        u |= np.int64(L[o + i]) << (2 * i)
    gi = kmap[u]
    if gi < 0:
        raise ValueError("i-quant: a group ended off the codebook (llama.cpp aborts here too)")
    return gi


@njit(**JIT)
def _scale_nibble(id_, scale):
    return max(0, min(15, nearest_int(HALF * (id_ * scale - F1))))


@njit(**JIT)
def _xxs_sub_block(xb, weight, waux, grid, tix, kmap, neighbours, xval, L, signs, terms):
    """One 32-weight sub-block of IQ2_XXS; returns its scale (< 0: all zero, skipped)."""
    split_signs(xb, weight, 4, True, xval, signs)
    mx = largest(xval, 32)
    if mx < GROUP_MAX_EPS:
        return np.float32(-1.0)
    Lqp = np.empty(32, np.uint8)
    scale = make_qp_quants(32, 4, xval, Lqp, weight)
    for i in range(32):
        L[i] = Lqp[i]  # C's make_qp_quants writes these levels into L itself
    eff_max = scale * np.float32(3.0)
    if eff_max <= F0:
        return np.float32(-1.0)
    Laux = np.empty(32, np.int8)
    best = F0
    for is_ in range(-6, 7):
        id_ = (F5 + np.float32(is_) * P01) / eff_max
        this_scale = F1 / id_
        for k in range(4):
            u = round_group(id_, xval, 8 * k, 8, 2, 2, Laux)
            if kmap[u] < 0:
                best_neighbour8(neighbours, kmap[u], tix, xval, waux, 8 * k, this_scale, Laux, terms)
        sumqx, sumq2 = fit(weight, xval, Laux, 32)
        if sumq2 > F0 and sumqx * sumqx > best * sumq2:
            scale = sumqx / sumq2
            best = scale * sumqx
            for i in range(32):
                L[i] = Laux[i]
    if scale > F0:
        id_ = F1 / scale
        for k in range(4):
            u = round_group(id_, xval, 8 * k, 8, 2, 2, Laux)
            gi = kmap[u]
            if gi < 0:
                gi = best_neighbour8(neighbours, gi, tix, xval, waux, 8 * k, scale, L, terms)
            for i in range(8):
                L[8 * k + i] = (grid[gi, i] - 1) >> 1
        sumqx, sumq2 = fit(weight, xval, L, 32)
        if sumq2 > F0:
            scale = sumqx / sumq2
    if scale < F0:
        scale = -scale
        for k in range(4):
            signs[k] = (~signs[k]) & 127
    return scale


@njit(**JIT)
def encode_xxs_block(x, qw, grid, tix, kmap, neighbours, out):
    """One IQ2_XXS super-block (66 bytes; layout in iq2_xxs.py)."""
    for k in range(out.shape[0]):
        out[k] = 0
    sigma2 = _sigma2(x)
    weight = np.empty(32, np.float32)
    waux = np.empty(32, np.float32)
    xval = np.empty(32, np.float32)
    L = np.empty(32, np.int8)
    signs = np.empty(4, np.int64)
    terms = np.empty(24, np.float32)
    scales = np.zeros(8, np.float32)
    max_scale = F0
    for ib in range(8):
        _weights(x, qw, 32 * ib, 32, sigma2, weight, waux)
        scale = _xxs_sub_block(x[32 * ib:32 * ib + 32], weight, waux, grid, tix, kmap, neighbours, xval, L, signs,
                               terms)
        if scale < F0:
            continue
        for k in range(4):
            out[2 + 8 * ib + k] = _group_index(kmap, L, 8 * k)
        s = signs[0] | (signs[1] << 7) | (signs[2] << 14) | (signs[3] << 21)
        for k in range(4):
            out[6 + 8 * ib + k] = (s >> (8 * k)) & 0xFF
        scales[ib] = scale
        max_scale = max_scale if max_scale > scale else scale
    if max_scale == F0:
        for k in range(out.shape[0]):
            out[k] = 0
        return
    d = max_scale / np.float32(31.0)
    put_f16(out, 0, d)
    id_ = F1 / d
    for ib in range(8):
        out[9 + 8 * ib] |= _scale_nibble(id_, scales[ib]) << 4


@njit(**JIT)
def _xs_sub_block(xb, weight, waux, grid, tix, kmap, neighbours, xval, L, signs, even, eps, terms):
    """One 16-weight sub-block of IQ2_XS (even sign parity) or IQ2_S (8 sign bits);
    returns its scale (< 0: all zero, skipped)."""
    split_signs(xb, weight, 2, even, xval, signs)
    mx = largest(xval, 16)
    for i in range(16):
        L[i] = 0
    if mx < eps:
        return np.float32(-1.0)
    Laux = np.empty(16, np.int8)
    on = np.ones(2, np.bool_)
    on_aux = np.empty(2, np.bool_)
    best = F0
    scale = mx / F5
    for is_ in range(-9, 10):
        id_ = (F5 + np.float32(is_) * P01) / mx
        this_scale = F1 / id_
        for k in range(2):
            u = round_group(id_, xval, 8 * k, 8, 2, 2, Laux)
            on_aux[k] = kmap[u] >= 0
            if not on_aux[k]:
                best_neighbour8(neighbours, kmap[u], tix, xval, waux, 8 * k, this_scale, Laux, terms)
        sumqx, sumq2 = fit(weight, xval, Laux, 16)
        if sumq2 > F0 and sumqx * sumqx > best * sumq2:
            scale = sumqx / sumq2
            best = scale * sumqx
            for i in range(16):
                L[i] = Laux[i]
            for k in range(2):
                on[k] = on_aux[k]
    if (not on[0] or not on[1]) and scale > F0:
        id_ = F1 / scale
        for k in range(2):
            if on[k]:
                continue
            u = round_group(id_, xval, 8 * k, 8, 2, 2, L)
            if kmap[u] < 0:
                best_neighbour8(neighbours, kmap[u], tix, xval, waux, 8 * k, scale, L, terms)
        sumqx, sumq2 = fit(weight, xval, L, 16)
        if sumq2 > F0:
            scale = sumqx / sumq2
    if scale < F0:
        scale = -scale
        for k in range(2):
            signs[k] = (~signs[k]) & (127 if even else 255)
    return scale


@njit(**JIT)
def encode_xs_block(x, qw, grid, tix, kmap, neighbours, out):
    """One IQ2_XS super-block (74 bytes; layout in iq2_xs.py)."""
    for k in range(out.shape[0]):
        out[k] = 0
    sigma2 = _sigma2(x)
    weight = np.empty(16, np.float32)
    waux = np.empty(16, np.float32)
    xval = np.empty(16, np.float32)
    L = np.empty(16, np.int8)
    signs = np.empty(2, np.int64)
    terms = np.empty(24, np.float32)
    scales = np.zeros(16, np.float32)
    max_scale = F0
    for ib in range(16):
        _weights(x, qw, 16 * ib, 16, sigma2, weight, waux)
        scale = _xs_sub_block(x[16 * ib:16 * ib + 16], weight, waux, grid, tix, kmap, neighbours, xval, L, signs,
                              True, GROUP_MAX_EPS, terms)
        if scale < F0:
            continue
        for k in range(2):
            v = _group_index(kmap, L, 8 * k) | (signs[k] << 9)
            out[2 + 4 * ib + 2 * k] = v & 0xFF
            out[3 + 4 * ib + 2 * k] = v >> 8
        scales[ib] = scale
        max_scale = max_scale if max_scale > scale else scale
    if max_scale == F0:
        for k in range(out.shape[0]):
            out[k] = 0
        return
    d = max_scale / np.float32(31.0)
    put_f16(out, 0, d)
    id_ = F1 / d
    for ib in range(16):
        out[66 + ib // 2] |= _scale_nibble(id_, scales[ib]) << (4 * (ib % 2))


@njit(**JIT)
def encode_s_block(x, qw, has_qw, grid, tix, kmap, neighbours, out):
    """One IQ2_S super-block (82 bytes; layout in iq2_s.py): IQ2_XS's search with 8 stored
    sign bits, weights from sigma2 = 2*mean(x^2) (qw * sqrt(sigma2 + x^2), or without
    importance sigma2/4 + x^2), eps 1e-8, and d stored times 0.9875."""
    for k in range(out.shape[0]):
        out[k] = 0
    sigma2 = np.float32(2.0) * _sigma2(x)
    weight = np.empty(16, np.float32)
    waux = np.empty(16, np.float32)
    xval = np.empty(16, np.float32)
    L = np.empty(16, np.int8)
    signs = np.empty(2, np.int64)
    terms = np.empty(24, np.float32)
    scales = np.zeros(16, np.float32)
    max_scale = F0
    for ib in range(16):
        if has_qw:
            _weights(x, qw, 16 * ib, 16, sigma2, weight, waux)
        else:
            for i in range(16):
                weight[i] = np.float32(0.25) * sigma2 + x[16 * ib + i] * x[16 * ib + i]
                waux[i] = np.sqrt(weight[i])
        scale = _xs_sub_block(x[16 * ib:16 * ib + 16], weight, waux, grid, tix, kmap, neighbours, xval, L, signs,
                              False, EPS_S, terms)
        if scale < F0:
            continue
        for k in range(2):
            i8 = 2 * ib + k
            gi = _group_index(kmap, L, 8 * k)
            out[2 + i8] = gi & 255
            out[66 + i8 // 4] |= (gi >> 8) << (2 * (i8 % 4))
            out[34 + i8] = signs[k]
        scales[ib] = scale
        max_scale = max_scale if max_scale > scale else scale
    if max_scale == F0:  # llama.cpp keeps the codes it wrote, with d = 0
        return
    d = max_scale / np.float32(31.0)
    put_f16(out, 0, d * np.float32(0.9875))
    id_ = F1 / d
    for ib in range(16):
        out[74 + ib // 2] |= _scale_nibble(id_, scales[ib]) << (4 * (ib % 2))
