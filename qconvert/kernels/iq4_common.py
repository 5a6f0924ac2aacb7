"""The 4-bit non-linear search shared by IQ4_NL (one 32-weight block) and IQ4_XS (a
256-weight super-block of eight 32-weight sub-blocks), following llama.cpp's
quantize_row_iq4_nl_impl with ntry = 7 (what ggml_quantize_chunk runs, with or without
an importance matrix).

Each weight is one of 16 fixed levels (KVALUES, ggml-common.h's kvalues_iq4nl) times a
block scale. Per 32-weight block: start from d = max/127 (the largest |x| lands on -127),
fit d by weighted least squares to the levels that start picked, then try the 15 inverse
scales (itry - 127)/max, itry = -7..7, keeping the fit whose sumqx^2/sumq2 is largest.
Weights are x^2, or with importance qw * sqrt(sigma2 + x^2), sigma2 = 2 * mean(x^2) over
the super-block. IQ4_XS then quantizes the eight block scales to 6 bits (signed, -32..31)
against one fp16 super-scale d = -max_scale/32 and picks each weight's level anew.
"""

from __future__ import annotations

import numpy as np

from .flags import JIT, njit
from .kquant_common import F0, F1, GROUP_MAX_EPS, nearest_int, put_f16

KVALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.int8)
KVALUES_F = KVALUES.astype(np.float32)
NTRY = 7


@njit(**JIT)
def best_index(x):
    """ggml's best_index_int8 over KVALUES: the nearest level, the upper one on a tie;
    a bisection, so NaN lands where C's comparisons send it."""
    v = KVALUES_F
    if x <= v[0]:
        return 0
    if x >= v[15]:
        return 15
    ml, mu = 0, 15
    while mu - ml > 1:
        mav = (ml + mu) // 2
        if x < v[mav]:
            mu = mav
        else:
            ml = mav
    return mu - 1 if x - v[mu - 1] < v[mu] - x else mu


@njit(**JIT)
def block_scale(xb, weight):
    """The least-squares scale of one 32-weight block (0 for an all-zero block)."""
    v = KVALUES_F
    amax = F0
    mx = F0
    for j in range(32):
        ax = abs(xb[j])
        if ax > amax:
            amax = ax
            mx = xb[j]
    if amax < GROUP_MAX_EPS:
        return F0
    d = -mx / v[0]
    id_ = F1 / d
    sumqx = F0
    sumq2 = F0
    for j in range(32):
        q = v[best_index(id_ * xb[j])]
        w = weight[j]
        sumqx += w * q * xb[j]
        sumq2 += w * q * q
    d = sumqx / sumq2 if sumq2 > F0 else F0
    best = d * sumqx
    for itry in range(-NTRY, NTRY + 1):
        id_ = np.float32(itry - 127) / mx
        sumqx = F0
        sumq2 = F0
        for j in range(32):
            q = v[best_index(id_ * xb[j])]
            w = weight[j]
            sumqx += w * q * xb[j]
            sumq2 += w * q * q
        if sumq2 > F0 and sumqx * sumqx > best * sumq2:
            d = sumqx / sumq2
            best = d * sumqx
    return d


@njit(**JIT)
def block_scales(x, qw, has_qw, scales):
    """Scales of the len(x)/32 blocks of one super-block; returns the one of largest |d|
    (the first on a tie)."""
    S = x.shape[0]
    sigma2 = F0
    for j in range(S):
        sigma2 += x[j] * x[j]
    sigma2 = sigma2 * (np.float32(2.0) / np.float32(S))
    weight = np.empty(32, np.float32)
    max_scale = F0
    amax_scale = F0
    for ib in range(S // 32):
        xb = x[32 * ib:32 * ib + 32]
        for j in range(32):
            weight[j] = qw[32 * ib + j] * np.sqrt(sigma2 + xb[j] * xb[j]) if has_qw else xb[j] * xb[j]
        d = block_scale(xb, weight)
        scales[ib] = d
        if abs(d) > amax_scale:
            amax_scale = abs(d)
            max_scale = d
    return max_scale


@njit(**JIT)
def pack_levels(L, out, pos):
    """32-weight blocks of 4-bit levels: byte 16i + j = L[32i + j] | L[32i + 16 + j] << 4."""
    for i in range(L.shape[0] // 32):
        for j in range(16):
            out[pos + 16 * i + j] = L[32 * i + j] | (L[32 * i + 16 + j] << 4)


@njit(**JIT)
def encode_nl_block(x, qw, has_qw, out):
    """One IQ4_NL block: fp16 d, then 16 bytes of levels."""
    scales = np.empty(1, np.float32)
    block_scales(x, qw, has_qw, scales)
    d = scales[0]
    put_f16(out, 0, d)
    id_ = F1 / d if d != F0 else F0
    L = np.empty(32, np.uint8)
    for j in range(32):
        L[j] = best_index(id_ * x[j])
    pack_levels(L, out, 2)


@njit(**JIT)
def encode_xs_block(x, qw, has_qw, out):
    """One IQ4_XS super-block: fp16 d, uint16 scales_h (2 high bits per sub-block),
    4 bytes scales_l (low nibbles), 128 bytes of levels. As in C, the unrounded d and
    6-bit scales pick the levels."""
    scales = np.empty(8, np.float32)
    max_scale = block_scales(x, qw, has_qw, scales)
    d = -max_scale / np.float32(32.0)
    put_f16(out, 0, d)
    id_ = F1 / d if d != F0 else F0
    L = np.empty(256, np.uint8)
    scales_h = 0
    for k in range(4):
        out[4 + k] = 0
    for ib in range(8):
        l = nearest_int(id_ * scales[ib])
        l = max(-32, min(31, l))
        dl = d * np.float32(l)
        idl = F1 / dl if dl != F0 else F0
        for j in range(32):
            L[32 * ib + j] = best_index(idl * x[32 * ib + j])
        l += 32
        out[4 + ib // 2] |= (l & 0xF) << (4 * (ib % 2))
        scales_h |= (l >> 4) << (2 * ib)
    out[2] = scales_h & 0xFF
    out[3] = scales_h >> 8
    pack_levels(L, out, 8)
