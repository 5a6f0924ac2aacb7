"""Q4_K in plain NumPy (twin of kernels/q4_k.py; layout drawn there)."""

from __future__ import annotations

import numpy as np

from .kquant_common import (
    F0, F32, f16_bytes, from_f16_bytes, make_qkx_quants, make_qp_quants, nearest_int,
    pack_scale_min_k4, quiet, seq_sum, unpack_scale_min_k4,
)

NMAX = 15


def _running_max(v: np.ndarray) -> np.ndarray:
    """C's `if (v > best) best = v` over the sub-blocks, starting from 0."""
    best = np.zeros(v.shape[0], F32)
    for j in range(v.shape[1]):
        best = np.where(v[:, j] > best, v[:, j], best)
    return best


def finish(x: np.ndarray, L: np.ndarray, ls, lm, d, dmin, nmax: int):
    """Shared tail of Q4_K/Q5_K: store scales and fp16 d/dmin, re-round every weight
    with the stored values. Returns (head bytes (nb, 16), L (nb, 256))."""
    nb = x.shape[0]
    scale_bytes = pack_scale_min_k4(ls, lm)
    d_bytes, dmin_bytes = f16_bytes(d), f16_bytes(dmin)
    sc, m = unpack_scale_min_k4(scale_bytes)
    dd = from_f16_bytes(d_bytes) * sc.astype(F32)  # (nb, 8)
    dm = from_f16_bytes(dmin_bytes) * m.astype(F32)
    xs = x.reshape(nb, 8, 32)
    with quiet():
        l = np.clip(nearest_int((xs + dm[:, :, None]) / dd[:, :, None]), 0, nmax)
    L = np.where((dd != 0)[:, :, None], l, L.reshape(nb, 8, 32)).reshape(nb, 256)
    return np.concatenate([d_bytes, dmin_bytes, scale_bytes], axis=1), L


def pack_nibbles(L: np.ndarray) -> np.ndarray:
    """(nb, 256) 4-bit values -> (nb, 128): per 64-weight chunk, low nibble = first 32."""
    q = (L & 0xF).astype(np.uint8).reshape(-1, 4, 2, 32)
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)


def unpack_nibbles(qs: np.ndarray) -> np.ndarray:
    q = qs.reshape(-1, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
    return (q & 0xF).reshape(-1, 256)


def search_plain(x: np.ndarray, nmax: int, rmin: float, nstep: int):
    """quantize_row_q{4,5}_K_ref's first half: per-sub-block (scale, min), then the
    6-bit quantization of those against the block maxima."""
    nb = x.shape[0]
    xs = x.reshape(nb * 8, 32)
    av_x = np.sqrt(seq_sum(xs * xs) / F32(32))
    weights = av_x[:, None] + np.abs(xs)
    L, scales, mins = make_qkx_quants(xs, weights, nmax, rmin, 0.1, nstep, False)
    scales, mins = scales.reshape(nb, 8), mins.reshape(nb, 8)
    max_scale, max_min = _running_max(scales), _running_max(mins)
    with quiet():
        inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F0).astype(F32)
        inv_min = np.where(max_min > 0, F32(63) / max_min, F0).astype(F32)
    ls = np.minimum(63, nearest_int(inv_scale[:, None] * scales) & 0xFF)
    lm = np.minimum(63, nearest_int(inv_min[:, None] * mins) & 0xFF)
    return L.reshape(nb, 256), ls, lm, max_scale / F32(63), max_min / F32(63)


def search_importance(x: np.ndarray, imp: np.ndarray, nmax: int):
    """quantize_row_q{4,5}_K_impl's first half (importance-weighted)."""
    nb = x.shape[0]
    sigma2 = F32(2) * seq_sum(x * x) / F32(256)
    xs = x.reshape(nb, 8, 32)
    weights = imp.reshape(nb, 8, 32) * np.sqrt(sigma2[:, None, None] + xs * xs)
    sw = seq_sum(weights.reshape(nb * 8, 32)).reshape(nb, 8)
    L, scales, mins = make_qkx_quants(xs.reshape(-1, 32), weights.reshape(-1, 32), nmax,
                                      -0.9, 0.05, 36, False)
    ls, d_block = make_qp_quants(scales.reshape(nb, 8), 63, sw)
    lm, m_block = make_qp_quants(mins.reshape(nb, 8), 63, sw)
    return L.reshape(nb, 256), ls, lm, d_block, m_block


def encode(x: np.ndarray, importance: np.ndarray | None = None) -> np.ndarray:
    x = np.asarray(x, F32)
    if importance is None:
        L, ls, lm, d, dmin = search_plain(x, NMAX, -1.0, 20)
    else:
        L, ls, lm, d, dmin = search_importance(x, np.asarray(importance, F32), NMAX)
    head, L = finish(x, L, ls, lm, d, dmin, NMAX)
    return np.concatenate([head, pack_nibbles(L)], axis=1)


def decode(q: np.ndarray) -> np.ndarray:
    nb = q.shape[0]
    d = from_f16_bytes(q[:, 0:2])
    dmin = from_f16_bytes(q[:, 2:4])
    sc, m = unpack_scale_min_k4(q[:, 4:16])
    dl = (d * sc.astype(F32))[:, :, None]
    ml = (dmin * m.astype(F32))[:, :, None]
    v = unpack_nibbles(q[:, 16:144]).reshape(nb, 8, 32).astype(F32)
    return (dl * v - ml).reshape(nb, 256)
