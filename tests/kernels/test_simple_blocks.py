"""Q8_0, Q4_0, Q4_1, Q5_0, Q5_1: numba kernels against their NumPy twins (bit for bit),
both against llama.cpp's own quantizer (byte for byte), and our decoders against
gguf-py's dequantizers (float for float)."""

import platform

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize

from ggml_oracle import ggml_quantize
from qconvert.kernels import decode, encode, kernel
from qconvert.qtypes import qtype

TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]


def edge_cases():
    """Named float32 matrices (rows, width) with widths 256..4096."""
    rng = np.random.default_rng(1234)
    f32 = np.float32
    c = {}
    c["zeros"] = np.zeros((4, 256), f32)
    z = np.zeros((4, 256), f32)
    z[:, ::3] = -0.0  # signed zeros: the sign of d and m must follow C's scan order
    c["signed_zeros"] = z
    c["constant_pos"] = np.full((3, 512), 0.7, f32)
    c["constant_neg"] = np.full((3, 512), -2.5, f32)
    c["constant_per_row"] = np.repeat(rng.standard_normal((8, 1)), 1024, axis=1).astype(f32)
    x = rng.standard_normal((4, 2048)).astype(f32)
    blocks = x.reshape(-1, 32)
    pos = rng.integers(0, 32, len(blocks))
    blocks[np.arange(len(blocks)), pos] = rng.choice([-1, 1], len(blocks)) * rng.uniform(50, 5000, len(blocks))
    c["outlier_per_block"] = x
    c["tiny"] = (rng.choice([-1, 1], (4, 1024)) * 10.0 ** rng.uniform(-8, -5, (4, 1024))).astype(f32)
    c["tiny_1e-8"] = (rng.standard_normal((2, 512)) * 1e-8).astype(f32)
    c["student_t2"] = rng.standard_t(2, (4, 4096)).astype(f32)
    c["cauchy"] = np.clip(rng.standard_cauchy((4, 2048)), -1e5, 1e5).astype(f32)
    neg = np.abs(rng.standard_normal((4, 1024))).astype(f32)
    nb = neg.reshape(-1, 32)
    nb[np.arange(len(nb)), rng.integers(0, 32, len(nb))] = -5.0  # negative value of largest magnitude
    c["negative_max"] = neg
    c["normal"] = rng.standard_normal((16, 4096)).astype(f32)
    c["normal_scaled"] = (rng.standard_normal((8, 768)) * 10.0 ** rng.uniform(-3, 2, (8, 1))).astype(f32)
    # integer grids make exact ties: x * id lands on .5 and ±max appears twice
    c["integer_grid"] = rng.integers(-16, 17, (8, 1024)).astype(f32)
    c["half_steps"] = (rng.integers(-254, 255, (4, 512)) / f32(2)).astype(f32)
    sym = rng.standard_normal((2, 256)).astype(f32)
    sb = sym.reshape(-1, 32)
    sb[:, 3], sb[:, 20] = 4.0, -4.0  # +max and -max tie: the first one must win
    c["abs_tie"] = sym
    c["big"] = (rng.standard_normal((2, 1024)) * 1e6).astype(f32)  # scales past fp16 range
    if platform.machine().lower() in ("x86_64", "amd64"):
        # d becomes a float32 subnormal and 1/d overflows to inf; C's float->int8 cast
        # of inf/NaN is then undefined, and these bytes are what x86 produces
        c["subnormal_scale"] = (rng.standard_normal((2, 256)) * 1e-39).astype(f32)
    return c


CASES = edge_cases()


def _bytes_equal(a, b):
    return a.shape == b.shape and np.array_equal(a, b)


@pytest.mark.parametrize("name", TYPES)
def test_numba_matches_numpy_twin(name):
    k = kernel(name)
    rng = np.random.default_rng(7)
    mats = list(CASES.values()) + [rng.standard_normal((64, 4096)).astype(np.float32) * 0.02]
    for x in mats:
        blocks = x.reshape(-1, 32)
        q = k.encode(blocks)
        assert _bytes_equal(q, k.encode_ref(blocks))
        with np.errstate(invalid="ignore", over="ignore"):
            y, y_ref = k.decode(q), k.decode_ref(q)
        assert np.array_equal(y.view(np.uint32), y_ref.view(np.uint32))
    # random bytes decode the same too (every bit pattern is a valid block). Scales
    # that are fp16 NaN/inf occur here; which NaN payload survives `d * q + m` when both
    # d and m are NaN depends on operand order the compiler may swap, so NaNs are
    # compared as NaNs and everything else bit for bit.
    q = rng.integers(0, 256, (2048, qtype(name).type_size), dtype=np.uint8)
    with np.errstate(invalid="ignore", over="ignore"):
        y, y_ref = k.decode(q), k.decode_ref(q)
    nan = np.isnan(y)
    assert np.array_equal(nan, np.isnan(y_ref))
    assert np.array_equal(y[~nan].view(np.uint32), y_ref[~nan].view(np.uint32))


@pytest.mark.parametrize("name", TYPES)
def test_bytes_identical_to_llama_cpp(name):
    k = kernel(name)
    blocks_total = blocks_same = 0
    bad = []
    for case, x in CASES.items():
        want = ggml_quantize(name, x)
        got = k.encode(x.reshape(-1, 32))
        ref = k.encode_ref(x.reshape(-1, 32))
        same = np.all(got == want, axis=1)
        blocks_total += len(same)
        blocks_same += int(same.sum())
        if not (same.all() and np.array_equal(ref, want)):
            bad.append(f"{case}: {int((~same).sum())}/{len(same)} blocks differ")
    print(f"{name}: {blocks_same}/{blocks_total} blocks identical to llama.cpp")
    assert not bad, f"{name} differs from llama.cpp: " + "; ".join(bad)


@pytest.mark.parametrize("name", TYPES)
def test_decode_matches_gguf_py(name):
    k = kernel(name)
    for case, x in CASES.items():
        q = k.encode(x.reshape(-1, 32))
        with np.errstate(invalid="ignore", over="ignore"):
            want = dequantize(q.reshape(x.shape[0], -1), GGMLQuantizationType[name]).reshape(-1, 32)
            got = k.decode(q)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), case


@pytest.mark.parametrize("name", TYPES)
def test_roundtrip_error_is_within_half_a_step(name):
    """A property independent of any implementation: each value decodes to within half
    a quantization step (plus fp16 rounding of the scale) of itself."""
    x = CASES["normal"]
    y = decode(name, encode(name, x)).reshape(x.shape)
    b = x.reshape(-1, 32)
    amax = np.abs(b).max(axis=1)
    # step between levels, and how many steps the worst value may miss by: Q4_0/Q5_0
    # put the extreme on the lowest level, so the opposite end clamps one level short
    step, slack = {
        "Q8_0": (amax / 127, 0.5),
        "Q4_0": (amax / 8, 1.0),
        "Q5_0": (amax / 16, 1.0),
        "Q4_1": ((b.max(axis=1) - b.min(axis=1)) / 15, 0.5),
        "Q5_1": ((b.max(axis=1) - b.min(axis=1)) / 31, 0.5),
    }[name]
    err = np.abs(y.reshape(-1, 32) - b).max(axis=1)
    fp16_slop = 2e-3 * amax  # the scale (and min) are rounded to fp16: 2**-11 relative
    assert np.all(err <= step * slack + fp16_slop)

