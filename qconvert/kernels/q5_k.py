"""Q5_K: Q4_K's scheme with 5-bit quants (q in 0..31); 5.5 bits per weight. Same search
as llama.cpp's quantize_row_q5_K_ref (plain) and quantize_row_q5_K_impl (importance),
which are Q4_K's with nmax 31 and, on the plain path, rmin -0.5 and 15 steps."""

from __future__ import annotations

import numpy as np

from . import KERNELS, Kernel
from .flags import prange
from .kquant_common import KJIT, KPARALLEL, QK_K, get_f16, get_scale_min_k4, njit
from .kquant_lanes import run_groups
from .q4_k import G, group_scratch, search_group, write_head
from .reference import q5_k as ref

TYPE_SIZE = 176
NMAX = 31

# Block layout, 176 bytes:
#
#   offset  size  field
#   0       2     d      fp16, super-scale of the 6-bit sub-block scales
#   2       2     dmin   fp16, super-scale of the 6-bit sub-block mins
#   4       12    scales 8 x (scale, min), 6 bits each (see kquant_common.pack_scale_min_k4)
#   16      32    qh     bit 4 of each quant: byte l, bit 2c   <- q[64c + l]
#                                              bit 2c+1 <- q[64c + 32 + l]     (c = 0..3)
#   48      128   qs     low 4 bits, as Q4_K: byte 32c + l = q[64c+l] | q[64c+32+l] << 4


@njit(**KJIT)
def _pack(L, out):
    for l in range(32):
        out[16 + l] = 0
    for c in range(4):
        for l in range(32):
            l1 = L[64 * c + l]
            l2 = L[64 * c + 32 + l]
            out[16 + l] |= ((l1 >> 4) << (2 * c)) | ((l2 >> 4) << (2 * c + 1))
            out[48 + 32 * c + l] = (l1 & 0xF) | ((l2 & 0xF) << 4)


@njit(**KJIT)
def _encode_groups(x, qw, has_qw, first, last, out):
    n = x.shape[0]
    s, Lb, lsb, lmb, dd, tmp = group_scratch()
    for grp in range(first, last):
        b0 = grp * G
        nb = min(G, n - b0)
        search_group(x, qw, has_qw, b0, nb, NMAX, np.float32(-0.5), 15, s, Lb, lsb, lmb, dd)
        for g in range(nb):
            if has_qw:  # quantize_row_q5_K_impl clamps here (q4_K_impl does not)
                for j in range(8):
                    lsb[g, j] = min(63, lsb[g, j])
                    lmb[g, j] = min(63, lmb[g, j])
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
            half = j % 2
            for l in range(32):
                lo = (blk[48 + 32 * c + l] >> (4 * half)) & 0xF
                hi = (blk[16 + l] >> j) & 1
                y[b, 32 * j + l] = dl * np.float32(lo | (hi << 4)) - ml
    return y


def encode(x: np.ndarray, importance: np.ndarray | None = None) -> np.ndarray:
    if importance is None:
        return _encode(x)
    return _encode_imp(x, importance)


KERNELS.add("Q5_K", Kernel("Q5_K", encode, decode, ref.encode, ref.decode))
