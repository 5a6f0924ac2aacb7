"""The searches of IQ1_S and IQ1_M (llama.cpp's quantize_row_iq1_s_impl and
quantize_row_iq1_m_impl; IQ1_S needs importance weights, IQ1_M takes x^2 without).

Each group of 8 weights is one point of a 2048-point codebook with coordinates -1, 0, 1,
shifted by +delta or -delta (delta = 0.125), times the sub-block scale. Per sub-block (32
weights for S, 16 for M) the weights are sorted (a stable sort: glibc's qsort merges, so
equal values keep their order) and every split of the sorted list into three runs
(levels 0, 1, 2) is scored exactly with prefix sums, for both shifts (M: a shift per group
of 8, four combinations). Groups whose levels are off the codebook take the neighbour of
least weighted error at the chosen scale, and the scale is refitted.

S: sub-block scales become 3 bits against d = max_scale/15, stored fp16 d * 1.125; the
shift is bit 15 of the sub-block's qh. M: 3-bit scales against max_scale/15, then d is
refitted over the whole super-block and stored (times 1.1125) in the top nibbles of the
four scale words.
"""

from __future__ import annotations

import numpy as np

from .flags import JIT, njit
from .grid_search import FLT_MAX
from .half import f32_to_f16_bits
from .kquant_common import F0, F1, nearest_int, put_f16

DELTA = np.float32(0.125)
X_P = np.array([-1 + 0.125, 0.125, 1 + 0.125], np.float32)  # levels 0, 1, 2 with +delta
X_M = np.array([-1 - 0.125, -0.125, 1 - 0.125], np.float32)  # ... with -delta
EPS_S = np.float32(1e-12)  # GROUP_MAX_EPS_IQ1_S
EPS_M = np.float32(1e-7)  # GROUP_MAX_EPS_IQ1_M
HALF = np.float32(0.5)
MASKS_M = np.array([0x00, 0x80, 0x08, 0x88], np.int64)  # IQ1_M qh shift bits per combination


@njit(**JIT)
def stable_order(xb, n, idx):
    """idx[0:n] = positions of xb[0:n] by ascending value, equal values in position order."""
    for j in range(n):
        idx[j] = j
    for j in range(1, n):
        key = idx[j]
        i = j - 1
        while i >= 0 and xb[idx[i]] > xb[key]:
            idx[i + 1] = idx[i]
            i -= 1
        idx[i + 1] = key


@njit(**JIT)
def best_neighbour(neighbours, kmap_entry, tix, xb, weight, o, scale, xx, L, terms):
    """ggml's iq1_find_best_neighbour2: the listed neighbour with least sum
    w*(scale*xx[level] - x)^2 (first on a tie); its levels go to L[o:o+8]. As in
    grid_search.best_neighbour8 the 24 possible terms are computed once (exactly as the
    per-neighbour loop computes them) and each neighbour sums its 8 in order; `tix` is
    tables().term_index, `terms` (24,) scratch."""
    for i in range(8):
        for lv in range(3):
            diff = scale * xx[lv] - xb[o + i]
            terms[3 * i + lv] = weight[o + i] * diff * diff
    start = -kmap_entry - 1
    best_d2 = FLT_MAX
    best = -1
    for j in range(1, np.int64(neighbours[start]) + 1):
        g = np.int64(neighbours[start + j])
        t = tix[g]
        d2 = terms[t[0]] + terms[t[1]] + terms[t[2]] + terms[t[3]]
        d2 = d2 + terms[t[4]] + terms[t[5]] + terms[t[6]] + terms[t[7]]
        if d2 < best_d2:
            best_d2 = d2
            best = g
    if best < 0:  # llama.cpp falls back to a scan that reads past its array, then aborts
        raise ValueError("i-quant neighbour search found no finite error (weights too large or not finite)")
    for i in range(8):
        L[o + i] = tix[best, i] - 3 * i
    return best


@njit(**JIT)
def _group(kmap, L, o):
    u = 0
    for j in range(8):
        u |= np.int64(L[o + j]) << (2 * j)
    return kmap[u]


@njit(**JIT)
def _levels_from_split(idx, n, i1, i2, L):
    for j in range(n):
        L[idx[j]] = 0 if j < i1 else (1 if j < i2 else 2)


@njit(**JIT)
def _sigma2(x):
    s = F0
    for i in range(256):
        s += x[i] * x[i]
    return np.float32(2.0) * s / np.float32(256.0)


@njit(**JIT)
def _s_split(xb, weight, idx, sumx, sumw):
    """IQ1_S's exhaustive split search over one sorted 32-weight sub-block; returns
    (scale, i1, i2, shift), shift 0 when nothing scored."""
    sumx[0] = F0
    sumw[0] = F0
    for j in range(32):
        i = idx[j]
        sumx[j + 1] = sumx[j] + weight[i] * xb[i]
        sumw[j + 1] = sumw[j] + weight[i]
    best_score = -FLT_MAX
    scale = F0
    b1, b2, shift = -1, -1, 0
    for i1 in range(33):
        for i2 in range(i1, 33):
            for sgn in range(2):
                xx = X_P if sgn == 0 else X_M
                sumqx = (sumx[i1] - sumx[0]) * xx[0] + (sumx[i2] - sumx[i1]) * xx[1] + (sumx[32] - sumx[i2]) * xx[2]
                sumq2 = ((sumw[i1] - sumw[0]) * xx[0] * xx[0] + (sumw[i2] - sumw[i1]) * xx[1] * xx[1]
                         + (sumw[32] - sumw[i2]) * xx[2] * xx[2])
                if sumq2 > F0 and sumqx * sumqx > best_score * sumq2:
                    scale = sumqx / sumq2
                    best_score = scale * sumqx
                    b1, b2, shift = i1, i2, 1 - 2 * sgn
    return scale, b1, b2, shift


@njit(**JIT)
def encode_s_block(x, qw, grid, tix, kmap, neighbours, out):
    """One IQ1_S super-block (50 bytes; layout in iq1_s.py)."""
    for k in range(out.shape[0]):
        out[k] = 0
    sigma2 = _sigma2(x)
    weight = np.empty(32, np.float32)
    idx = np.empty(32, np.int64)
    sumx = np.empty(33, np.float32)
    sumw = np.empty(33, np.float32)
    L = np.empty(32, np.int8)
    index = np.empty(4, np.int64)
    terms = np.empty(24, np.float32)
    scales = np.zeros(8, np.float32)
    shifts = np.ones(8, np.int64)
    max_scale = F0
    for ib in range(8):
        xb = x[32 * ib:32 * ib + 32]
        for i in range(32):
            weight[i] = qw[32 * ib + i] * np.sqrt(sigma2 + xb[i] * xb[i])
        mx = abs(xb[0])
        for i in range(1, 32):
            mx = mx if mx > abs(xb[i]) else abs(xb[i])
        if mx < EPS_S:
            continue
        stable_order(xb, 32, idx)
        scale, i1, i2, shift = _s_split(xb, weight, idx, sumx, sumw)
        if i1 < 0 or i2 < 0 or shift == 0:
            continue
        _levels_from_split(idx, 32, i1, i2, L)
        if scale < F0:
            for j in range(32):
                L[j] = 2 - L[j]
            scale = -scale
            shift = -shift
        xx = X_P if shift == 1 else X_M
        all_on = True
        for k in range(4):
            gi = _group(kmap, L, 8 * k)
            if gi < 0:
                all_on = False
                gi = best_neighbour(neighbours, gi, tix, xb, weight, 8 * k, scale, xx, L, terms)
            index[k] = gi
        if not all_on:
            sumqx = F0
            sumq2 = F0
            for k in range(4):
                for j in range(8):
                    w = weight[8 * k + j]
                    q = xx[(grid[index[k], j] - 1) // 2]
                    sumqx += w * q * xb[8 * k + j]
                    sumq2 += w * q * q
            if sumqx > F0 and sumq2 > F0:
                scale = sumqx / sumq2
        h = 0
        for k in range(4):
            out[2 + 4 * ib + k] = index[k] & 255
            h |= (index[k] >> 8) << (3 * k)
        out[34 + 2 * ib] = h & 0xFF
        out[35 + 2 * ib] = h >> 8
        scales[ib] = scale
        shifts[ib] = shift
        max_scale = max_scale if max_scale > scale else scale
    if max_scale == F0:  # llama.cpp keeps the codes it wrote, with d = 0
        return
    d = max_scale / np.float32(15.0)
    put_f16(out, 0, d * np.float32(1.125))
    id_ = F1 / d
    for ib in range(8):
        l = max(0, min(7, nearest_int(HALF * (id_ * scales[ib] - F1))))
        if shifts[ib] == -1:
            l |= 8
        out[35 + 2 * ib] |= l << 4


@njit(**JIT)
def _m_weights(x, qw, has_qw, ib, sigma2, weight):
    for i in range(16):
        v = x[16 * ib + i]
        weight[i] = qw[16 * ib + i] * np.sqrt(sigma2 + v * v) if has_qw else v * v


@njit(**JIT)
def _m_split(xb, weight, idx, px, pw):
    """IQ1_M's split search over one sorted 16-weight sub-block, each half with its own
    shift (k: 0 = ++, 1 = +-, 2 = -+, 3 = --); returns (scale, i1, i2, k), k < 0 when
    nothing scored. The prefix sums px, pw (2, 17) are kept per half, and since the level
    values differ by 1, a split's sums collapse to T*v2 - px[i1] - px[i2] (as ggml
    computes them; scalars here so that the 153 x 4 candidates stay in registers)."""
    px[0, 0] = F0
    px[1, 0] = F0
    pw[0, 0] = F0
    pw[1, 0] = F0
    for j in range(16):
        i = idx[j]
        h = 0 if i < 8 else 1
        px[h, j + 1] = px[h, j] + weight[i] * xb[i]
        px[1 - h, j + 1] = px[1 - h, j]
        pw[h, j + 1] = pw[h, j] + weight[i]
        pw[1 - h, j + 1] = pw[1 - h, j]
    p2 = X_P[2]
    m2 = X_M[2]
    cp1 = X_P[0] * X_P[0] - X_P[1] * X_P[1]
    cp2 = X_P[1] * X_P[1] - X_P[2] * X_P[2]
    cm1 = X_M[0] * X_M[0] - X_M[1] * X_M[1]
    cm2 = X_M[1] * X_M[1] - X_M[2] * X_M[2]
    tx0, tx1, tw0, tw1 = px[0, 16], px[1, 16], pw[0, 16], pw[1, 16]
    tx0p, tx0m, tx1p, tx1m = tx0 * p2, tx0 * m2, tx1 * p2, tx1 * m2
    tw0p, tw0m, tw1p, tw1m = tw0 * p2 * p2, tw0 * m2 * m2, tw1 * p2 * p2, tw1 * m2 * m2
    best_score = -FLT_MAX
    scale = F0
    b1, b2, bk = -1, -1, -1
    for i1 in range(17):
        for i2 in range(i1, 17):
            sx0 = px[0, i1] + px[0, i2]
            sx1 = px[1, i1] + px[1, i2]
            qxp0 = tx0p - sx0
            qxm0 = tx0m - sx0
            qxp1 = tx1p - sx1
            qxm1 = tx1m - sx1
            q2p0 = tw0p + pw[0, i1] * cp1 + pw[0, i2] * cp2
            q2m0 = tw0m + pw[0, i1] * cm1 + pw[0, i2] * cm2
            q2p1 = tw1p + pw[1, i1] * cp1 + pw[1, i2] * cp2
            q2m1 = tw1m + pw[1, i1] * cm1 + pw[1, i2] * cm2
            for k in range(4):
                sumqx = (qxp0 if k < 2 else qxm0) + (qxp1 if k % 2 == 0 else qxm1)
                sumq2 = (q2p0 if k < 2 else q2m0) + (q2p1 if k % 2 == 0 else q2m1)
                if sumq2 > F0 and sumqx * sumqx > best_score * sumq2:
                    scale = sumqx / sumq2
                    best_score = scale * sumqx
                    b1, b2, bk = i1, i2, k
    return scale, b1, b2, bk


@njit(**JIT)
def _m_values(k, shift):
    """The level values of group k (0 or 1) of a sub-block with shift combination `shift`."""
    if k == 0:
        return X_P if shift < 2 else X_M
    return X_P if shift % 2 == 0 else X_M


@njit(**JIT)
def encode_m_block(x, qw, has_qw, grid, tix, kmap, neighbours, out):
    """One IQ1_M super-block (56 bytes; layout in iq1_m.py)."""
    for k in range(out.shape[0]):
        out[k] = 0
    sigma2 = _sigma2(x)
    weight = np.empty(16, np.float32)
    idx = np.empty(16, np.int64)
    L = np.empty(16, np.int8)
    index = np.empty(2, np.int64)
    terms = np.empty(24, np.float32)
    px = np.empty((2, 17), np.float32)
    pw = np.empty((2, 17), np.float32)
    scales = np.zeros(16, np.float32)
    shifts = np.zeros(16, np.int64)
    max_scale = F0
    for ib in range(16):
        xb = x[16 * ib:16 * ib + 16]
        _m_weights(x, qw, has_qw, ib, sigma2, weight)
        mx = abs(xb[0])
        for i in range(1, 16):
            mx = mx if mx > abs(xb[i]) else abs(xb[i])
        if mx < EPS_M:
            continue
        stable_order(xb, 16, idx)
        scale, i1, i2, shift = _m_split(xb, weight, idx, px, pw)
        if i1 < 0 or i2 < 0 or shift < 0:
            continue
        _levels_from_split(idx, 16, i1, i2, L)
        if scale < F0:
            for j in range(16):
                L[j] = 2 - L[j]
            scale = -scale
            shift = 3 - shift
        all_on = True
        for k in range(2):
            gi = _group(kmap, L, 8 * k)
            if gi < 0:
                all_on = False
                gi = best_neighbour(neighbours, gi, tix, xb, weight, 8 * k, scale, _m_values(k, shift), L, terms)
            index[k] = gi
        if not all_on:
            sumqx = F0
            sumq2 = F0
            for k in range(2):
                xx = _m_values(k, shift)
                for j in range(8):
                    w = weight[8 * k + j]
                    q = xx[(grid[index[k], j] - 1) // 2]
                    sumqx += w * q * xb[8 * k + j]
                    sumq2 += w * q * q
            if sumqx > F0 and sumq2 > F0:
                scale = sumqx / sumq2
        out[2 * ib] = index[0] & 255
        out[2 * ib + 1] = index[1] & 255
        out[32 + ib] = (index[0] >> 8) | ((index[1] >> 8) << 4)
        scales[ib] = scale
        shifts[ib] = shift
        max_scale = max_scale if max_scale > scale else scale
    if max_scale == F0:
        return
    d = max_scale / np.float32(15.0)
    id_ = F1 / d
    sumqx = F0
    sumq2 = F0
    sc = np.zeros(4, np.int64)
    for ib in range(16):
        l = max(0, min(7, nearest_int(HALF * (id_ * scales[ib] - F1))))
        sc[ib // 4] |= l << (3 * (ib % 4))
        out[32 + ib] |= MASKS_M[shifts[ib]]
        _m_weights(x, qw, has_qw, ib, sigma2, weight)
        qh = np.int64(out[32 + ib])
        for k in range(2):
            xx = _m_values(k, shifts[ib])
            gi = np.int64(out[2 * ib + k]) + ((qh << (8 - 4 * k)) & 0x700)
            for j in range(8):
                w = weight[8 * k + j]
                q = xx[(grid[gi, j] - 1) >> 1] * np.float32(2 * l + 1)
                sumqx += w * q * x[16 * ib + 8 * k + j]
                sumq2 += w * q * q
    if sumq2 > F0:
        d = sumqx / sumq2
    s = np.int64(f32_to_f16_bits(d * np.float32(1.1125)))
    sc[0] |= (s & 0x000F) << 12
    sc[1] |= (s & 0x00F0) << 8
    sc[2] |= (s & 0x0F00) << 4
    sc[3] |= s & 0xF000
    for j in range(4):
        out[48 + 2 * j] = sc[j] & 0xFF
        out[49 + 2 * j] = (sc[j] >> 8) & 0xFF
