"""NumPy twin of kernels/iq2_common.py (the searches of IQ2_XXS, IQ2_XS and IQ2_S,
explained there), every sub-block at once."""

from __future__ import annotations

import numpy as np

from .grid_search import fit, largest, round_groups, split_signs
from .kquant_common import F0, F1, F32, GROUP_MAX_EPS, f16_bytes, make_qp_quants, nearest_int, quiet, seq_sum

HALF = F32(0.5)
EPS_S = F32(1e-8)  # GROUP_MAX_EPS_IQ2_S


def weights(x: np.ndarray, qw: np.ndarray | None, sub: int, twice: bool = False):
    """(sub-blocks, weight, sqrt(weight)) per sub-block of `sub` weights: qw * sqrt(sigma2
    + x^2), sigma2 = mean(x^2) over each 256-weight super-block (twice that for IQ2_S,
    whose weights without importance are sigma2/4 + x^2)."""
    sumx2 = seq_sum(x * x)
    sigma2 = ((F32(2.0) * sumx2 if twice else sumx2) / F32(256.0)).astype(F32)
    xb = x.reshape(-1, sub)
    s2 = np.repeat(sigma2, 256 // sub)[:, None]
    if qw is None:
        w = (F32(0.25) * s2 + xb * xb).astype(F32)
    else:
        w = (qw.reshape(-1, sub) * np.sqrt(s2 + xb * xb)).astype(F32)
    return xb, w, np.sqrt(w).astype(F32)


def search_xxs(x: np.ndarray, qw: np.ndarray):
    """Per 32-weight sub-block: (levels (G, 32), signs (G, 4), scale (G,), written (G,))."""
    xb, w, waux = weights(x, qw, 32)
    xval, signs = split_signs(xb, w, True)
    written = ~(largest(xval) < GROUP_MAX_EPS)
    with quiet():
        L, scale = make_qp_quants(xval, 4, w)
        L = L.astype(np.int64)
        eff_max = (scale * F32(3.0)).astype(F32)
        written &= ~(eff_max <= 0)
        best = np.zeros(len(xb), F32)
        for is_ in range(-6, 7):
            id_ = ((F32(5.0) + F32(is_) * F32(0.1)) / eff_max).astype(F32)
            Laux, _ = round_groups("IQ2_XXS", xval, id_, (F1 / id_).astype(F32), waux, 2)
            sumqx, sumq2 = fit(w, xval, Laux)
            upd = written & (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
            scale = np.where(upd, sumqx / sumq2, scale).astype(F32)
            best = np.where(upd, scale * sumqx, best).astype(F32)
            L = np.where(upd[:, None], Laux, L)
        fix = written & (scale > 0)
        id_ = np.where(fix, F1 / scale, F0).astype(F32)
        L2, _ = round_groups("IQ2_XXS", xval, id_, scale, waux, 2)
        sumqx, sumq2 = fit(w, xval, L2)
        L = np.where(fix[:, None], L2, L)
        scale = np.where(fix & (sumq2 > 0), sumqx / sumq2, scale).astype(F32)
    return _finish(L, signs, scale, written, 127)


def search_xs(x: np.ndarray, qw: np.ndarray | None, type_name: str = "IQ2_XS"):
    """IQ2_XS (or IQ2_S: 8 sign bits, eps 1e-8, its own weights) per 16-weight sub-block:
    (levels (G, 16), signs (G, 2), scale (G,), written (G,))."""
    s_type = type_name == "IQ2_S"
    xb, w, waux = weights(x, qw, 16, twice=s_type)
    xval, signs = split_signs(xb, w, not s_type)
    mx = largest(xval)
    written = ~(mx < (EPS_S if s_type else GROUP_MAX_EPS))
    G = len(xb)
    L = np.zeros((G, 16), np.int64)
    on = np.ones((G, 2), bool)
    best = np.zeros(G, F32)
    with quiet():
        scale = (mx / F32(5.0)).astype(F32)
        for is_ in range(-9, 10):
            id_ = ((F32(5.0) + F32(is_) * F32(0.1)) / mx).astype(F32)
            Laux, on_aux = round_groups(type_name, xval, id_, (F1 / id_).astype(F32), waux, 2)
            sumqx, sumq2 = fit(w, xval, Laux)
            upd = written & (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
            scale = np.where(upd, sumqx / sumq2, scale).astype(F32)
            best = np.where(upd, scale * sumqx, best).astype(F32)
            L = np.where(upd[:, None], Laux, L)
            on = np.where(upd[:, None], on_aux, on)
        fix = written & (~on).any(axis=1) & (scale > 0)
        id_ = np.where(fix, F1 / scale, F0).astype(F32)
        L2, _ = round_groups(type_name, xval, id_, scale, waux, 2, L, ~on & fix[:, None])
        sumqx, sumq2 = fit(w, xval, L2)
        L = np.where(fix[:, None], L2, L)
        scale = np.where(fix & (sumq2 > 0), sumqx / sumq2, scale).astype(F32)
    return _finish(L, signs, scale, written, 255 if s_type else 127)


def _finish(L, signs, scale, written, sign_mask):
    flip = scale < 0
    signs = np.where(flip[:, None], ~signs & sign_mask, signs)
    scale = np.where(written, np.abs(scale), F0).astype(F32)
    return np.where(written[:, None], L, 0), signs, scale, written


def super_scale(scales: np.ndarray, fudge: float = 1.0):
    """(max_scale, d * fudge as fp16 bytes, 4-bit scales) from (n, k) sub-block scales."""
    mx = largest(scales)
    d = (mx / F32(31.0)).astype(F32)
    with quiet():
        ls = np.clip(nearest_int(HALF * ((F1 / d)[:, None] * scales - F1)), 0, 15)
    stored = d if fudge == 1.0 else (d * F32(fudge)).astype(F32)
    return mx, f16_bytes(stored), ls
