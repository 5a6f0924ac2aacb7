"""MXFP4: the numba kernel against its NumPy twin (bit for bit), both against llama.cpp's
own quantizer (byte for byte) on the shared edge cases plus MXFP4's own (block maxima at
and just under powers of two, values exactly between two codes, scales that fall below
float32's normal range or near its top), and the decoder against gguf-py's dequantizer."""

import platform

import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize

from ggml_oracle import ggml_quantize
from kernels.test_simple_blocks import CASES
from qconvert.kernels import decode, encode, kernel

F32 = np.float32


def mxfp4_cases():
    rng = np.random.default_rng(4321)
    c = {}
    k = rng.integers(-30, 30, (8, 1))  # the block maximum sets floor(log2(amax))
    x = rng.uniform(-1, 1, (8, 256)).astype(F32) * F32(2.0) ** k.astype(F32)
    xb = x.reshape(-1, 32)
    p = (F32(2.0) ** rng.integers(-20, 20, len(xb))).astype(F32)
    xb[:, 5] = p  # amax exactly 2**k
    c["amax_power_of_two"] = x.copy()
    xb[:, 5] = np.nextafter(p, F32(0))  # the float just under: log2f rounds it up to k
    c["amax_just_under"] = x.copy()
    xb[:, 5] = np.nextafter(p, F32(np.inf))
    c["amax_just_over"] = x
    # values exactly halfway between neighbouring codes: ties keep the lower code
    half = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], F32)
    t = rng.choice(np.concatenate([half, -half]), (4, 512)).astype(F32)
    t.reshape(-1, 32)[:, 0] = 6.0  # amax 6: e = 2 + 125, half-scale 0.5
    c["code_midpoints"] = t
    # amax under 2**-125 makes the exponent negative before the cast to uint8
    c["subnormal_amax"] = (rng.standard_normal((2, 256)) * F32(2.0) ** -140).astype(F32)
    c["near_float_max"] = (rng.uniform(-1, 1, (2, 256)) * F32(3.0e38)).astype(F32)
    c["random_small"] = (rng.standard_normal((64, 1024)) * 0.02).astype(F32)
    return c


def all_cases():
    cases = dict(CASES)
    cases.update(mxfp4_cases())
    if platform.machine().lower() not in ("x86_64", "amd64"):
        cases.pop("subnormal_amax")  # a negative float's cast to uint8 is x86's reading of UB
    return cases


def test_numba_matches_numpy_twin():
    k = kernel("MXFP4")
    for case, x in all_cases().items():
        blocks = x.reshape(-1, 32)
        q = k.encode(blocks)
        assert np.array_equal(q, k.encode_ref(blocks)), case
        assert np.array_equal(k.decode(q).view(np.uint32), k.decode_ref(q).view(np.uint32)), case
    q = np.random.default_rng(3).integers(0, 256, (4096, 17), dtype=np.uint8)  # every byte is a valid block
    with np.errstate(over="ignore"):
        assert np.array_equal(k.decode(q).view(np.uint32), k.decode_ref(q).view(np.uint32))


def test_bytes_identical_to_llama_cpp():
    k = kernel("MXFP4")
    total = same_blocks = 0
    bad = []
    for case, x in all_cases().items():
        want = ggml_quantize("MXFP4", x)
        got = k.encode(x.reshape(-1, 32))
        same = np.all(got == want, axis=1)
        total += len(same)
        same_blocks += int(same.sum())
        if not (same.all() and np.array_equal(k.encode_ref(x.reshape(-1, 32)), want)):
            bad.append(f"{case}: {int((~same).sum())}/{len(same)} blocks differ")
    print(f"MXFP4: {same_blocks}/{total} blocks identical to llama.cpp")
    assert not bad, "; ".join(bad)


def test_decode_matches_gguf_py():
    for case, x in all_cases().items():
        q = encode("MXFP4", x)
        with np.errstate(over="ignore"):
            want = dequantize(q.reshape(x.shape[0], -1), GGMLQuantizationType.MXFP4).reshape(-1, 32)
        assert np.array_equal(decode("MXFP4", q).view(np.uint32), want.view(np.uint32)), case


def test_gguf_py_quantizer_agrees():
    """gguf-py's NumPy quantizer makes the same bytes on every case, the ones just under
    a power of two too (numpy's float32 log2 rounds up there as C's log2f does)."""
    for case, x in all_cases().items():
        ours = kernel("MXFP4").encode_ref(x.reshape(-1, 32))
        with np.errstate(all="ignore"):
            theirs = quantize(x, GGMLQuantizationType.MXFP4).reshape(ours.shape)
        assert np.array_equal(ours, theirs), case


def test_values_on_the_grid_roundtrip_exactly():
    """Any code times a power-of-two scale is stored exactly (the format's definition),
    when the block's largest magnitude is one of 4, 6, 8 or 12 times the half-scale."""
    rng = np.random.default_rng(9)
    codes = rng.integers(0, 16, (256, 32))
    kv = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], F32)
    codes[:, 0] = 7  # 12: amax 12 * d sets e so that the half-scale is d again
    d = (F32(2.0) ** rng.integers(-100, 100, (256, 1))).astype(F32)
    x = kv[codes] * d
    assert np.array_equal(decode("MXFP4", encode("MXFP4", x)).reshape(x.shape), x)
