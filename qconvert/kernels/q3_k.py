"""Q3_K: 256 weights as 16 sub-blocks of 16, w = d * (sc - 32) * (q - 4) with q in 0..7
and a 6-bit scale per sub-block; 3.4375 bits per weight. Same search as llama.cpp's
quantize_row_q3_K_ref (plain) and quantize_row_q3_K_impl (with importance)."""

from __future__ import annotations

import numpy as np

from . import KERNELS, Kernel
from .flags import prange
from .kquant_common import (
    F0, F1, KJIT, KPARALLEL, QK_K, get_f16, make_qx_quants, nearest_int, njit, pack_2bit,
    put_f16, round_divided,
)
from .kquant_lanes import NL, importance_lanes, lane_scratch, load_lanes, run_groups, q3_lanes, qx_lanes
from .reference import q3_k as ref

TYPE_SIZE = 110

# Block layout, 110 bytes:
#
#   offset  size  field
#   0       32    hmask  bit 2 of each quant: byte l, bit k <- q[32k + l]   (k = 0..7)
#   32      64    qs     low 2 bits, kquant_common.pack_2bit order
#   96      12    scales sixteen 6-bit scales s0..s15 (stored as scale + 32):
#                   byte  0..7 : [s(j+8) lo4 | s(j) lo4]
#                   byte 8..11 : byte 8 + k holds, from bit 0 up, the high 2 bits of
#                                s(k), s(k+4), s(k+8), s(k+12)
#   108     2     d      fp16 super-scale


@njit(**KJIT)
def _pack_scales(ls, out):
    """ls: 16 values 0..63 -> the 12 scale bytes at out[96:108]."""
    for k in range(12):
        out[96 + k] = 0
    for j in range(16):
        l = ls[j]
        if j < 8:
            out[96 + j] = l & 0xF
        else:
            out[96 + j - 8] |= (l & 0xF) << 4
        out[96 + 8 + j % 4] |= (l >> 4) << (2 * (j // 4))


@njit(**KJIT)
def _scale(q, j):
    """Sub-block j's signed scale (-32..31) from the 12 scale bytes at q[96:108]."""
    if j < 8:
        lo = np.int64(q[96 + j]) & 0xF
    else:
        lo = np.int64(q[96 + j - 8]) >> 4
    hi = (np.int64(q[96 + 8 + j % 4]) >> (2 * (j // 4))) & 3
    return (lo | (hi << 4)) - 32


G = NL // 16  # super-blocks per lane group


@njit(**KJIT)
def _finish_block(x, L, d, out, tmp):
    """Re-round with the stored scales, then split each 3-bit quant into hmask + qs."""
    dq = put_f16(out, 108, d)
    for j in range(16):
        dd = dq * np.float32(_scale(out, j))
        if dd == F0:
            continue
        round_divided(x, 16 * j, 16, None, dd, tmp, L, -4, 3, 4)
    for m in range(32):  # hmask byte m, bit k: q[32k + m] > 3 (no branch: q is random)
        h = 0
        for k in range(8):
            hi = L[32 * k + m] >> 2  # 0 or 1 (q in 0..7)
            h |= hi << k
            L[32 * k + m] -= hi << 2
        out[m] = h
    pack_2bit(L, out, 32)


@njit(**KJIT)
def _head_plain(scales, ls, out):
    """quantize_row_q3_K_ref: the sub-block scales to 6 bits against the largest;
    returns d."""
    max_scale = F0
    amax = F0
    for j in range(16):
        s = scales[j]
        if abs(s) > amax:
            amax = abs(s)
            max_scale = s
    if max_scale != F0:
        iscale = np.float32(-32) / max_scale
        for j in range(16):
            l = ((nearest_int(iscale * scales[j]) + 128) & 0xFF) - 128  # C stores into int8
            ls[j] = max(-32, min(31, l)) + 32
        d = F1 / iscale
    else:
        for j in range(16):
            ls[j] = 0
        d = F0
    _pack_scales(ls, out)
    return d


@njit(**KJIT)
def _head_imp(scales, sw, Ls, ls, w, wx, out):
    """quantize_row_q3_K_impl: the scales through make_qx_quants(16, 32) weighted by
    each sub-block's weight sum; returns d."""
    d = make_qx_quants(16, 32, scales, Ls, sw, True, w, wx)
    for j in range(16):
        ls[j] = Ls[j]
    _pack_scales(ls, out)
    return d


@njit(**KJIT)
def _encode_groups(x, qw, has_qw, first, last, out):
    """The 16 sub-blocks of G super-blocks searched at once: plain, make_q3_quants
    (kquant_lanes.q3_lanes); importance, make_qx_quants(16, 4) weighted by
    qw * sqrt(sigma2 + x^2) (kquant_lanes.qx_lanes)."""
    n = x.shape[0]
    xt, wt, ft, par, acc, Lt = lane_scratch(16)
    L = np.empty(QK_K, np.int8)
    scales = np.empty(16, np.float32)
    sw = np.empty(16, np.float32)
    Ls = np.empty(16, np.int8)
    ls = np.empty(16, np.int64)
    w = np.empty(16, np.float32)
    wx = np.empty(16, np.float32)
    tmp = np.empty(16, np.float32)
    for grp in range(first, last):
        b0 = grp * G
        nb = min(G, n - b0)
        load_lanes(x, b0, nb, 16, xt)
        if has_qw:
            importance_lanes(x, qw, b0, nb, 16, 2, xt, wt, acc[3], par[15])
            qx_lanes(16, 4, xt, wt, ft, par, acc, Lt)
        else:
            q3_lanes(16, 4, xt, wt, ft, par, Lt)
        for g in range(nb):
            for j in range(16):
                k = 16 * g + j
                scales[j] = par[2, k]  # kquant_lanes: q3/qx scale row
                sw[j] = acc[3, k]
                for i in range(16):
                    L[16 * j + i] = Lt[i, k]
            o = out[b0 + g]
            if has_qw:
                d = _head_imp(scales, sw, Ls, ls, w, wx, o)
            else:
                d = _head_plain(scales, ls, o)
            _finish_block(x[b0 + g], L, d, o, tmp)


def _encode(x):
    return run_groups(_encode_groups, x, x, False, G, TYPE_SIZE)


def _encode_imp(x, imp):
    return run_groups(_encode_groups, x, imp, True, G, TYPE_SIZE)


@njit(**KPARALLEL)
def decode(q):
    n = q.shape[0]
    y = np.empty((n, QK_K), np.float32)
    for b in prange(n):
        blk = q[b]
        d = get_f16(blk, 108)
        for j in range(16):
            dl = d * np.float32(_scale(blk, j))
            for ii in range(16):
                i = 16 * j + ii
                h, r = i // 128, i % 128
                lo = (blk[32 + 32 * h + r % 32] >> (2 * (r // 32))) & 3
                hbit = (blk[i % 32] >> (i // 32)) & 1
                y[b, i] = dl * np.float32(np.int64(lo) - 4 * (1 - np.int64(hbit)))
    return y


def encode(x: np.ndarray, importance: np.ndarray | None = None) -> np.ndarray:
    if importance is None:
        return _encode(x)
    return _encode_imp(x, importance)


KERNELS.add("Q3_K", Kernel("Q3_K", encode, decode, ref.encode, ref.decode))
