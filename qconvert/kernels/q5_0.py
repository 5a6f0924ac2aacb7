"""Q5_0: 32 weights, one fp16 scale, 5-bit values. x ≈ d * (q - 16).

Q4_0 with one more bit: d = max / -16 from the signed value of largest magnitude,
q = (int8_t)(x * id + 16.5f) clamped to 31 (llama.cpp's quantize_row_q5_0_ref). The
low four bits of each value go in nibbles as in Q4_0; the fifth bits are gathered
into one 32-bit word."""

from __future__ import annotations

import numpy as np

from . import KERNELS, Kernel
from ._blocks import get_f16, get_u32, inverse, put_f16, put_u32, signed_absmax
from .flags import JIT, PARALLEL, njit, prange
from .reference import q5_0 as ref

BLOCK = 32
TYPE_SIZE = 22


@njit(**JIT)
def level(v, id_):
    return min(31, np.int64(v * id_ + np.float32(16.5)))


# Block layout (22 bytes):
#   off 0..1   d   fp16, little-endian
#   off 2..5   qh  uint32, little-endian: bit j = bit 4 of q[j]          (j = 0..31)
#   off 6..21  qs  byte 6 + j: low nibble = q[j] & 15, high nibble = q[j + 16] & 15
@njit(**PARALLEL)
def encode(x):
    n = x.shape[0]
    out = np.empty((n, TYPE_SIZE), dtype=np.uint8)
    for b in prange(n):
        d = signed_absmax(x, b) / np.float32(-16.0)
        id_ = inverse(d)
        put_f16(out, b, 0, d)
        qh = np.int64(0)
        for j in range(BLOCK // 2):
            q0 = level(x[b, j], id_)
            q1 = level(x[b, j + BLOCK // 2], id_)
            out[b, 6 + j] = np.uint8((q0 & 0x0F) | ((q1 & 0x0F) << 4))
            qh |= ((q0 >> 4) & 1) << j
            qh |= ((q1 >> 4) & 1) << (j + BLOCK // 2)
        put_u32(out, b, 2, qh)
    return out


@njit(**PARALLEL)
def decode(q):
    n = q.shape[0]
    out = np.empty((n, BLOCK), dtype=np.float32)
    for b in prange(n):
        d = get_f16(q, b, 0)
        qh = get_u32(q, b, 2)
        for j in range(BLOCK // 2):
            byte = np.int64(q[b, 6 + j])
            q0 = (byte & 0x0F) | (((qh >> j) & 1) << 4)
            q1 = (byte >> 4) | (((qh >> (j + BLOCK // 2)) & 1) << 4)
            out[b, j] = np.float32(q0 - 16) * d
            out[b, j + BLOCK // 2] = np.float32(q1 - 16) * d
    return out


KERNELS.add("Q5_0", Kernel("Q5_0", encode, decode, ref.encode, ref.decode))
