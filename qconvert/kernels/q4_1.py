"""Q4_1: 32 weights, fp16 scale and fp16 minimum, 4-bit values. x ≈ d * q + m.

As llama.cpp's quantize_row_q4_1_ref: d = (max - min) / 15 and
q = (int8_t)((x - min) * id + 0.5f) clamped to 15, all in float32. The block minimum
is used unrounded for the values and stored as fp16 for decoding."""

from __future__ import annotations

import numpy as np

from . import KERNELS, Kernel
from ._blocks import get_f16, importance_weights, inverse, min_max, put_f16, row_sigma2
from .flags import JIT, PARALLEL, njit, prange
from .kquant_common import make_qkx_quants
from .reference import q4_1 as ref

BLOCK = 32
CHUNK = 64  # blocks per parallel work item of the importance path
TYPE_SIZE = 20


@njit(**JIT)
def level(v, lo, id_):
    return min(15, np.int64((v - lo) * id_ + np.float32(0.5)))


# Block layout (20 bytes):
#   off 0..1   d   fp16, little-endian
#   off 2..3   m   fp16, little-endian (block minimum)
#   off 4..19  qs  byte 4 + j: low nibble = q[j], high nibble = q[j + 16]   (j = 0..15)
@njit(**PARALLEL)
def _encode(x):
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


# With importance (llama.cpp's quantize_row_q4_1_impl): (d, min) from make_qkx3_quants'
# weighted least-squares search over 37 inverse scales (-0.9 + 0.05*is + 15)/(max - min),
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
            d, the_min = make_qkx_quants(BLOCK, 15, x[b], weight, L, Laux, RMIN, RDELTA, 36, False)
            put_f16(out, b, 0, d)
            put_f16(out, b, 2, -the_min)
            for j in range(BLOCK // 2):
                out[b, 4 + j] = np.uint8(L[j] | (L[j + BLOCK // 2] << 4))
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


KERNELS.add("Q4_1", Kernel("Q4_1", encode, decode, ref.encode, ref.decode))
