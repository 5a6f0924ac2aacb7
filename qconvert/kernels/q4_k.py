"""Q4_K: 256 weights as 8 sub-blocks of 32, each w = d*sc*q - dmin*m with q in 0..15
and 6-bit (sc, m) per sub-block; 4.5 bits per weight. Same search as llama.cpp's
quantize_row_q4_K_ref (plain) and quantize_row_q4_K_impl (with importance)."""

from __future__ import annotations

import numpy as np

from . import KERNELS, Kernel
from .flags import prange
from .kquant_common import (
    F0, KJIT, KPARALLEL, QK_K, get_f16, get_scale_min_k4, make_qp_quants, nearest_int, njit,
    pack_scale_min_k4, put_f16, round_divided,
)
from .kquant_lanes import NL, importance_lanes, lane_scratch, load_lanes, run_groups, qkx_lanes
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


G = NL // 8  # super-blocks per lane group


@njit(inline="always", **KJIT)  # inlined in numba's IR: one less LLVM module to re-optimize
def search_group(x, qw, has_qw, b0, nb, nmax, rmin, nstep, s, Lb, lsb, lmb, dd):
    """The searches of quantize_row_q{4,5}_K_ref (plain) or _impl (importance) for the
    super-blocks b0 .. b0+nb-1 at once (kquant_lanes). Per block g: quants Lb[g]
    (0..nmax), 6-bit scales lsb[g] and mins lmb[g], and the float d, dmin in dd[g].

    Plain: each sub-block of 32 weighted by av_x + |x|, (scale, min) searched, both
    quantized to 6 bits against the block maxima. Importance: weights
    qw * sqrt(sigma2 + x^2), a finer search, then make_qp_quants on scales and mins."""
    xt, wt, ft, par, acc, Lt, sc8, mn8, sw8 = s
    load_lanes(x, b0, nb, 32, xt)
    if has_qw:
        importance_lanes(x, qw, b0, nb, 32, 2, xt, wt, acc[3], par[15])
        rmin = np.float32(-0.9)
        rdelta = np.float32(0.05)
        nstep = 36
    else:
        av = acc[3]
        for k in range(NL):
            av[k] = F0
        for i in range(32):
            for k in range(NL):
                av[k] += xt[i, k] * xt[i, k]
        for k in range(NL):
            av[k] = np.sqrt(av[k] / np.float32(32))
        for i in range(32):
            for k in range(NL):
                wt[i, k] = av[k] + abs(xt[i, k])
        rdelta = np.float32(0.1)
    # one call site: each one is another copy of the search for LLVM to compile
    qkx_lanes(32, nmax, xt, wt, rmin, rdelta, nstep, False, ft, par, acc, Lt)
    sw = acc[3]  # the importance path's weight sums (unused on the plain path)
    for g in range(nb):
        for j in range(8):
            k = 8 * g + j
            sc8[j] = par[6, k]  # kquant_lanes: scale row
            mn8[j] = par[0, k]  # the_min row
            sw8[j] = sw[k]
            for i in range(32):
                Lb[g, 32 * j + i] = Lt[i, k]
        if has_qw:
            dd[g, 0] = make_qp_quants(8, 63, sc8, lsb[g], sw8)
            dd[g, 1] = make_qp_quants(8, 63, mn8, lmb[g], sw8)
        else:
            _six_bits(sc8, mn8, lsb[g], lmb[g], dd[g])


@njit(**KJIT)
def _six_bits(scales, mins, ls, lm, dd):
    """Plain path: scales and mins to 6 bits against their maxima; dd = (d, dmin)."""
    max_scale = F0
    max_min = F0
    for j in range(8):
        if scales[j] > max_scale:
            max_scale = scales[j]
        if mins[j] > max_min:
            max_min = mins[j]
    inv_scale = np.float32(63) / max_scale if max_scale > F0 else F0
    inv_min = np.float32(63) / max_min if max_min > F0 else F0
    for j in range(8):
        ls[j] = min(63, nearest_int(inv_scale * scales[j]) & 0xFF)
        lm[j] = min(63, nearest_int(inv_min * mins[j]) & 0xFF)
    dd[0] = max_scale / np.float32(63)
    dd[1] = max_min / np.float32(63)


@njit(**KJIT)
def group_scratch():
    """search_group's scratch plus its per-block results, allocated once per work item."""
    s = lane_scratch(32) + (np.empty(8, np.float32), np.empty(8, np.float32),
                            np.empty(8, np.float32))
    return (s, np.empty((G, QK_K), np.uint8), np.empty((G, 8), np.uint8),
            np.empty((G, 8), np.uint8), np.empty((G, 2), np.float32), np.empty(32, np.float32))


@njit(**KJIT)
def write_head(x, nmax, L, ls, lm, d, dmin, out, tmp):
    """Store d, dmin and the scale table (bytes 0..15), then re-round every weight
    with the stored, rounded values into L (0..nmax), as C does before packing.
    tmp: scratch of 32 floats."""
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
def _encode_groups(x, qw, has_qw, first, last, out):
    """Super-block groups first .. last-1: search, store the head, re-round, pack."""
    n = x.shape[0]
    s, Lb, lsb, lmb, dd, tmp = group_scratch()
    for grp in range(first, last):
        b0 = grp * G
        nb = min(G, n - b0)
        search_group(x, qw, has_qw, b0, nb, NMAX, np.float32(-1.0), 20, s, Lb, lsb, lmb, dd)
        for g in range(nb):
            write_head(x[b0 + g], NMAX, Lb[g], lsb[g], lmb[g], dd[g, 0], dd[g, 1],
                       out[b0 + g], tmp)
            _pack(Lb[g], out[b0 + g])


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
