"""Integer weights packed into int32 words, as GPTQ, AWQ and compressed-tensors checkpoints
store them, decoded to float32 rows of the (out, in) weight they stand for.

All three put `32 / bits` codes in a word, code k in bits k*b .. k*b+b-1 (low first), and
store unsigned codes: w = scale[group] * (code - zero[group]).

    AutoGPTQ   qweight I32 (in*b/32, out)   packed down the input dimension
               qzeros  I32 (groups, out*b/32), scales F16 (groups, out), g_idx I32 (in)
               zero points are stored minus one ("gptq" checkpoint_format; "gptq_v2" is not)
    AutoAWQ    qweight I32 (in, out/8)      packed along the output dimension, the 8 codes
               qzeros  I32 (groups, out/8)  of a word in the order 0 2 4 6 1 3 5 7
               scales  F16 (groups, out)    (GEMM version; 4-bit only)
    compressed-tensors pack-quantized: sink/compressed_tensors.py draws it (rows are
               output channels; codes and zero points offset by 2^(b-1))

The decoders take rows start..stop of the output weight, so a large tensor is read a
slice at a time, and the scales of those rows only (float32: the columns start..stop of
GPTQ's and AWQ's (groups, out) scales, the rows of compressed-tensors' (out, groups))."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..sink.compressed_tensors import unpack_int32

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # the output column of each nibble of a word, in nibble order
AWQ_NATURAL = tuple(int(i) for i in np.argsort(AWQ_ORDER))  # the nibble of each column


def unpack_words(words: np.ndarray, bits: int) -> np.ndarray:
    """int32 (..., n) -> uint8 codes (..., n * 32/bits), code k of word w at k + w*32/bits."""
    per = 32 // bits
    u = np.ascontiguousarray(words).view(np.uint32)
    shifts = np.arange(per, dtype=np.uint32) * np.uint32(bits)
    codes = (u[..., None] >> shifts) & np.uint32((1 << bits) - 1)
    return codes.astype(np.uint8).reshape(*u.shape[:-1], -1)


def columns_to_groups(n_in: int, group_size: int, g_idx: Optional[np.ndarray]) -> np.ndarray:
    """The group of each input column: g_idx when stored (act-order), else column // size."""
    if g_idx is not None:
        return np.asarray(g_idx, dtype=np.int64)
    return np.arange(n_in) // max(1, group_size)


def scaled(codes: np.ndarray, zeros: np.ndarray, scales: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """(rows, in) codes with per-(row, group) zero points and scales -> float32 weights."""
    out = codes.astype(np.float32)
    out -= zeros.astype(np.float32)[:, groups]
    out *= scales.astype(np.float32)[:, groups]
    return out


def gptq_rows(qweight, qzeros, scales, g_idx, bits: int, group_size: int, zero_offset: int,
              start: int, stop: int) -> np.ndarray:
    """Rows start..stop of the (out, in) weight of an AutoGPTQ module."""
    codes = unpack_words(np.asarray(qweight)[:, start:stop].T, bits)  # (rows, in)
    zeros = unpack_words(np.asarray(qzeros), bits)[:, start:stop].T.astype(np.int32) + zero_offset
    groups = columns_to_groups(codes.shape[1], group_size, g_idx)
    return scaled(codes, zeros, np.asarray(scales).T, groups)


def awq_natural(codes: np.ndarray) -> np.ndarray:
    """AWQ's nibble order within each word put back in column order."""
    return codes.reshape(*codes.shape[:-1], -1, 8)[..., list(AWQ_NATURAL)].reshape(codes.shape)


def awq_rows(qweight, qzeros, scales, group_size: int, start: int, stop: int) -> np.ndarray:
    """Rows start..stop of the (out, in) weight of an AutoAWQ (GEMM) module."""
    w0, w1 = start // 8, -(-stop // 8)  # whole words, then the rows within them
    cut = slice(start - w0 * 8, stop - w0 * 8)
    codes = awq_natural(unpack_words(np.asarray(qweight)[:, w0:w1], 4))[:, cut].T
    zeros = awq_natural(unpack_words(np.asarray(qzeros)[:, w0:w1], 4))[:, cut].T
    groups = columns_to_groups(codes.shape[1], group_size, None)
    return scaled(codes, zeros, np.asarray(scales).T, groups)


def ct_rows(packed, scale, zero_point, g_idx, bits: int, shape: tuple[int, int], start: int, stop: int) -> np.ndarray:
    """Rows start..stop of a compressed-tensors pack-quantized weight of `shape` (out, in):
    scale (out, groups); zero_point None (symmetric) or packed down the columns."""
    n_out, n_in = shape
    codes = unpack_int32(np.asarray(packed)[start:stop], bits, n_in)
    scale = np.asarray(scale)
    if zero_point is None:
        zeros = np.full(scale.shape, 1 << (bits - 1), dtype=np.int32)
    else:
        zeros = unpack_int32(np.ascontiguousarray(np.asarray(zero_point).T), bits, n_out).T[start:stop]
    n_groups = scale.shape[1]
    groups = columns_to_groups(n_in, n_in // n_groups, g_idx)
    return scaled(codes, zeros, scale, groups)
