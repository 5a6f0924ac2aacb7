"""Q4_1: 32 weights, fp16 scale and fp16 minimum, 4-bit values. x ≈ d * q + m.

As llama.cpp's quantize_row_q4_1_ref: d = (max - min) / 15 and
q = (int8_t)((x - min) * id + 0.5f) clamped to 15, all in float32. The block minimum
is used unrounded for the values and stored as fp16 for decoding."""

from __future__ import annotations

import numpy as np

from . import KERNELS, Kernel
from ._blocks import get_f16, inverse, min_max, put_f16
from .flags import JIT, PARALLEL, njit, prange
from .reference import q4_1 as ref

BLOCK = 32
TYPE_SIZE = 20


@njit(**JIT)
def level(v, lo, id_):
    return min(15, np.int64((v - lo) * id_ + np.float32(0.5)))


# Block layout (20 bytes):
#   off 0..1   d   fp16, little-endian
#   off 2..3   m   fp16, little-endian (block minimum)
#   off 4..19  qs  byte 4 + j: low nibble = q[j], high nibble = q[j + 16]   (j = 0..15)
@njit(**PARALLEL)
def encode(x):
    n = x.shape[0]
    out = np.empty((n, TYPE_SIZE), dtype=np.uint8)
    for b in prange(n):
        lo, hi = min_max(x, b)
        d = (hi - lo) / np.float32(15.0)
        id_ = inverse(d)
        put_f16(out, b, 0, d)
        put_f16(out, b, 2, lo)
        for j in range(BLOCK // 2):
            q0 = level(x[b, j], lo, id_)
            q1 = level(x[b, j + BLOCK // 2], lo, id_)
            out[b, 4 + j] = np.uint8(q0 | (q1 << 4))
    return out


@njit(**PARALLEL)
def decode(q):
    n = q.shape[0]
    out = np.empty((n, BLOCK), dtype=np.float32)
    for b in prange(n):
        d = get_f16(q, b, 0)
        m = get_f16(q, b, 2)
        for j in range(BLOCK // 2):
            byte = np.int64(q[b, 4 + j])
            out[b, j] = np.float32(byte & 0x0F) * d + m
            out[b, j + BLOCK // 2] = np.float32(byte >> 4) * d + m
    return out


KERNELS.add("Q4_1", Kernel("Q4_1", encode, decode, ref.encode, ref.decode))
