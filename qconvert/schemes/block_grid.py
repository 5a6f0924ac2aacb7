"""The value grid of one encoded ggml block, read back from its bytes, and the packing of
new integer codes into those bytes. This lets a scheme choose a block's scales with the
RTN kernel (qconvert.kernels.encode) and then pick every weight's code itself, as GPTQ
does while feeding rounding errors forward.

Every supported type decodes weight i of a block as

    value_i = step_i * (q_i - center) - offset_i,    q_i integer in [0, qmax]

with step/offset constant over a sub-block. The arithmetic is float32 and in the same
order as gguf-py's dequantizers, so `value` equals gguf.quants.dequantize bit for bit.
The byte layouts are drawn in the kernel modules (qconvert/kernels/q*.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..registry import Registry

F32 = np.float32


def _f16(raw: np.ndarray, off: int) -> np.ndarray:
    """The little-endian fp16 at bytes off..off+1 of each block, as (n, 1) float32."""
    return np.ascontiguousarray(raw[:, off:off + 2]).view("<f2").astype(F32)


def _nibbles(codes: np.ndarray) -> np.ndarray:
    """(n, 256) 4-bit codes -> (n, 128), the K-quant nibble order: in each 64-weight
    chunk c, byte 32c + l = q[64c + l] | q[64c + 32 + l] << 4."""
    q = (codes & 0xF).astype(np.uint8).reshape(-1, 4, 2, 32)
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)


def _k4_scales(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K: the 8 (scale, min) 6-bit pairs at bytes 4..15, as (n, 8) float32.
    Sub-block j < 4: scale = s[j] & 63, min = s[j+4] & 63. j >= 4 (k = j-4): the low
    4 bits come from byte 8+k (scale low nibble, min high nibble) and the high 2 bits
    from the top bits of s[k] (scale) and s[k+4] (min)."""
    s = raw[:, 4:16]
    sc_hi = (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)
    m_hi = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    sc = np.concatenate([s[:, 0:4] & 63, sc_hi], axis=1)
    m = np.concatenate([s[:, 4:8] & 63, m_hi], axis=1)
    return sc.astype(F32), m.astype(F32)


def _crumbs(codes: np.ndarray) -> np.ndarray:
    """(n, 256) codes -> (n, 64) bytes of their low 2 bits in kquant_common.pack_2bit
    order: in each 128-weight half h, byte 32h + l holds q[128h + 32s + l] at bits 2s..2s+1
    (s = 0..3)."""
    q = (codes & 3).astype(np.uint8).reshape(-1, 2, 4, 32)  # (half, shift s, l)
    return (q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)).reshape(-1, 64)


# ---- per type: parse (raw -> step, offset, each (n, block) float32) and pack --------


def _parse_d_only(raw):  # Q8_0, Q4_0, Q5_0: one fp16 d for the whole 32-weight block
    d = np.broadcast_to(_f16(raw, 0), (raw.shape[0], 32))
    return d, np.zeros_like(d)


def _pack_q8_0(raw, codes):
    raw[:, 2:34] = (codes.astype(np.int16) - 128).astype(np.int8).view(np.uint8)


def _pack_q4_0(raw, codes):
    q = codes.astype(np.uint8)
    raw[:, 2:18] = q[:, :16] | (q[:, 16:] << 4)


def _parse_d_m(raw):  # Q4_1, Q5_1: d * q + m, i.e. step d and offset -m (exact negation)
    d = np.broadcast_to(_f16(raw, 0), (raw.shape[0], 32))
    return d, np.broadcast_to(-_f16(raw, 2), (raw.shape[0], 32))


def _pack_q4_1(raw, codes):
    q = codes.astype(np.uint8)
    raw[:, 4:20] = q[:, :16] | (q[:, 16:] << 4)


def _qh_bytes(codes):
    """The little-endian uint32 whose bit j is bit 4 of code j (Q5_0/Q5_1's qh)."""
    bits = ((codes.astype(np.uint32) >> 4) & 1) << np.arange(32, dtype=np.uint32)
    return bits.sum(axis=1, dtype=np.uint32).astype("<u4").view(np.uint8).reshape(-1, 4)


def _pack_q5_0(raw, codes):
    q = codes.astype(np.uint8) & 0xF
    raw[:, 2:6] = _qh_bytes(codes)
    raw[:, 6:22] = q[:, :16] | (q[:, 16:] << 4)


def _pack_q5_1(raw, codes):
    q = codes.astype(np.uint8) & 0xF
    raw[:, 4:8] = _qh_bytes(codes)
    raw[:, 8:24] = q[:, :16] | (q[:, 16:] << 4)


def _parse_k4(raw):  # Q4_K, Q5_K: step = d*sc, offset = dmin*m per 32-weight sub-block
    sc, m = _k4_scales(raw)
    step = _f16(raw, 0) * sc
    offset = _f16(raw, 2) * m
    return np.repeat(step, 32, axis=1), np.repeat(offset, 32, axis=1)


def _pack_q4_k(raw, codes):
    raw[:, 16:144] = _nibbles(codes)


def _pack_q5_k(raw, codes):
    hi = ((codes.reshape(-1, 8, 32) >> 4) & 1).astype(np.uint8)
    qh = np.zeros((codes.shape[0], 32), np.uint8)
    for j in range(8):  # bit j of qh byte l is bit 4 of q[32j + l]
        qh |= hi[:, j] << j
    raw[:, 16:48] = qh
    raw[:, 48:176] = _nibbles(codes)


def _parse_q6_k(raw):  # step = d * int8 scale per 16-weight sub-block
    sc = raw[:, 192:208].view(np.int8).astype(F32)
    step = _f16(raw, 208) * sc
    return np.repeat(step, 16, axis=1), np.zeros((raw.shape[0], 256), F32)


def _pack_q6_k(raw, codes):
    q = codes.astype(np.uint8).reshape(-1, 2, 4, 32)  # (half, quarter, l)
    lo, hi = q & 0xF, q >> 4
    ql = np.concatenate([lo[:, :, 0] | (lo[:, :, 2] << 4), lo[:, :, 1] | (lo[:, :, 3] << 4)], axis=2)
    qh = hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)
    raw[:, 0:128] = ql.reshape(-1, 128)
    raw[:, 128:192] = qh.reshape(-1, 64)


def _parse_q3_k(raw):  # step = d * signed 6-bit scale per 16-weight sub-block, no offset
    s = raw[:, 96:108]
    lo = np.concatenate([s[:, 0:8] & 0xF, s[:, 0:8] >> 4], axis=1)  # sub-blocks 0..7, 8..15
    # byte 8 + k holds the high 2 bits of s(k), s(k+4), s(k+8), s(k+12) from bit 0 up, so
    # sub-block j = 4t + k takes bits 2t..2t+1 of byte 8 + k
    hi = np.concatenate([(s[:, 8:12] >> (2 * t)) & 3 for t in range(4)], axis=1)
    sc = ((lo | (hi << 4)).astype(np.int16) - 32).astype(F32)  # stored with +32
    step = _f16(raw, 108) * sc  # gguf-py: dl = d * scale, then dl * (q - 4)
    return np.repeat(step, 16, axis=1), np.zeros((raw.shape[0], 256), F32)


def _pack_q3_k(raw, codes):
    # q = 0..7 means q - 4; the low 2 bits go to qs, bit 2 to hmask, where bit k of
    # byte l belongs to q[32k + l] (a set bit is the +4, i.e. a non-negative value)
    hi = ((codes.reshape(-1, 8, 32) >> 2) & 1).astype(np.uint8)
    hmask = np.zeros((codes.shape[0], 32), np.uint8)
    for k in range(8):
        hmask |= hi[:, k] << k
    raw[:, 0:32] = hmask
    raw[:, 32:96] = _crumbs(codes)


def _parse_q2_k(raw):  # step = d * 4-bit scale, offset = dmin * 4-bit min per 16 weights
    s = raw[:, 0:16]
    step = _f16(raw, 80) * (s & 0xF).astype(F32)  # gguf-py: dl * q - ml
    offset = _f16(raw, 82) * (s >> 4).astype(F32)
    return np.repeat(step, 16, axis=1), np.repeat(offset, 16, axis=1)


def _pack_q2_k(raw, codes):
    raw[:, 16:80] = _crumbs(codes)


@dataclass(frozen=True)
class BlockGrid:
    name: str
    block: int
    center: int
    qmax: int
    parse: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
    pack_codes: Callable[[np.ndarray, np.ndarray], None]  # writes into raw in place
    takes_importance: bool  # the RTN kernel's scale search accepts per-weight importance

    def pack(self, raw: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """A copy of `raw` (n, type_size) with its codes replaced by `codes` (n, block)."""
        out = np.array(raw, dtype=np.uint8, copy=True)
        self.pack_codes(out, np.asarray(codes))
        return out

    def values(self, step: np.ndarray, offset: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """What the block decodes to with these codes, exactly as gguf-py computes it."""
        return step * (codes - self.center).astype(F32) - offset


GRIDS: Registry[BlockGrid] = Registry("GPTQ block grid")
GRIDS.add("Q8_0", BlockGrid("Q8_0", 32, 128, 255, _parse_d_only, _pack_q8_0, False))
GRIDS.add("Q4_0", BlockGrid("Q4_0", 32, 8, 15, _parse_d_only, _pack_q4_0, True))
GRIDS.add("Q5_0", BlockGrid("Q5_0", 32, 16, 31, _parse_d_only, _pack_q5_0, True))
GRIDS.add("Q4_1", BlockGrid("Q4_1", 32, 0, 15, _parse_d_m, _pack_q4_1, True))
GRIDS.add("Q5_1", BlockGrid("Q5_1", 32, 0, 31, _parse_d_m, _pack_q5_1, True))
GRIDS.add("Q4_K", BlockGrid("Q4_K", 256, 0, 15, _parse_k4, _pack_q4_k, True))
GRIDS.add("Q5_K", BlockGrid("Q5_K", 256, 0, 31, _parse_k4, _pack_q5_k, True))
GRIDS.add("Q6_K", BlockGrid("Q6_K", 256, 32, 63, _parse_q6_k, _pack_q6_k, True))
GRIDS.add("Q3_K", BlockGrid("Q3_K", 256, 4, 7, _parse_q3_k, _pack_q3_k, True))
GRIDS.add("Q2_K", BlockGrid("Q2_K", 256, 0, 3, _parse_q2_k, _pack_q2_k, True))


def block_grid(name: str) -> BlockGrid:
    return GRIDS.get(name)
