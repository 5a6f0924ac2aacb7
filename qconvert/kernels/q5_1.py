"""Q5_1: 32 weights, fp16 scale and fp16 minimum, 5-bit values. x ≈ d * q + m.

As llama.cpp's quantize_row_q5_1_ref: d = (max - min) / 31,
q = (uint8_t)((x - min) * id + 0.5f). C applies no clamp here: (x - min) * id stays
within [0, 31] up to float32 rounding, so the cast never reaches 32; the same holds
below. Bits are laid out as in Q5_0, after a second fp16 for the minimum."""

from __future__ import annotations

import numpy as np

from . import KERNELS, Kernel
from ._blocks import get_f16, get_u32, inverse, min_max, put_f16, put_u32
from .flags import JIT, PARALLEL, njit, prange
from .reference import q5_1 as ref

BLOCK = 32
TYPE_SIZE = 24


@njit(**JIT)
def level(v, lo, id_):
    return np.int64((v - lo) * id_ + np.float32(0.5))


# Block layout (24 bytes):
#   off 0..1   d   fp16, little-endian
#   off 2..3   m   fp16, little-endian (block minimum)
#   off 4..7   qh  uint32, little-endian: bit j = bit 4 of q[j]          (j = 0..31)
#   off 8..23  qs  byte 8 + j: low nibble = q[j] & 15, high nibble = q[j + 16] & 15
@njit(**PARALLEL)
def encode(x):
    n = x.shape[0]
    out = np.empty((n, TYPE_SIZE), dtype=np.uint8)
    for b in prange(n):
        lo, hi = min_max(x, b)
        d = (hi - lo) / np.float32(31.0)
        id_ = inverse(d)
        put_f16(out, b, 0, d)
        put_f16(out, b, 2, lo)
        qh = np.int64(0)
        for j in range(BLOCK // 2):
            q0 = level(x[b, j], lo, id_)
            q1 = level(x[b, j + BLOCK // 2], lo, id_)
            out[b, 8 + j] = np.uint8((q0 & 0x0F) | ((q1 & 0x0F) << 4))
            qh |= ((q0 >> 4) & 1) << j
            qh |= ((q1 >> 4) & 1) << (j + BLOCK // 2)
        put_u32(out, b, 4, qh)
    return out


@njit(**PARALLEL)
def decode(q):
    n = q.shape[0]
    out = np.empty((n, BLOCK), dtype=np.float32)
    for b in prange(n):
        d = get_f16(q, b, 0)
        m = get_f16(q, b, 2)
        qh = get_u32(q, b, 4)
        for j in range(BLOCK // 2):
            byte = np.int64(q[b, 8 + j])
            q0 = (byte & 0x0F) | (((qh >> j) & 1) << 4)
            q1 = (byte >> 4) | (((qh >> (j + BLOCK // 2)) & 1) << 4)
            out[b, j] = np.float32(q0) * d + m
            out[b, j + BLOCK // 2] = np.float32(q1) * d + m
    return out


KERNELS.add("Q5_1", Kernel("Q5_1", encode, decode, ref.encode, ref.decode))
