"""A more thorough choice of K-quant block scales (`--scale-search thorough`), run on the
blocks llama.cpp's search wrote.

llama.cpp picks each sub-block's real scale (and min) by a grid search, then rounds the
scales themselves to a few bits against one fp16 super-scale d (and dmin), and re-rounds
the weights with the rounded scales. The rounding of the scales is where much of the
error comes from at 2-3 bits, and nothing in llama.cpp looks at it again. Iwan Kawrakow
(the K-quants' author) showed in ik_llama.cpp that searching the integer scales and the
super-scale afterwards, scored by the error of the final dequantized weights, cuts
Q3_K perplexity by several percent. This module does that search, our own way:

  1. each sub-block tries its neighbouring integer scales (and mins), +-2;
  2. the super-scale d tries fp16 values around it (steps moving the largest sub-block's
     integer by half a unit), each sub-block re-choosing its integer scale near the same
     real scale (+-2 for the symmetric types, +-1 for the others, whose mins stay); then
     the same for dmin (mins +-1, scales kept);
  3. with the weights' codes fixed, the least-squares (d, dmin) is tried;
  4. step 1 again, +-1.

A sub-block's codes are always the nearest ones for its scale and min (optimal for a
fixed scale), so a block is a function of (d, dmin, integer scales, integer mins), and its
error sum_i w_i (x_i - y_i)^2, y the value ggml's decoder computes, is separable over
sub-blocks. Every step keeps a candidate only when it lowers the block's total, and the
block is written only when the result is below llama.cpp's own block's error: the output
is never worse than llama.cpp's under these weights, and is ordinary ggml blocks.

Errors are float64 sums in a fixed order (sub-block by sub-block, weight by weight);
reference/scale_refine.py is the NumPy twin and tests compare the two byte for byte.
"""

from __future__ import annotations

import numpy as np

from .flags import prange
from .half import f16_bits_to_f32, f32_to_f16_bits
from .kquant_common import (
    F0, F1, KJIT, KPARALLEL, QK_K, get_f16, get_scale_min_k4, nearest_int, njit, pack_2bit,
    pack_scale_min_k4, put_f16,
)

from .scale_refine_spec import D_TRIES, HALF, MARGIN, SPECS, TYPE_SIZES  # noqa: F401  (re-exported)


@njit(**KJIT)
def _f16(v):
    return f16_bits_to_f32(f32_to_f16_bits(np.float32(v)))


@njit(inline="always", **KJIT)
def _code(xv, dd, dm, asym, qlo, qhi):
    """The nearest code for xv at sub-block scale dd != 0 and offset dm (asymmetric types)."""
    v = (xv + dm) / dd if asym else xv / dd
    # clamped as a float first: the rounding trick is exact only below 2**22
    v = max(np.float32(qlo - 1), min(np.float32(qhi + 1), v))
    return max(qlo, min(qhi, nearest_int(v)))


@njit(**KJIT)
def _sub_err(x, w, start, bs, dd, dm, asym, qlo, qhi):
    """sum w (y - x)^2 over one sub-block, y as ggml decodes it: dd*q - dm (or dd*q)."""
    e = 0.0
    for i in range(start, start + bs):
        if dd == F0:
            y = -dm if asym else F0
        else:
            q = np.float32(_code(x[i], dd, dm, asym, qlo, qhi))
            y = dd * q - dm if asym else dd * q
        diff = np.float64(y - x[i])
        e += np.float64(w[i]) * diff * diff
    return e


@njit(**KJIT)
def _best_sub(x, w, j, spec, d, dmin, sc, mc, rs, rm):
    """The best (error, scale, min) of sub-block j among scales sc-rs..sc+rs and mins
    mc-rm..mc+rm within the type's ranges; the first of equal errors wins."""
    bs, asym, qlo, qhi, slo, shi, mlo, mhi = spec[2], spec[3], spec[4], spec[5], spec[6], spec[7], spec[8], spec[9]
    best = np.inf
    bsc = sc
    bmc = mc
    for ds in range(-rs, rs + 1):
        s = sc + ds
        if s < slo or s > shi:
            continue
        for dmi in range(-rm, rm + 1):
            m = mc + dmi
            if m < mlo or m > mhi:
                continue
            e = _sub_err(x, w, j * bs, bs, d * np.float32(s), dmin * np.float32(m), asym, qlo, qhi)
            if e < best:
                best = e
                bsc = s
                bmc = m
    return best, bsc, bmc


@njit(**KJIT)
def _neighbours(x, w, spec, d, dmin, s, m, esub, r):
    """Step 1: each sub-block's best scale (and min) within +-r of its own."""
    rm = r if spec[3] else 0
    for j in range(spec[1]):
        esub[j], s[j], m[j] = _best_sub(x, w, j, spec, d, dmin, s[j], m[j], r, rm)


@njit(**KJIT)
def _total(esub):
    t = 0.0
    for j in range(esub.shape[0]):
        t += esub[j]
    return t


@njit(**KJIT)
def _try_supers(x, w, spec, d, dmin, s, m, esub, which):
    """Step 2: fp16 super-scales (which=0: d, 1: dmin) around the current one; each
    sub-block keeps its real scale (or min) as nearly as its integers allow. Returns the
    (d, dmin) kept; s, m, esub are updated in place."""
    nsub, asym = spec[1], spec[3]
    lo, hi = (spec[6], spec[7]) if which == 0 else (spec[8], spec[9])
    base = d if which == 0 else dmin
    if base == F0:
        return d, dmin
    top = 0
    for j in range(nsub):
        top = max(top, abs(s[j]) if which == 0 else m[j])
    if top == 0:
        return d, dmin
    step = HALF / np.float32(top)
    rs = 1 if asym else 2
    best = _total(esub)
    ts = np.empty(nsub, np.int64)
    tm = np.empty(nsub, np.int64)
    te = np.empty(nsub, np.float64)
    for k in range(-D_TRIES, D_TRIES + 1):
        if k == 0:
            continue
        cand = _f16(base * (F1 + np.float32(k) * step))
        cur = d if which == 0 else dmin
        if cand == cur or cand == F0 or not np.isfinite(cand) or (cand > F0) != (base > F0):
            continue
        tot = 0.0
        for j in range(nsub):
            if which == 0:
                sc = max(lo, min(hi, nearest_int(d * np.float32(s[j]) / cand)))
                te[j], ts[j], tm[j] = _best_sub(x, w, j, spec, cand, dmin, sc, m[j], rs, 0)
            else:
                mc = max(lo, min(hi, nearest_int(dmin * np.float32(m[j]) / cand)))
                te[j], ts[j], tm[j] = _best_sub(x, w, j, spec, d, cand, s[j], mc, 0, 1)
            tot += te[j]
        if tot < best:
            best = tot
            if which == 0:
                d = cand
            else:
                dmin = cand
            s[:] = ts
            m[:] = tm
            esub[:] = te
    return d, dmin


@njit(**KJIT)
def _try_least_squares(x, w, spec, d, dmin, s, m, esub):
    """Step 3: with every weight's code fixed, the (d, dmin) of least weighted squared
    error, rounded to fp16; kept (sub-blocks re-choosing scales +-1) if the total drops."""
    nsub, bs, asym, qlo, qhi = spec[1], spec[2], spec[3], spec[4], spec[5]
    saa = 0.0
    sab = 0.0
    sbb = 0.0
    sax = 0.0
    sbx = 0.0
    for j in range(nsub):
        dd = d * np.float32(s[j])
        dm = dmin * np.float32(m[j])
        for i in range(j * bs, j * bs + bs):
            q = 0 if dd == F0 else _code(x[i], dd, dm, asym, qlo, qhi)
            a = np.float64(s[j] * q)
            b = np.float64(m[j])
            wi = np.float64(w[i])
            xi = np.float64(x[i])
            saa += wi * a * a
            sab += wi * a * b
            sbb += wi * b * b
            sax += wi * a * xi
            sbx += wi * b * xi
    if asym:
        det = saa * sbb - sab * sab
        if not det > 0.0:
            return d, dmin
        nd = _f16(np.float32((sax * sbb - sab * sbx) / det))
        ndmin = _f16(np.float32(-(saa * sbx - sab * sax) / det))
        if not (nd > F0 and ndmin >= F0):
            return d, dmin
    else:
        if not saa > 0.0:
            return d, dmin
        nd = _f16(np.float32(sax / saa))
        ndmin = dmin
        if nd == F0 or (nd > F0) != (d > F0):
            return d, dmin
    if nd == d and ndmin == dmin:
        return d, dmin
    rm = 1 if asym else 0
    ts = np.empty(nsub, np.int64)
    tm = np.empty(nsub, np.int64)
    te = np.empty(nsub, np.float64)
    tot = 0.0
    for j in range(nsub):
        te[j], ts[j], tm[j] = _best_sub(x, w, j, spec, nd, ndmin, s[j], m[j], 1, rm)
        tot += te[j]
    if tot < _total(esub):
        s[:] = ts
        m[:] = tm
        esub[:] = te
        return nd, ndmin
    return d, dmin


# ---- reading and writing the five block layouts (drawn in q2_k.py .. q6_k.py) -----------


@njit(**KJIT)
def _unpack(code, blk, s, m):
    """(d, dmin) of a block; its integer scales into s and mins into m (signed for Q3_K
    and Q6_K, as the decoder applies them)."""
    if code == 0:
        for j in range(16):
            s[j] = blk[j] & 0xF
            m[j] = blk[j] >> 4
        return get_f16(blk, 80), get_f16(blk, 82)
    if code == 1:
        for j in range(16):
            lo = (np.int64(blk[96 + j]) & 0xF) if j < 8 else (np.int64(blk[96 + j - 8]) >> 4)
            hi = (np.int64(blk[104 + j % 4]) >> (2 * (j // 4))) & 3
            s[j] = (lo | (hi << 4)) - 32
            m[j] = 0
        return get_f16(blk, 108), F0
    if code == 4:
        for j in range(16):
            v = np.int64(blk[192 + j])
            s[j] = v - 256 if v > 127 else v
            m[j] = 0
        return get_f16(blk, 208), F0
    for j in range(8):
        sc, mn = get_scale_min_k4(j, blk, 4)
        s[j] = sc
        m[j] = mn
    return get_f16(blk, 0), get_f16(blk, 2)


@njit(**KJIT)
def _codes(x, spec, d, dmin, s, m, L):
    """Every weight's stored code (0-based) for the chosen scales; 0 where a scale is 0."""
    nsub, bs, asym, qlo, qhi = spec[1], spec[2], spec[3], spec[4], spec[5]
    for j in range(nsub):
        dd = d * np.float32(s[j])
        dm = dmin * np.float32(m[j])
        for i in range(j * bs, j * bs + bs):
            q = 0 if dd == F0 else _code(x[i], dd, dm, asym, qlo, qhi)
            L[i] = q - qlo


@njit(**KJIT)
def _pack(code, d, dmin, s, m, L, out):
    """Write a block from its super-scales, integer scales/mins and codes L (0-based)."""
    if code == 0:
        for j in range(16):
            out[j] = s[j] | (m[j] << 4)
        pack_2bit(L, out, 16)
        put_f16(out, 80, d)
        put_f16(out, 82, dmin)
    elif code == 1:
        for k in range(12):
            out[96 + k] = 0
        for j in range(16):
            ls = s[j] + 32
            if j < 8:
                out[96 + j] = ls & 0xF
            else:
                out[96 + j - 8] |= (ls & 0xF) << 4
            out[104 + j % 4] |= (ls >> 4) << (2 * (j // 4))
        for k in range(32):
            out[k] = 0
        for i in range(QK_K):
            if L[i] > 3:
                out[i % 32] |= 1 << (i // 32)
                L[i] -= 4
        pack_2bit(L, out, 32)
        put_f16(out, 108, d)
    elif code == 4:
        for j in range(16):
            out[192 + j] = s[j] & 0xFF
        for h in range(2):
            for l in range(32):
                q1 = L[128 * h + l]
                q2 = L[128 * h + l + 32]
                q3 = L[128 * h + l + 64]
                q4 = L[128 * h + l + 96]
                out[64 * h + l] = (q1 & 0xF) | ((q3 & 0xF) << 4)
                out[64 * h + l + 32] = (q2 & 0xF) | ((q4 & 0xF) << 4)
                out[128 + 32 * h + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6)
        put_f16(out, 208, d)
    else:
        ls = np.empty(8, np.uint8)
        lm = np.empty(8, np.uint8)
        for j in range(8):
            ls[j] = s[j]
            lm[j] = m[j]
        for k in range(12):
            out[4 + k] = 0
        pack_scale_min_k4(ls, lm, out, 4)
        put_f16(out, 0, d)
        put_f16(out, 2, dmin)
        qs = 16 if code == 2 else 48
        if code == 3:
            for l in range(32):
                out[16 + l] = 0
        for c in range(4):
            for l in range(32):
                l1 = L[64 * c + l]
                l2 = L[64 * c + 32 + l]
                out[qs + 32 * c + l] = (l1 & 0xF) | ((l2 & 0xF) << 4)
                if code == 3:
                    out[16 + l] |= ((l1 >> 4) << (2 * c)) | ((l2 >> 4) << (2 * c + 1))


@njit(**KJIT)
def _refine_block(x, w, blk, spec, out):
    code, nsub = spec[0], spec[1]
    for k in range(blk.shape[0]):
        out[k] = blk[k]
    s = np.empty(nsub, np.int64)
    m = np.empty(nsub, np.int64)
    d, dmin = _unpack(code, blk, s, m)
    if d == F0 or not np.isfinite(d) or not np.isfinite(dmin):
        return
    esub = np.empty(nsub, np.float64)
    for j in range(nsub):
        esub[j] = _sub_err(x, w, j * spec[2], spec[2], d * np.float32(s[j]), dmin * np.float32(m[j]),
                           spec[3], spec[4], spec[5])
    e0 = _total(esub)
    if not np.isfinite(e0) or e0 == 0.0:
        return
    _neighbours(x, w, spec, d, dmin, s, m, esub, 2)
    d, dmin = _try_supers(x, w, spec, d, dmin, s, m, esub, 0)
    if spec[3]:
        d, dmin = _try_supers(x, w, spec, d, dmin, s, m, esub, 1)
    d, dmin = _try_least_squares(x, w, spec, d, dmin, s, m, esub)
    _neighbours(x, w, spec, d, dmin, s, m, esub, 1)
    if not _total(esub) < e0 * (1.0 - MARGIN):
        return
    L = np.empty(QK_K, np.uint8)
    _codes(x, spec, d, dmin, s, m, L)
    _pack(code, d, dmin, s, m, L, out)


@njit(**KPARALLEL)
def _refine(x, w, blocks, spec):
    n = x.shape[0]
    out = np.empty_like(blocks)
    for b in prange(n):
        _refine_block(x[b], w[b], blocks[b], spec, out[b])
    return out


def refine_blocks(name: str, x: np.ndarray, blocks: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """x, weights: float32 (n, 256); blocks: uint8 (n, type size), llama.cpp's encoding of
    x -> the refined blocks (each one either kept or of lower weighted error)."""
    return _refine(x, weights, blocks, spec_of(name))


def spec_of(name: str) -> tuple:
    return tuple(int(v) for v in SPECS[name])


REFINABLE = frozenset(SPECS)


def error_weights(x: np.ndarray, importance: np.ndarray | None) -> np.ndarray:
    """The weight of each value's squared error: sqrt(sigma2 + x^2), sigma2 twice the
    block's mean square (llama.cpp's K-quant weighting: large weights count more), times
    the value's importance (mean x^2 of its input channel) when there are statistics.
    On the example model this scored better than the importance alone (or 1): Q3_K_M KL
    0.00890 vs 0.00946 without statistics, 0.00846 vs 0.00918 with them."""
    x2 = x * x
    sigma2 = np.float32(2) * x2.mean(axis=1, keepdims=True, dtype=np.float32)
    w = np.sqrt(sigma2 + x2, dtype=np.float32)
    if importance is not None:
        w = w * np.ascontiguousarray(importance, dtype=np.float32).reshape(x.shape)
    return np.ascontiguousarray(w, dtype=np.float32)


def refine(name: str, x: np.ndarray, blocks: np.ndarray, importance: np.ndarray | None = None,
           reference: bool = False) -> np.ndarray:
    """llama.cpp's blocks of x (a K-quant `name`) with the thorough scale search applied;
    other types are returned as they are. x: any shape of whole 256-blocks; blocks: the
    matching bytes, any shape; importance: one weight per value of x, or None."""
    if name not in REFINABLE:
        return blocks
    flat = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, QK_K)
    q = np.ascontiguousarray(blocks, dtype=np.uint8).reshape(flat.shape[0], TYPE_SIZES[name])
    w = error_weights(flat, importance)
    if reference:
        from .reference.scale_refine import refine_blocks as slow

        return slow(name, flat, q, w).reshape(blocks.shape)
    return refine_blocks(name, flat, q, w).reshape(blocks.shape)
