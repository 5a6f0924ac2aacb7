"""NumPy twin of kernels/iq4_common.py: the same search on all blocks at once, the
loops over the 32 positions of a block kept in C order so every float32 sum rounds
where ggml's does."""

from __future__ import annotations

import numpy as np

from .kquant_common import F0, F1, F32, GROUP_MAX_EPS, quiet, seq_sum, signed_absmax

KVALUES_F = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], F32)
NTRY = 7


def best_index(x: np.ndarray) -> np.ndarray:
    """ggml's best_index_int8 elementwise: the same bisection, lane by lane."""
    v = KVALUES_F
    x = np.asarray(x, F32)
    ml = np.zeros(x.shape, np.int64)
    mu = np.full(x.shape, 15, np.int64)
    while True:
        live = mu - ml > 1
        if not live.any():
            break
        mav = (ml + mu) // 2
        lower = x < v[mav]
        mu = np.where(live & lower, mav, mu)
        ml = np.where(live & ~lower, mav, ml)
    idx = np.where(x - v[mu - 1] < v[mu] - x, mu - 1, mu)
    idx = np.where(x >= v[15], 15, idx)
    return np.where(x <= v[0], 0, idx)


def _fit(x, w, id_):
    q = KVALUES_F[best_index(id_[:, None] * x)]
    return seq_sum(w * q * x), seq_sum(w * q * q)


def block_scales(x: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
    """x (G, S) super-blocks -> (G, S/32) block scales."""
    G, S = x.shape
    sigma2 = seq_sum(x * x) * (F32(2.0) / F32(S))
    xb = x.reshape(-1, 32)
    if qw is None:
        w = xb * xb
    else:
        w = (qw.reshape(-1, 32) * np.sqrt(np.repeat(sigma2, S // 32)[:, None] + xb * xb)).astype(F32)
    amax, mx = signed_absmax(xb)
    with quiet():
        sumqx, sumq2 = _fit(xb, w, F1 / (-mx / KVALUES_F[0]))
        d = np.where(sumq2 > 0, sumqx / sumq2, F0).astype(F32)
        best = d * sumqx
        for itry in range(-NTRY, NTRY + 1):
            sumqx, sumq2 = _fit(xb, w, F32(itry - 127) / mx)
            upd = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
            d = np.where(upd, sumqx / sumq2, d).astype(F32)
            best = np.where(upd, d * sumqx, best).astype(F32)
    return np.where(amax < GROUP_MAX_EPS, F0, d).reshape(G, S // 32)


def levels(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Index of each weight at the given per-block scale (0 -> all weights at 0 * x)."""
    with quiet():
        inv = np.where(scale != 0, F1 / scale, F0).astype(F32)
    return best_index(inv[:, None] * x)


def pack_levels(L: np.ndarray) -> np.ndarray:
    """(n, 32k) indices -> (n, 16k) bytes, per 32-weight block j | j + 16 << 4."""
    q = L.astype(np.uint8).reshape(L.shape[0], -1, 2, 16)
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(L.shape[0], -1)


def max_scale(scales: np.ndarray) -> np.ndarray:
    """Per row, the first scale of largest magnitude (C's strict `>`)."""
    return signed_absmax(scales)[1]

