"""NumPy twins of kernels/_blocks.py: the same choices, made with whole-array ops."""

from __future__ import annotations

import functools

import numpy as np

from ..half import f16_bits_to_f32_np, f32_to_f16_bits_np


def first_of(x: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per row, the first element equal to target (picks -0.0 vs +0.0 as C's loop does)."""
    idx = np.argmax(x == target[:, None], axis=1)
    return np.take_along_axis(x, idx[:, None], axis=1)[:, 0]


def signed_absmax(x: np.ndarray) -> np.ndarray:
    """Per row, the first value of largest magnitude; +0.0 for an all-zero row."""
    a = np.abs(x)
    idx = np.argmax(a, axis=1)  # argmax returns the first occurrence
    v = np.take_along_axis(x, idx[:, None], axis=1)[:, 0]
    return np.where(a.max(axis=1) > 0, v, np.float32(0.0)).astype(np.float32)


def min_max(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return first_of(x, x.min(axis=1)), first_of(x, x.max(axis=1))


def quiet(fn):
    """Run a twin encoder without floating-point warnings: for a float32-subnormal d,
    1/d overflows to inf and 0 * inf is NaN, exactly as in C; the casts that follow
    are handled by trunc_int."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            return fn(*args, **kwargs)

    return run


def inverse(d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", over="ignore"):
        return np.where(d != 0, np.float32(1.0) / d, np.float32(0.0)).astype(np.float32)


def trunc_int(v: np.ndarray) -> np.ndarray:
    """C's float -> integer cast: truncation toward zero. Out of range only when a
    subnormal d made 1/d infinite; numpy then gives INT32_MIN like x86's C cast, whose
    low bits are 0, so the packed bytes still match (hence the silenced warning)."""
    with np.errstate(invalid="ignore"):
        return v.astype(np.int32)


def f16_bytes(v: np.ndarray) -> np.ndarray:
    """(n,) float32 -> (n, 2) uint8, little-endian fp16."""
    return f32_to_f16_bits_np(v).astype("<u2").view(np.uint8).reshape(-1, 2)


def from_f16_bytes(b: np.ndarray) -> np.ndarray:
    """(n, 2) uint8 little-endian fp16 -> (n, 1) float32, ready to broadcast."""
    h = np.ascontiguousarray(b).view("<u2").astype(np.uint16)
    return f16_bits_to_f32_np(h).reshape(-1, 1)


def pack_nibbles(q: np.ndarray) -> np.ndarray:
    """(n, 32) values < 16 -> (n, 16) bytes: byte j = q[j] | q[j + 16] << 4."""
    q = q.astype(np.uint8)
    return q[:, :16] | (q[:, 16:] << np.uint8(4))


def unpack_nibbles(qs: np.ndarray) -> np.ndarray:
    """(n, 16) bytes -> (n, 32) values 0..15, inverse of pack_nibbles."""
    return np.concatenate([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=1)


def pack_high_bits(q: np.ndarray) -> np.ndarray:
    """(n, 32) 5-bit values -> (n, 4) bytes: the little-endian uint32 whose bit j is
    bit 4 of q[j]."""
    bits = ((q.astype(np.uint32) >> np.uint32(4)) & np.uint32(1)) << np.arange(32, dtype=np.uint32)
    return bits.sum(axis=1, dtype=np.uint32).astype("<u4").view(np.uint8).reshape(-1, 4)


def unpack_high_bits(qh: np.ndarray) -> np.ndarray:
    """(n, 4) bytes -> (n, 32) values 0 or 16, inverse of pack_high_bits."""
    h = np.ascontiguousarray(qh).view("<u4").astype(np.uint32).reshape(-1, 1)
    return (((h >> np.arange(32, dtype=np.uint32)) & np.uint32(1)) << np.uint32(4)).astype(np.uint8)


def row_sigma2(rows: np.ndarray) -> np.ndarray:
    """Twin of _blocks.row_sigma2: cumsum adds left to right in float32, as C's loop."""
    sq = rows.astype(np.float32) * rows.astype(np.float32)
    return (np.cumsum(sq, axis=1, dtype=np.float32)[:, -1] / np.float32(rows.shape[1])).astype(np.float32)


def importance_weights(x: np.ndarray, qw: np.ndarray, sigma2: np.ndarray) -> np.ndarray:
    """Twin of _blocks.importance_weights for all blocks at once."""
    return (qw.astype(np.float32) * np.sqrt(sigma2[:, None] + x * x)).astype(np.float32)
