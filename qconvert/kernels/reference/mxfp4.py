"""MXFP4 in plain NumPy (twin of kernels/mxfp4.py; layout and rounding drawn there)."""

from __future__ import annotations

import numpy as np

from ._blocks import pack_nibbles, quiet, unpack_nibbles

# the E2M1 values doubled (ggml's kvalues_mxfp4): index = the 4-bit code
KVALUES = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], dtype=np.float32)


def e8m0_half(e: np.ndarray) -> np.ndarray:
    """E8M0 exponent byte -> 2**(e - 128) as float32 (half the scale, since the
    values are doubled); e 0 and 1 are float32 subnormals."""
    e = e.astype(np.uint32)
    bits = np.where(e < 2, np.uint32(0x00200000) << e, (e - np.uint32(1)) << np.uint32(23))
    return bits.astype(np.uint32).view(np.float32)


def exponent_byte(amax: np.ndarray) -> np.ndarray:
    """(uint8_t)(floorf(log2f(amax)) - 2 + 127), 0 for amax == 0. log2f is float32
    log2 rounded from double (correctly rounded, as glibc's); the C cast of a negative
    value (amax below 2**-125) keeps the low byte of the int32 truncation, as on x86."""
    with np.errstate(divide="ignore"):
        lg = np.log2(amax.astype(np.float64)).astype(np.float32)
    e = np.floor(lg).astype(np.float64) - 2 + 127
    e = np.where(amax > 0, e, 0).astype(np.int32)
    return (e & 0xFF).astype(np.uint8)


@quiet
def encode(x: np.ndarray) -> np.ndarray:
    amax = np.abs(x).max(axis=1)
    e = exponent_byte(amax)
    d = e8m0_half(e)
    err = np.abs(KVALUES[None, None, :] * d[:, None, None] - x[:, :, None])
    q = np.argmin(err, axis=2)  # the first of equal errors, as C's strict `<` keeps it
    return np.concatenate([e[:, None], pack_nibbles(q)], axis=1)


def decode(q: np.ndarray) -> np.ndarray:
    d = e8m0_half(q[:, 0])[:, None]
    return KVALUES[unpack_nibbles(q[:, 1:])] * d
