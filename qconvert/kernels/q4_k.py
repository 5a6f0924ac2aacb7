"""Q4_K: 256 weights as 8 sub-blocks of 32, each w = d*sc*q - dmin*m with q in 0..15
and 6-bit (sc, m) per sub-block; 4.5 bits per weight. Same search as llama.cpp's
quantize_row_q4_K_ref (plain) and quantize_row_q4_K_impl (with importance)."""

from __future__ import annotations

import numpy as np

from . import KERNELS, Kernel
from .flags import prange
from .kquant_common import (
    F0, KJIT, KPARALLEL, QK_K, get_f16, get_scale_min_k4, make_qkx_quants,
    make_qp_quants, nearest_int, njit, pack_scale_min_k4, put_f16, round_divided,
)
from .reference import q4_k as ref

TYPE_SIZE = 144
NMAX = 15

# Block layout, 144 bytes:
#
#   offset  size  field
#   0       2     d      fp16, super-scale of the 6-bit sub-block scales
#   2       2     dmin   fp16, super-scale of the 6-bit sub-block mins
#   4       12    scales 8 x (scale, min), 6 bits each (see kquant_common.pack_scale_min_k4)
#   16      128   qs     4-bit quants: in chunk c = 0..3 (64 weights), byte 32c + l holds
#                        weight 64c + l in its low nibble and 64c + 32 + l in its high one.


@njit(**KJIT)
def search_plain(x, nmax, rmin, nstep, L, ls, lm):
    """First half of quantize_row_q{4,5}_K_ref: a (scale, min) per sub-block of 32,
    weighted by av_x + |x|, then both quantized to 6 bits against the block maxima.
    Fills L (0..nmax), ls, lm; returns the float d and dmin to be stored as fp16."""
    Laux = np.empty(32, np.uint8)
    weights = np.empty(32, np.float32)
    scales = np.empty(8, np.float32)
    mins = np.empty(8, np.float32)
    max_scale = F0
    max_min = F0
    for j in range(8):
        xs = x[32 * j:32 * j + 32]
        sum_x2 = F0
        for l in range(32):
            sum_x2 += xs[l] * xs[l]
        av_x = np.sqrt(sum_x2 / np.float32(32))
        for l in range(32):
            weights[l] = av_x + abs(xs[l])
        s, m = make_qkx_quants(32, nmax, xs, weights, L[32 * j:32 * j + 32], Laux,
                               rmin, np.float32(0.1), nstep, False)
        scales[j] = s
        mins[j] = m
        if s > max_scale:
            max_scale = s
        if m > max_min:
            max_min = m
    inv_scale = np.float32(63) / max_scale if max_scale > F0 else F0
    inv_min = np.float32(63) / max_min if max_min > F0 else F0
    for j in range(8):
        ls[j] = min(63, nearest_int(inv_scale * scales[j]) & 0xFF)
        lm[j] = min(63, nearest_int(inv_min * mins[j]) & 0xFF)
    return max_scale / np.float32(63), max_min / np.float32(63)


@njit(**KJIT)
def search_importance(x, qw, nmax, L, ls, lm):
    """First half of quantize_row_q{4,5}_K_impl: weights qw * sqrt(sigma2 + x^2), a
    finer (scale, min) search, then make_qp_quants on the scales and on the mins."""
    Laux = np.empty(32, np.uint8)
    weights = np.empty(32, np.float32)
    sw = np.empty(8, np.float32)
    scales = np.empty(8, np.float32)
    mins = np.empty(8, np.float32)
    sum_x2 = F0
    for l in range(QK_K):
        sum_x2 += x[l] * x[l]
    sigma2 = np.float32(2) * sum_x2 / np.float32(QK_K)
    for j in range(8):
        for l in range(32):
            xv = x[32 * j + l]
            weights[l] = qw[32 * j + l] * np.sqrt(sigma2 + xv * xv)
        sumw = F0
        for l in range(32):
            sumw += weights[l]
        sw[j] = sumw
        s, m = make_qkx_quants(32, nmax, x[32 * j:32 * j + 32], weights, L[32 * j:32 * j + 32],
                               Laux, np.float32(-0.9), np.float32(0.05), 36, False)
        scales[j] = s
        mins[j] = m
    d_block = make_qp_quants(8, 63, scales, ls, sw)
    m_block = make_qp_quants(8, 63, mins, lm, sw)
    return d_block, m_block


@njit(**KJIT)
def write_head(x, nmax, L, ls, lm, d, dmin, out):
    """Store d, dmin and the scale table (bytes 0..15), then re-round every weight
    with the stored, rounded values into L (0..nmax), as C does before packing."""
    tmp = np.empty(32, np.float32)
    for j in range(12):
        out[4 + j] = 0
    pack_scale_min_k4(ls, lm, out, 4)
    dq = put_f16(out, 0, d)
    dmq = put_f16(out, 2, dmin)
    for j in range(8):
        sc, m = get_scale_min_k4(j, out, 4)
        dd = dq * np.float32(sc)
        if dd == F0:
            continue
        dm = dmq * np.float32(m)
        round_divided(x, 32 * j, 32, dm, dd, tmp, L, 0, nmax, 0)


@njit(**KJIT)
def _pack(L, out):
    for c in range(4):
        for l in range(32):
            out[16 + 32 * c + l] = L[64 * c + l] | (L[64 * c + 32 + l] << 4)


@njit(**KJIT)
def _encode_block(x, out):
    L = np.empty(QK_K, np.uint8)
    ls = np.empty(8, np.uint8)
    lm = np.empty(8, np.uint8)
    d, dmin = search_plain(x, NMAX, np.float32(-1.0), 20, L, ls, lm)
    write_head(x, NMAX, L, ls, lm, d, dmin, out)
    _pack(L, out)


@njit(**KJIT)
def _encode_block_imp(x, qw, out):
    L = np.empty(QK_K, np.uint8)
    ls = np.empty(8, np.uint8)
    lm = np.empty(8, np.uint8)
    d, dmin = search_importance(x, qw, NMAX, L, ls, lm)
    write_head(x, NMAX, L, ls, lm, d, dmin, out)
    _pack(L, out)


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
        d = get_f16(blk, 0)
        dmin = get_f16(blk, 2)
        for j in range(8):
            sc, m = get_scale_min_k4(j, blk, 4)
            dl = d * np.float32(sc)
            ml = dmin * np.float32(m)
            c = j // 2
            shift = 4 * (j % 2)
            for l in range(32):
                v = (blk[16 + 32 * c + l] >> shift) & 0xF
                y[b, 32 * j + l] = dl * np.float32(v) - ml
    return y


def encode(x: np.ndarray, importance: np.ndarray | None = None) -> np.ndarray:
    if importance is None:
        return _encode(x)
    return _encode_imp(x, importance)


KERNELS.add("Q4_K", Kernel("Q4_K", encode, decode, ref.encode, ref.decode))
