"""Q2_K: 256 weights as 16 sub-blocks of 16, w = d*sc*q - dmin*m with q in 0..3 and
4-bit (sc, m) per sub-block; 2.625 bits per weight. Same search as llama.cpp's
quantize_row_q2_K_ref (plain) and quantize_row_q2_K_impl (with importance)."""

from __future__ import annotations

import numpy as np

from . import KERNELS, Kernel
from .flags import prange
from .kquant_common import (
    F0, KJIT, KPARALLEL, QK_K, get_f16, make_qkx_quants, make_qp_quants, nearest_int, njit,
    pack_2bit, put_f16, round_divided,
)
from .reference import q2_k as ref

TYPE_SIZE = 84

# Block layout, 84 bytes:
#
#   offset  size  field
#   0       16    scales byte j = sub-block j's scale (low nibble) | min << 4 (high nibble)
#   16      64    qs     2-bit quants, kquant_common.pack_2bit order
#   80      2     d      fp16 super-scale of the scales
#   82      2     dmin   fp16 super-scale of the mins


@njit(**KJIT)
def _finish_block(x, L, d, dmin, out):
    """Re-round with the stored scales (C skips sub-blocks whose scale is 0) and pack."""
    tmp = np.empty(16, np.float32)
    for j in range(16):
        dd = d * np.float32(out[j] & 0xF)
        if dd == F0:
            continue
        dm = dmin * np.float32(out[j] >> 4)
        round_divided(x, 16 * j, 16, dm, dd, tmp, L, 0, 3, 0)
    pack_2bit(L, out, 16)


@njit(**KJIT)
def _encode_block(x, out):
    L = np.empty(QK_K, np.uint8)
    Laux = np.empty(16, np.uint8)
    weights = np.empty(16, np.float32)
    scales = np.empty(16, np.float32)
    mins = np.empty(16, np.float32)
    q4scale = np.float32(15)
    max_scale = F0
    max_min = F0
    for j in range(16):
        xs = x[16 * j:16 * j + 16]
        for l in range(16):
            weights[l] = abs(xs[l])
        s, m = make_qkx_quants(16, 3, xs, weights, L[16 * j:16 * j + 16], Laux,
                               np.float32(-0.5), np.float32(0.1), 15, True)
        scales[j] = s
        mins[j] = m
        if s > max_scale:
            max_scale = s
        if m > max_min:
            max_min = m
    if max_scale > F0:
        iscale = q4scale / max_scale
        for j in range(16):
            out[j] = nearest_int(iscale * scales[j]) & 0xFF
        d = put_f16(out, 80, max_scale / q4scale)
    else:
        for j in range(16):
            out[j] = 0
        d = put_f16(out, 80, F0)
    if max_min > F0:
        iscale = q4scale / max_min
        for j in range(16):
            out[j] |= (nearest_int(iscale * mins[j]) << 4) & 0xFF
        dmin = put_f16(out, 82, max_min / q4scale)
    else:
        dmin = put_f16(out, 82, F0)
    _finish_block(x, L, d, dmin, out)


@njit(**KJIT)
def _encode_block_imp(x, qw, out):
    L = np.empty(QK_K, np.uint8)
    Laux = np.empty(16, np.uint8)
    weight = np.empty(16, np.float32)
    sw = np.empty(16, np.float32)
    scales = np.empty(16, np.float32)
    mins = np.empty(16, np.float32)
    sumx2 = F0
    for j in range(QK_K):
        sumx2 += x[j] * x[j]
    sigma2 = sumx2 / np.float32(QK_K)  # q2_K_impl: no factor 2, unlike Q3..Q5
    for j in range(16):
        for l in range(16):
            xv = x[16 * j + l]
            weight[l] = qw[16 * j + l] * np.sqrt(sigma2 + xv * xv)
        s = F0
        for l in range(16):
            s += weight[l]
        sw[j] = s
        sc, m = make_qkx_quants(16, 3, x[16 * j:16 * j + 16], weight, L[16 * j:16 * j + 16],
                                Laux, np.float32(-0.9), np.float32(0.05), 36, False)
        scales[j] = sc
        mins[j] = m
    Ls = np.empty(16, np.uint8)
    Lm = np.empty(16, np.uint8)
    dm = make_qp_quants(16, 15, scales, Ls, sw)
    mm = make_qp_quants(16, 15, mins, Lm, sw)
    d = put_f16(out, 80, dm)
    dmin = put_f16(out, 82, mm)
    for j in range(16):
        out[j] = Ls[j] | (Lm[j] << 4)
    _finish_block(x, L, d, dmin, out)


@njit(**KPARALLEL)
def _encode(x):
    n = x.shape[0]
    out = np.empty((n, TYPE_SIZE), np.uint8)
    for b in prange(n):
        _encode_block(x[b], out[b])
    return out


@njit(**KPARALLEL)
def _encode_imp(x, imp):
    n = x.shape[0]
    out = np.empty((n, TYPE_SIZE), np.uint8)
    for b in prange(n):
        _encode_block_imp(x[b], imp[b], out[b])
    return out


@njit(**KPARALLEL)
def decode(q):
    n = q.shape[0]
    y = np.empty((n, QK_K), np.float32)
    for b in prange(n):
        blk = q[b]
        d = get_f16(blk, 80)
        dmin = get_f16(blk, 82)
        for j in range(16):
            dl = d * np.float32(blk[j] & 0xF)
            ml = dmin * np.float32(blk[j] >> 4)
            for ii in range(16):
                i = 16 * j + ii
                h, r = i // 128, i % 128
                v = (blk[16 + 32 * h + r % 32] >> (2 * (r // 32))) & 3
                y[b, i] = dl * np.float32(v) - ml
    return y


def encode(x: np.ndarray, importance: np.ndarray | None = None) -> np.ndarray:
    if importance is None:
        return _encode(x)
    return _encode_imp(x, importance)


KERNELS.add("Q2_K", Kernel("Q2_K", encode, decode, ref.encode, ref.decode))
