"""Q5_1: 32 weights, fp16 scale and fp16 minimum, 5-bit values. x ≈ d * q + m.

As llama.cpp's quantize_row_q5_1_ref: d = (max - min) / 31,
q = (uint8_t)((x - min) * id + 0.5f). C applies no clamp here: (x - min) * id stays
within [0, 31] up to float32 rounding, so the cast never reaches 32; the same holds
below. Bits are laid out as in Q5_0, after a second fp16 for the minimum."""

from __future__ import annotations

import numpy as np

from . import KERNELS, Kernel
from ._blocks import get_f16, get_u32, importance_weights, inverse, min_max, put_f16, put_u32, row_sigma2
from .flags import JIT, PARALLEL, njit, prange
from .kquant_common import make_qkx_quants
from .reference import q5_1 as ref

BLOCK = 32
CHUNK = 64  # blocks per parallel work item of the importance path
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
def _encode(x):
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


# With importance (llama.cpp's quantize_row_q5_1_impl): (d, min) from make_qkx3_quants'
# weighted least-squares search over 37 inverse scales (-0.9 + 0.05*is + 31)/(max - min),
# weights from importance_weights; the stored m is the fitted minimum (<= 0). Same layout.
RMIN = np.float32(-0.9)
RDELTA = np.float32(0.05)


@njit(**PARALLEL)
def _encode_imp(x, imp, sigma2):
    n = x.shape[0]
    out = np.empty((n, TYPE_SIZE), dtype=np.uint8)
    # blocks in chunks, scratch allocated once per chunk (allocating per block from
    # several threads cost more than the search on 2 cores)
    for c in prange((n + CHUNK - 1) // CHUNK):
        weight = np.empty(BLOCK, np.float32)
        L = np.empty(BLOCK, np.uint8)
        Laux = np.empty(BLOCK, np.uint8)
        for b in range(c * CHUNK, min(n, c * CHUNK + CHUNK)):
            importance_weights(x, imp, sigma2, b, weight)
            d, the_min = make_qkx_quants(BLOCK, 31, x[b], weight, L, Laux, RMIN, RDELTA, 36, False)
            put_f16(out, b, 0, d)
            put_f16(out, b, 2, -the_min)
            qh = np.int64(0)
            for j in range(BLOCK // 2):
                q0 = np.int64(L[j])
                q1 = np.int64(L[j + BLOCK // 2])
                out[b, 8 + j] = np.uint8((q0 & 0x0F) | ((q1 & 0x0F) << 4))
                qh |= ((q0 >> 4) & 1) << j
                qh |= ((q1 >> 4) & 1) << (j + BLOCK // 2)
            put_u32(out, b, 4, qh)
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


KERNELS.add("Q5_1", Kernel("Q5_1", encode, decode, ref.encode, ref.decode))
