"""Q5_K in plain NumPy (twin of kernels/q5_k.py; layout drawn there). The search is
Q4_K's with nmax 31 and the ref path's rmin -0.5 / 15 steps."""

from __future__ import annotations

import numpy as np

from .kquant_common import F32, from_f16_bytes, unpack_scale_min_k4
from .q4_k import finish, pack_nibbles, search_importance, search_plain, unpack_nibbles

NMAX = 31


def encode(x: np.ndarray, importance: np.ndarray | None = None) -> np.ndarray:
    x = np.asarray(x, F32)
    nb = x.shape[0]
    if importance is None:
        L, ls, lm, d, dmin = search_plain(x, NMAX, -0.5, 15)
    else:
        L, ls, lm, d, dmin = search_importance(x, np.asarray(importance, F32), NMAX)
        ls, lm = np.minimum(63, ls), np.minimum(63, lm)  # q5_K_impl clamps, q4_K_impl not
    head, L = finish(x, L, ls, lm, d, dmin, NMAX)
    # bit 4 of q[64c + 32h + l] goes to bit 2c + h of qh byte l
    hi = (L.reshape(nb, 8, 32) >> 4).astype(np.uint8)
    qh = np.zeros((nb, 32), np.uint8)
    for j in range(8):
        qh |= hi[:, j] << j
    return np.concatenate([head, qh, pack_nibbles(L)], axis=1)


def decode(q: np.ndarray) -> np.ndarray:
    nb = q.shape[0]
    d = from_f16_bytes(q[:, 0:2])
    dmin = from_f16_bytes(q[:, 2:4])
    sc, m = unpack_scale_min_k4(q[:, 4:16])
    qh = q[:, 16:48].reshape(nb, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
    v = unpack_nibbles(q[:, 48:176]).reshape(nb, 8, 32) | ((qh & 1) << 4)
    dl = (d * sc.astype(F32))[:, :, None]
    ml = (dmin * m.astype(F32))[:, :, None]
    return (dl * v.astype(F32) - ml).reshape(nb, 256)
