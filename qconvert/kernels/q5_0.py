"""Q5_0: 32 weights, one fp16 scale, 5-bit values. x ≈ d * (q - 16).

Q4_0 with one more bit: d = max / -16 from the signed value of largest magnitude,
q = (int8_t)(x * id + 16.5f) clamped to 31 (llama.cpp's quantize_row_q5_0_ref). The
low four bits of each value go in nibbles as in Q4_0; the fifth bits are gathered
into one 32-bit word."""

from __future__ import annotations

import numpy as np

from . import KERNELS, Kernel
from ._blocks import (get_f16, get_u32, importance_weights, inverse, put_f16, put_u32, row_sigma2,
                      signed_absmax)
from .flags import JIT, PARALLEL, njit, prange
from .kquant_common import make_qx_quants
from .reference import q5_0 as ref

BLOCK = 32
CHUNK = 64  # blocks per parallel work item of the importance path
TYPE_SIZE = 22


@njit(**JIT)
def level(v, id_):
    return min(31, np.int64(v * id_ + np.float32(16.5)))


# Block layout (22 bytes):
#   off 0..1   d   fp16, little-endian
#   off 2..5   qh  uint32, little-endian: bit j = bit 4 of q[j]          (j = 0..31)
#   off 6..21  qs  byte 6 + j: low nibble = q[j] & 15, high nibble = q[j + 16] & 15
@njit(**PARALLEL)
def _encode(x):
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


# With importance (llama.cpp's quantize_row_q5_0_impl, used whenever an imatrix is
# given): d comes from make_qx_quants' weighted search over 18 scales around
# max/-16, the weights being importance_weights; L is that search's levels (an
# all-zero block gets d = 0 and level 0, not 16). Same layout as above.
@njit(**PARALLEL)
def _encode_imp(x, imp, sigma2):
    n = x.shape[0]
    out = np.empty((n, TYPE_SIZE), dtype=np.uint8)
    # blocks in chunks, scratch allocated once per chunk (allocating per block from
    # several threads cost more than the search on 2 cores)
    for c in prange((n + CHUNK - 1) // CHUNK):
        weight = np.empty(BLOCK, np.float32)
        w = np.empty(BLOCK, np.float32)
        wx = np.empty(BLOCK, np.float32)
        L = np.empty(BLOCK, np.int8)
        for b in range(c * CHUNK, min(n, c * CHUNK + CHUNK)):
            importance_weights(x, imp, sigma2, b, weight)
            d = make_qx_quants(BLOCK, 16, x[b], L, weight, True, w, wx)
            put_f16(out, b, 0, d)
            qh = np.int64(0)
            for j in range(BLOCK // 2):
                q0 = np.int64(L[j])
                q1 = np.int64(L[j + BLOCK // 2])
                out[b, 6 + j] = np.uint8((q0 & 0x0F) | ((q1 & 0x0F) << 4))
                qh |= ((q0 >> 4) & 1) << j
                qh |= ((q1 >> 4) & 1) << (j + BLOCK // 2)
            put_u32(out, b, 2, qh)
    return out


def encode(x, importance=None, sigma2=None):
    """Plain rounding, or llama.cpp's importance-weighted search when `importance`
    (n_blocks, 32) is given; `sigma2` (n_blocks,) is the mean square of each block's
    row (kernels.encode passes it; each block counts as its own row without it)."""
    if importance is None:
        return _encode(x)
    if sigma2 is None:
        sigma2 = row_sigma2(x)
    return _encode_imp(x, importance, sigma2)


KERNELS.add("Q5_0", Kernel("Q5_0", encode, decode, ref.encode, ref.decode))
