"""fp16 conversion used for block scales: the numba bit-twiddling versions against
numpy's float16 cast (round to nearest even), over every fp16 value, every midpoint
between neighbours (the ties), and random float32 bit patterns of every class."""

import numpy as np
import pytest

from qconvert.kernels.flags import njit
from qconvert.kernels.half import f16_bits_to_f32, f16_bits_to_f32_np, f32_to_f16_bits, f32_to_f16_bits_np


@njit
def _encode_all(x):
    out = np.empty(x.size, np.uint16)
    for i in range(x.size):
        out[i] = f32_to_f16_bits(x[i])
    return out


@njit
def _decode_all(h):
    out = np.empty(h.size, np.float32)
    for i in range(h.size):
        out[i] = f16_bits_to_f32(h[i])
    return out


def _numpy_f16(x):
    with np.errstate(over="ignore", invalid="ignore"):
        bits = x.astype(np.float16).view(np.uint16).copy()
    nan = np.isnan(x)
    # ggml (and our converters) write the canonical quiet NaN, sign kept
    bits[nan] = (bits[nan] & 0x8000) | 0x7E00
    return bits


def _all_halves():
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)


def test_decode_every_half():
    h = _all_halves()
    want = h.view(np.float16).astype(np.float32).view(np.uint32)
    assert np.array_equal(_decode_all(h).view(np.uint32), want)
    assert np.array_equal(f16_bits_to_f32_np(h).view(np.uint32), want)


def test_encode_every_half_roundtrips():
    h = _all_halves()
    h = h[(h & 0x7C00) != 0x7C00]  # finite values
    x = h.view(np.float16).astype(np.float32)
    assert np.array_equal(_encode_all(x), h)


def test_encode_ties_round_to_even():
    h = np.arange(0, 0x7C00, dtype=np.uint16)  # +0 .. largest finite, subnormals included
    f = h.view(np.float16).astype(np.float64)
    mid = ((f[:-1] + f[1:]) / 2).astype(np.float32)  # exact in float32
    for x in (mid, -mid, np.nextafter(mid, np.float32(0)), np.nextafter(mid, np.float32(np.inf))):
        assert np.array_equal(_encode_all(x), _numpy_f16(x))
    # a tie picks the even neighbour: 1 + 2**-11 lies between 1.0 (0x3C00) and 0x3C01
    assert _encode_all(np.array([1 + 2.0**-11], np.float32))[0] == 0x3C00
    assert _encode_all(np.array([1 + 3 * 2.0**-11], np.float32))[0] == 0x3C02


@pytest.mark.parametrize("seed", [0, 1])
def test_encode_random_bit_patterns(seed):
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 1 << 32, size=1 << 20, dtype=np.uint64).astype(np.uint32)
    # skew half the draws into the exponent range where fp16 lives or underflows
    exp = rng.integers(90, 145, size=bits.size // 2).astype(np.uint32)
    bits[: bits.size // 2] = (bits[: bits.size // 2] & np.uint32(0x807FFFFF)) | (exp << np.uint32(23))
    x = bits.view(np.float32)
    want = _numpy_f16(x)
    assert np.array_equal(_encode_all(x), want)
    assert np.array_equal(f32_to_f16_bits_np(x), want)


def test_encode_specials():
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 65504.0, 65519.996, 65520.0, -65520.0,
                  1e9, 2.0**-24, 2.0**-25, np.nextafter(np.float32(2.0**-25), np.float32(1)), 2.0**-26, 1e-45, -1e-45,
                  6.097555e-05, 6.1035156e-05], np.float32)
    got = _encode_all(x)
    assert np.array_equal(got, _numpy_f16(x))
    assert list(got[:6]) == [0x0000, 0x8000, 0x7C00, 0xFC00, 0x7E00, 0xFE00]
    assert list(got[6:10]) == [0x7BFF, 0x7BFF, 0x7C00, 0xFC00]
    assert list(got[11:15]) == [0x0001, 0x0000, 0x0001, 0x0000]
