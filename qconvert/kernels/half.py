"""IEEE half precision for block scales, as ggml stores them.

ggml converts a float32 scale to fp16 with round-to-nearest-even (ggml-impl.h,
ggml_compute_fp32_to_fp16); NaN becomes the quiet NaN 0x7E00 with its sign kept.
numba has no float16 type, so the numba versions work on the bit patterns: a float32
is reinterpreted as an integer (an LLVM bitcast, no arithmetic) and rounded by integer ops.
The NumPy versions lean on numpy's own float16 cast, which also rounds to nearest even;
tests compare the two over every float16 and over many float32 values.

fp16 bits:  [15] sign | [14:10] exponent (bias 15) | [9:0] mantissa
fp32 bits:  [31] sign | [30:23] exponent (bias 127) | [22:0] mantissa
"""

from __future__ import annotations

import numpy as np
from numba import types
from numba.extending import intrinsic

from .flags import JIT, njit


@intrinsic
def _f32_bits(typingctx, x):
    """A float32's bit pattern as a (non-negative) int64; no conversion of the value."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        u = builder.bitcast(args[0], context.get_value_type(types.uint32))
        return builder.zext(u, context.get_value_type(types.int64))

    return types.int64(types.float32), codegen


@intrinsic
def _bits_f32(typingctx, x):
    """The float32 whose bit pattern is the low 32 bits of an integer."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        i32 = context.get_value_type(types.uint32)
        if x.bitwidth > 32:
            v = builder.trunc(v, i32)
        elif x.bitwidth < 32:
            v = builder.zext(v, i32)
        return builder.bitcast(v, context.get_value_type(types.float32))

    return types.float32(x), codegen


# numba widens integer arithmetic to 64 bits anyway, so the bit work below is done
# on int64 values holding 32-bit patterns.
_REBIAS = 112 << 23  # exponent rebias fp32 -> fp16 (127 - 15), in fp32's exponent field
# smallest fp32 that rounds to fp16 infinity: 65520 = 65504 + half an ulp, and the
# tie goes up because 65504's mantissa (0x3FF) is odd
_TO_INF = 0x477FF000
_MIN_NORMAL = 0x38800000  # 2**-14, the smallest normal fp16, as fp32 bits


@njit(**JIT)
def f32_to_f16_bits(x):
    """float32 -> fp16 bit pattern (uint16), round to nearest, ties to even."""
    w = _f32_bits(np.float32(x))
    sign = (w >> 16) & 0x8000
    a = w & 0x7FFFFFFF
    if a > 0x7F800000:  # NaN: ggml writes the canonical quiet NaN
        return np.uint16(sign | 0x7E00)
    if a >= _TO_INF:
        return np.uint16(sign | 0x7C00)
    if a >= _MIN_NORMAL:
        # normal: drop 13 mantissa bits, rounding on them; a carry out of the
        # mantissa correctly bumps the exponent
        h = (a - _REBIAS) >> 13
        rem = a & 0x1FFF
        if rem > 0x1000 or (rem == 0x1000 and (h & 1) == 1):
            h += 1
        return np.uint16(sign | h)
    # subnormal fp16 (or zero): the result counts units of 2**-24.
    # value = m * 2**(e - 150), so value / 2**-24 = m >> (126 - e)
    e = a >> 23
    shift = 126 - e  # >= 14 here
    if shift > 24:  # value < 2**-25 (incl. fp32 subnormals): below half the smallest
        return np.uint16(sign)
    m = (a & 0x7FFFFF) | 0x800000
    q = m >> shift
    rem = m & ((1 << shift) - 1)
    half = 1 << (shift - 1)
    if rem > half or (rem == half and (q & 1) == 1):
        q += 1  # may reach 0x400, the smallest normal: still right
    return np.uint16(sign | q)


@njit(**JIT)
def f16_bits_to_f32(h):
    """fp16 bit pattern -> float32 (exact: every fp16 is a float32)."""
    h32 = np.int64(h) & 0xFFFF
    sign = (h32 & 0x8000) << 16
    e = (h32 >> 10) & 0x1F
    m = h32 & 0x3FF
    if e == 0x1F:  # inf / NaN
        return _bits_f32(sign | 0x7F800000 | (m << 13))
    if e == 0:  # zero / subnormal: m * 2**-24, exact in float32
        v = np.float32(m) * np.float32(5.960464477539063e-08)
        return -v if sign != 0 else v
    return _bits_f32(sign | ((e + 112) << 23) | (m << 13))


def f32_to_f16_bits_np(x: np.ndarray) -> np.ndarray:
    """Array version: float32 -> fp16 bits (uint16), numpy's nearest-even cast.
    NaNs are canonicalised to 0x7E00 (sign kept) as ggml does."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        bits = x.astype(np.float16).view(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        bits = bits.copy()
        bits[nan] = (bits[nan] & np.uint16(0x8000)) | np.uint16(0x7E00)
    return bits


def f16_bits_to_f32_np(h: np.ndarray) -> np.ndarray:
    """Array version: fp16 bits -> float32."""
    return np.asarray(h, dtype=np.uint16).view(np.float16).astype(np.float32)
