"""IQ4_XS: 256 weights as eight 32-weight sub-blocks, 4-bit indices into IQ4_NL's 16
levels, a signed 6-bit scale per sub-block and one fp16 super-scale; 4.25 bits per
weight. Same search as llama.cpp's quantize_iq4_xs, with or without importance
(iq4_common explains it).

Block layout (136 bytes):
  off 0..1    d         fp16, little-endian
  off 2..3    scales_h  uint16 LE: bits 2k..2k+1 = high 2 bits of sub-block k's scale + 32
  off 4..7    scales_l  byte k/2: low nibble of scale k (+32) for even k, high nibble for odd k
  off 8..135  qs        sub-block i at 8 + 16i: byte j = index of weight 32i + j
                        | index of weight 32i + 16 + j << 4
A weight of sub-block k decodes to (d * (scale_k - 32)) * KVALUES[index]."""

from __future__ import annotations

import numpy as np

from . import KERNELS, Kernel
from .flags import PARALLEL, njit, prange
from .iq4_common import KVALUES_F, encode_xs_block
from .kquant_common import get_f16
from .reference import iq4_xs as ref

BLOCK = 256
TYPE_SIZE = 136


@njit(**PARALLEL)
def _encode(x, imp, has_imp):
    n = x.shape[0]
    out = np.empty((n, TYPE_SIZE), np.uint8)
    for b in prange(n):
        encode_xs_block(x[b], imp[b] if has_imp else x[b], has_imp, out[b])
    return out


@njit(**PARALLEL)
def decode(q):
    n = q.shape[0]
    y = np.empty((n, BLOCK), np.float32)
    for b in prange(n):
        blk = q[b]
        d = get_f16(blk, 0)
        sh = np.int64(blk[2]) | (np.int64(blk[3]) << 8)
        for k in range(8):
            ls = ((blk[4 + k // 2] >> (4 * (k % 2))) & 0xF) | (((sh >> (2 * k)) & 3) << 4)
            dl = d * np.float32(np.int64(ls) - 32)
            for j in range(16):
                byte = blk[8 + 16 * k + j]
                y[b, 32 * k + j] = dl * KVALUES_F[byte & 0xF]
                y[b, 32 * k + j + 16] = dl * KVALUES_F[byte >> 4]
    return y


def encode(x: np.ndarray, importance: np.ndarray | None = None) -> np.ndarray:
    if importance is None:
        return _encode(x, x, False)
    return _encode(x, importance, True)


KERNELS.add("IQ4_XS", Kernel("IQ4_XS", encode, decode, ref.encode, ref.decode))
