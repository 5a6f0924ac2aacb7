"""Q6_K: 256 weights as 16 sub-blocks of 16, w = d * sc * (q - 32) with q in 0..63 and
an int8 scale per sub-block; 6.5625 bits per weight. Same search as llama.cpp's
quantize_row_q6_K_ref (plain) and quantize_row_q6_K_impl (with importance)."""

from __future__ import annotations

import numpy as np

from . import KERNELS, Kernel
from .flags import prange
from .kquant_common import (
    F0, F1, GROUP_MAX_EPS, KJIT, KPARALLEL, QK_K, get_f16, nearest_int, njit, put_f16,
    round_divided,
)
from .kquant_lanes import NL, lane_scratch, load_lanes, run_groups, qx_lanes
from .reference import q6_k as ref

TYPE_SIZE = 210

# Block layout, 210 bytes:
#
#   offset  size  field
#   0       128   ql     low 4 bits of the 6-bit quants. Two halves of 128 weights; in
#                        half h (bytes 64h ..): byte 64h + l      = q[128h+l]    | q[128h+l+64] << 4
#                                               byte 64h + 32 + l = q[128h+l+32] | q[128h+l+96] << 4
#   128     64    qh     high 2 bits; byte 32h + l packs, from bit 0 up, the high pairs of
#                        q[128h+l], q[128h+l+32], q[128h+l+64], q[128h+l+96]
#   192     16    scales int8 per sub-block of 16
#   208     2     d      fp16 super-scale
#
# A block whose sub-block scales are all below GROUP_MAX_EPS is written as 210 zero bytes.


G = NL // 16  # super-blocks per lane group


@njit(**KJIT)
def _finish_block(x, L, scales, out, tmp):
    """The sub-block scales (from make_qx_quants) to int8 against the largest, then
    re-round every weight with the stored scale (C skips a zero one) and pack."""
    max_scale = F0
    max_abs_scale = F0
    for ib in range(16):
        s = scales[ib]
        if abs(s) > max_abs_scale:
            max_abs_scale = abs(s)
            max_scale = s
    if max_abs_scale < GROUP_MAX_EPS:
        for k in range(TYPE_SIZE):
            out[k] = 0
        return
    iscale = np.float32(-128) / max_scale
    d = put_f16(out, 208, F1 / iscale)
    for ib in range(16):
        v = min(127, nearest_int(iscale * scales[ib]))
        out[192 + ib] = v & 0xFF  # int8, two's complement
    for j in range(16):
        sc = np.int64(out[192 + j])
        if sc > 127:
            sc -= 256
        dd = d * np.float32(sc)
        if dd == F0:
            continue
        round_divided(x, 16 * j, 16, None, dd, tmp, L, -32, 31, 32)
    for h in range(2):
        j = 128 * h
        for l in range(32):
            q1 = L[j + l]
            q2 = L[j + l + 32]
            q3 = L[j + l + 64]
            q4 = L[j + l + 96]
            out[64 * h + l] = (q1 & 0xF) | ((q3 & 0xF) << 4)
            out[64 * h + l + 32] = (q2 & 0xF) | ((q4 & 0xF) << 4)
            out[128 + 32 * h + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6)


@njit(**KJIT)
def _encode_groups(x, qw, has_qw, first, last, out):
    """make_qx_quants(16, 32, ...) on the 16 sub-blocks of G super-blocks at once
    (kquant_lanes.qx_lanes), weighted by the importance or by x*x, then per block
    _finish_block."""
    n = x.shape[0]
    xt, wt, ft, par, acc, Lt = lane_scratch(16)
    L = np.empty(QK_K, np.int8)
    scales = np.empty(16, np.float32)
    tmp = np.empty(16, np.float32)
    for grp in range(first, last):
        b0 = grp * G
        nb = min(G, n - b0)
        load_lanes(x, b0, nb, 16, xt)
        if has_qw:
            load_lanes(qw, b0, nb, 16, wt)
        else:
            for i in range(16):
                for k in range(NL):
                    wt[i, k] = xt[i, k] * xt[i, k]
        qx_lanes(16, 32, xt, wt, ft, par, acc, Lt)
        for g in range(nb):
            for j in range(16):
                scales[j] = par[2, 16 * g + j]  # kquant_lanes: qx scale row
                for i in range(16):
                    L[16 * j + i] = Lt[i, 16 * g + j]
            _finish_block(x[b0 + g], L, scales, out[b0 + g], tmp)


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
        d = get_f16(blk, 208)
        for i in range(QK_K):
            h, r = i // 128, i % 128
            quarter, l = r // 32, r % 32
            lo = (blk[64 * h + 32 * (quarter % 2) + l] >> (4 * (quarter // 2))) & 0xF
            hi = (blk[128 + 32 * h + l] >> (2 * quarter)) & 3
            sc = np.int64(blk[192 + i // 16])
            if sc > 127:
                sc -= 256
            y[b, i] = (d * np.float32(sc)) * np.float32((lo | (hi << 4)) - 32)
    return y


def encode(x: np.ndarray, importance: np.ndarray | None = None) -> np.ndarray:
    if importance is None:
        return _encode(x)
    return _encode_imp(x, importance)


KERNELS.add("Q6_K", Kernel("Q6_K", encode, decode, ref.encode, ref.decode))
