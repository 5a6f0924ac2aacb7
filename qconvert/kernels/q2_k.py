"""Q2_K: 256 weights as 16 sub-blocks of 16, w = d*sc*q - dmin*m with q in 0..3 and
4-bit (sc, m) per sub-block; 2.625 bits per weight. Same search as llama.cpp's
quantize_row_q2_K_ref (plain) and quantize_row_q2_K_impl (with importance)."""

from __future__ import annotations

import numpy as np

from . import KERNELS, Kernel
from .flags import prange
from .kquant_common import (
    F0, KJIT, KPARALLEL, QK_K, get_f16, make_qp_quants, nearest_int, njit, pack_2bit, put_f16,
    round_divided,
)
from .kquant_lanes import NL, importance_lanes, lane_scratch, load_lanes, run_groups, qkx_lanes
from .reference import q2_k as ref

TYPE_SIZE = 84

# Block layout, 84 bytes:
#
#   offset  size  field
#   0       16    scales byte j = sub-block j's scale (low nibble) | min << 4 (high nibble)
#   16      64    qs     2-bit quants, kquant_common.pack_2bit order
#   80      2     d      fp16 super-scale of the scales
#   82      2     dmin   fp16 super-scale of the mins


G = NL // 16  # super-blocks per lane group


@njit(**KJIT)
def _finish_block(x, L, d, dmin, out, tmp):
    """Re-round with the stored scales (C skips sub-blocks whose scale is 0) and pack."""
    for j in range(16):
        dd = d * np.float32(out[j] & 0xF)
        if dd == F0:
            continue
        dm = dmin * np.float32(out[j] >> 4)
        round_divided(x, 16 * j, 16, dm, dd, tmp, L, 0, 3, 0)
    pack_2bit(L, out, 16)


@njit(**KJIT)
def _head_plain(scales, mins, out):
    """quantize_row_q2_K_ref: scales and mins to 4 bits against their maxima; returns
    the stored (d, dmin) as floats."""
    q4scale = np.float32(15)
    max_scale = F0
    max_min = F0
    for j in range(16):
        if scales[j] > max_scale:
            max_scale = scales[j]
        if mins[j] > max_min:
            max_min = mins[j]
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
    return d, dmin


@njit(**KJIT)
def _head_imp(scales, mins, sw, Ls, Lm, out):
    """quantize_row_q2_K_impl: scales and mins through make_qp_quants (4 bits)."""
    dm = make_qp_quants(16, 15, scales, Ls, sw)
    mm = make_qp_quants(16, 15, mins, Lm, sw)
    d = put_f16(out, 80, dm)
    dmin = put_f16(out, 82, mm)
    for j in range(16):
        out[j] = Ls[j] | (Lm[j] << 4)
    return d, dmin


@njit(**KJIT)
def _encode_groups(x, qw, has_qw, first, last, out):
    """The (scale, min) search of the 16 sub-blocks of G super-blocks at once
    (kquant_lanes.qkx_lanes): plain, weights |x| and the mean-absolute-error variant;
    importance, weights qw * sqrt(sigma2 + x^2) (sigma2 without q3..q5's factor 2)."""
    n = x.shape[0]
    xt, wt, ft, par, acc, Lt = lane_scratch(16)
    L = np.empty(QK_K, np.uint8)
    scales = np.empty(16, np.float32)
    mins = np.empty(16, np.float32)
    sw = np.empty(16, np.float32)
    Ls = np.empty(16, np.uint8)
    Lm = np.empty(16, np.uint8)
    tmp = np.empty(16, np.float32)
    for grp in range(first, last):
        b0 = grp * G
        nb = min(G, n - b0)
        load_lanes(x, b0, nb, 16, xt)
        if has_qw:
            importance_lanes(x, qw, b0, nb, 16, 1, xt, wt, acc[3], par[15])
            rmin, rdelta, nstep = np.float32(-0.9), np.float32(0.05), 36
        else:
            for i in range(16):
                for k in range(NL):
                    wt[i, k] = abs(xt[i, k])
            rmin, rdelta, nstep = np.float32(-0.5), np.float32(0.1), 15
        # one call site: each is another copy of the search for LLVM to compile
        qkx_lanes(16, 3, xt, wt, rmin, rdelta, nstep, not has_qw, ft, par, acc, Lt)
        for g in range(nb):
            for j in range(16):
                k = 16 * g + j
                scales[j] = par[6, k]  # kquant_lanes: scale row
                mins[j] = par[0, k]  # the_min row
                sw[j] = acc[3, k]
                for i in range(16):
                    L[16 * j + i] = Lt[i, k]
            o = out[b0 + g]
            if has_qw:
                d, dmin = _head_imp(scales, mins, sw, Ls, Lm, o)
            else:
                d, dmin = _head_plain(scales, mins, o)
            _finish_block(x[b0 + g], L, d, dmin, o, tmp)


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
