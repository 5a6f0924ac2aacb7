"""NumPy twin of kernels/scale_refine.py (the thorough K-quant scale search).

Every routine works on all blocks at once: per-block scalars are (nb,) arrays, the
kernel's `if`/`continue` are masks, and the loops over sub-blocks, candidates and weights
run in the kernel's order, so each float64 error sum is formed exactly as the kernel forms
it and the two choose the same scales, byte for byte.
"""

from __future__ import annotations

import numpy as np

from ..half import f16_bits_to_f32_np, f32_to_f16_bits_np
from ..scale_refine_spec import D_TRIES, HALF, MARGIN, SPECS
from .kquant_common import (
    F0, F1, F32, f16_bytes, nearest_int, pack_2bit, pack_scale_min_k4, quiet, unpack_2bit,
    unpack_scale_min_k4,
)
from .q3_k import pack_scales as pack_q3_scales, unpack_scales as unpack_q3_scales
from .q4_k import pack_nibbles

F64 = np.float64


def _f16(v: np.ndarray) -> np.ndarray:
    return f16_bits_to_f32_np(f32_to_f16_bits_np(np.asarray(v, F32)))


def _code(xv, dd, dm, asym, qlo, qhi):
    with quiet():
        v = (xv + dm) / dd if asym else xv / dd
        v = np.maximum(F32(qlo - 1), np.minimum(F32(qhi + 1), v))
        return np.clip(nearest_int(v), qlo, qhi)


def _sub_err(x, w, start, bs, dd, dm, asym, qlo, qhi):
    e = np.zeros(x.shape[0], F64)
    zero = dd == F0
    for i in range(start, start + bs):
        q = _code(x[:, i], dd, dm, asym, qlo, qhi).astype(F32)
        with quiet():
            y = dd * q - dm if asym else dd * q
        y = np.where(zero, -dm if asym else F0, y).astype(F32)
        diff = (y - x[:, i]).astype(F64)
        e = e + w[:, i].astype(F64) * diff * diff
    return e


def _best_sub(x, w, j, spec, d, dmin, sc, mc, rs, rm):
    bs, asym, qlo, qhi, slo, shi, mlo, mhi = spec[2:10]
    best = np.full(x.shape[0], np.inf)
    bsc = sc.copy()
    bmc = mc.copy()
    for ds in range(-rs, rs + 1):
        s = sc + ds
        ok_s = (s >= slo) & (s <= shi)
        for dmi in range(-rm, rm + 1):
            m = mc + dmi
            ok = ok_s & (m >= mlo) & (m <= mhi)
            e = _sub_err(x, w, j * bs, bs, d * s.astype(F32), dmin * m.astype(F32), asym, qlo, qhi)
            better = ok & (e < best)
            best = np.where(better, e, best)
            bsc = np.where(better, s, bsc)
            bmc = np.where(better, m, bmc)
    return best, bsc, bmc


def _neighbours(x, w, spec, d, dmin, s, m, esub, r):
    rm = r if spec[3] else 0
    for j in range(spec[1]):
        esub[:, j], s[:, j], m[:, j] = _best_sub(x, w, j, spec, d, dmin, s[:, j], m[:, j], r, rm)


def _total(esub):
    t = np.zeros(esub.shape[0], F64)
    for j in range(esub.shape[1]):
        t = t + esub[:, j]
    return t


def _take(mask, new, old):
    return np.where(mask.reshape(mask.shape + (1,) * (old.ndim - 1)), new, old)


def _try_supers(x, w, spec, d, dmin, s, m, esub, which):
    nsub, asym = spec[1], spec[3]
    lo, hi = (spec[6], spec[7]) if which == 0 else (spec[8], spec[9])
    base = d if which == 0 else dmin
    top = np.abs(s).max(axis=1) if which == 0 else m.max(axis=1)
    active = (base != F0) & (top != 0)
    with quiet():
        step = HALF / top.astype(F32)
    rs = 1 if asym else 2
    best = _total(esub)
    for k in range(-D_TRIES, D_TRIES + 1):
        if k == 0:
            continue
        with quiet():
            cand = _f16(base * (F1 + F32(k) * step))
        cur = d if which == 0 else dmin
        ok = active & (cand != cur) & (cand != F0) & np.isfinite(cand) & ((cand > F0) == (base > F0))
        te = np.zeros_like(esub)
        ts = s.copy()
        tm = m.copy()
        tot = np.zeros(x.shape[0], F64)
        for j in range(nsub):
            with quiet():
                if which == 0:
                    sc = np.clip(nearest_int((d * s[:, j].astype(F32)) / cand), lo, hi)
                    te[:, j], ts[:, j], tm[:, j] = _best_sub(x, w, j, spec, cand, dmin, sc, m[:, j], rs, 0)
                else:
                    mc = np.clip(nearest_int((dmin * m[:, j].astype(F32)) / cand), lo, hi)
                    te[:, j], ts[:, j], tm[:, j] = _best_sub(x, w, j, spec, d, cand, s[:, j], mc, 0, 1)
            tot = tot + te[:, j]
        better = ok & (tot < best)
        best = np.where(better, tot, best)
        if which == 0:
            d = np.where(better, cand, d)
        else:
            dmin = np.where(better, cand, dmin)
        s[:] = _take(better, ts, s)
        m[:] = _take(better, tm, m)
        esub[:] = _take(better, te, esub)
    return d, dmin


def _try_least_squares(x, w, spec, d, dmin, s, m, esub):
    nsub, bs, asym, qlo, qhi = spec[1:6]
    sums = [np.zeros(x.shape[0], F64) for _ in range(5)]
    saa, sab, sbb, sax, sbx = sums
    for j in range(nsub):
        dd = d * s[:, j].astype(F32)
        dm = dmin * m[:, j].astype(F32)
        for i in range(j * bs, j * bs + bs):
            q = np.where(dd == F0, 0, _code(x[:, i], dd, dm, asym, qlo, qhi))
            a = (s[:, j] * q).astype(F64)
            b = m[:, j].astype(F64)
            wi = w[:, i].astype(F64)
            xi = x[:, i].astype(F64)
            saa = saa + wi * a * a
            sab = sab + wi * a * b
            sbb = sbb + wi * b * b
            sax = sax + wi * a * xi
            sbx = sbx + wi * b * xi
    with quiet():
        if asym:
            det = saa * sbb - sab * sab
            nd = _f16(((sax * sbb - sab * sbx) / det).astype(F32))
            ndmin = _f16((-(saa * sbx - sab * sax) / det).astype(F32))
            ok = (det > 0.0) & (nd > F0) & (ndmin >= F0)
        else:
            nd = _f16((sax / saa).astype(F32))
            ndmin = dmin
            ok = (saa > 0.0) & (nd != F0) & ((nd > F0) == (d > F0))
    ok &= ~((nd == d) & (ndmin == dmin))
    rm = 1 if asym else 0
    te = np.zeros_like(esub)
    ts = s.copy()
    tm = m.copy()
    tot = np.zeros(x.shape[0], F64)
    for j in range(nsub):
        te[:, j], ts[:, j], tm[:, j] = _best_sub(x, w, j, spec, nd, ndmin, s[:, j], m[:, j], 1, rm)
        tot = tot + te[:, j]
    better = ok & (tot < _total(esub))
    s[:] = _take(better, ts, s)
    m[:] = _take(better, tm, m)
    esub[:] = _take(better, te, esub)
    return np.where(better, nd, d).astype(F32), np.where(better, ndmin, dmin).astype(F32)


# ---- the five block layouts --------------------------------------------------------------


def _f16_at(blocks, pos):
    h = np.ascontiguousarray(blocks[:, pos:pos + 2]).view("<u2").reshape(-1)
    return f16_bits_to_f32_np(h)


def _unpack(name, blocks):
    nb = blocks.shape[0]
    if name == "Q2_K":
        sc = blocks[:, :16]
        return _f16_at(blocks, 80), _f16_at(blocks, 82), (sc & 0xF).astype(np.int64), (sc >> 4).astype(np.int64)
    if name == "Q3_K":
        return _f16_at(blocks, 108), np.zeros(nb, F32), unpack_q3_scales(blocks[:, 96:108]), np.zeros((nb, 16), np.int64)
    if name == "Q6_K":
        s = blocks[:, 192:208].view(np.int8).astype(np.int64)
        return _f16_at(blocks, 208), np.zeros(nb, F32), s, np.zeros((nb, 16), np.int64)
    ls, lm = unpack_scale_min_k4(blocks[:, 4:16])
    return _f16_at(blocks, 0), _f16_at(blocks, 2), ls.astype(np.int64), lm.astype(np.int64)


def _codes(x, spec, d, dmin, s, m):
    nsub, bs, asym, qlo, qhi = spec[1:6]
    L = np.zeros(x.shape, np.int64)
    for j in range(nsub):
        dd = d * s[:, j].astype(F32)
        dm = dmin * m[:, j].astype(F32)
        sl = slice(j * bs, j * bs + bs)
        q = _code(x[:, sl], dd[:, None], dm[:, None], asym, qlo, qhi)
        L[:, sl] = np.where((dd == F0)[:, None], 0, q) - qlo
    return L.astype(np.uint8)


def _pack(name, d, dmin, s, m, L):
    nb = L.shape[0]
    if name == "Q2_K":
        return np.concatenate([(s | (m << 4)).astype(np.uint8), pack_2bit(L), f16_bytes(d), f16_bytes(dmin)], axis=1)
    if name == "Q3_K":
        high = (L > 3).astype(np.uint8).reshape(nb, 8, 32)
        hmask = np.zeros((nb, 32), np.uint8)
        for k in range(8):
            hmask |= high[:, k] << k
        return np.concatenate([hmask, pack_2bit(L & 3), pack_q3_scales(s + 32), f16_bytes(d)], axis=1)
    if name == "Q6_K":
        q = L.reshape(nb, 2, 4, 32)  # [half, quarter, l]
        ql = np.concatenate([(q[:, :, 0] & 0xF) | ((q[:, :, 2] & 0xF) << 4),
                             (q[:, :, 1] & 0xF) | ((q[:, :, 3] & 0xF) << 4)], axis=2).reshape(nb, 128)
        hi = q >> 4
        qh = (hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)).reshape(nb, 64)
        return np.concatenate([ql, qh, (s & 0xFF).astype(np.uint8), f16_bytes(d)], axis=1)
    head = np.concatenate([f16_bytes(d), f16_bytes(dmin), pack_scale_min_k4(s, m)], axis=1)
    if name == "Q4_K":
        return np.concatenate([head, pack_nibbles(L)], axis=1)
    top = (L >> 4).reshape(nb, 4, 2, 32)  # [chunk c, first/second 32, l]
    qh = np.zeros((nb, 32), np.uint8)
    for c in range(4):
        qh |= (top[:, c, 0] << (2 * c)) | (top[:, c, 1] << (2 * c + 1))
    return np.concatenate([head, qh, pack_nibbles(L)], axis=1)


def refine_blocks(name: str, x: np.ndarray, blocks: np.ndarray, weights: np.ndarray) -> np.ndarray:
    spec = tuple(int(v) for v in SPECS[name])
    x = np.asarray(x, F32)
    w = np.asarray(weights, F32)
    d, dmin, s, m = _unpack(name, blocks)
    nsub, bs = spec[1], spec[2]
    esub = np.zeros((x.shape[0], nsub), F64)
    for j in range(nsub):
        esub[:, j] = _sub_err(x, w, j * bs, bs, d * s[:, j].astype(F32), dmin * m[:, j].astype(F32), *spec[3:6])
    e0 = _total(esub)
    active = (d != F0) & np.isfinite(d) & np.isfinite(dmin) & np.isfinite(e0) & (e0 != 0.0)
    _neighbours(x, w, spec, d, dmin, s, m, esub, 2)
    d, dmin = _try_supers(x, w, spec, d, dmin, s, m, esub, 0)
    if spec[3]:
        d, dmin = _try_supers(x, w, spec, d, dmin, s, m, esub, 1)
    d, dmin = _try_least_squares(x, w, spec, d, dmin, s, m, esub)
    _neighbours(x, w, spec, d, dmin, s, m, esub, 1)
    with quiet():
        keep = active & (_total(esub) < e0 * (1.0 - MARGIN))
    out = _pack(name, d, dmin, s, m, _codes(x, spec, d, dmin, s, m))
    return np.where(keep[:, None], out, blocks)
