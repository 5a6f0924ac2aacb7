"""Q2_K .. Q6_K: numba kernels against their NumPy twins (bit for bit), both against
llama.cpp's own quantizer (byte for byte, plain and importance-weighted), and our
decoders against gguf-py's dequantizers (float for float)."""

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize

from ggml_oracle import ggml_quantize
from qconvert.kernels import decode, encode, kernel
from qconvert.qtypes import qtype

TYPES = ["Q4_K", "Q6_K", "Q5_K", "Q3_K", "Q2_K"]
F32 = np.float32


def edge_cases():
    """Named float32 matrices (rows, width), widths 256..4096."""
    rng = np.random.default_rng(2024)
    c = {}
    c["zeros"] = np.zeros((3, 256), F32)
    c["negative_zeros"] = np.full((2, 512), -0.0, F32)
    c["constant_pos"] = np.full((3, 512), 0.37, F32)
    c["constant_neg"] = np.full((3, 512), -2.5, F32)
    c["constant_per_row"] = np.repeat(rng.standard_normal((6, 1)), 1024, axis=1).astype(F32)
    x = rng.standard_normal((4, 1024)).astype(F32)
    b = x.reshape(-1, 256)
    big = rng.choice([-1, 1], len(b)) * 10.0 ** rng.uniform(2, 6, len(b))
    b[np.arange(len(b)), rng.integers(0, 256, len(b))] = big
    c["outlier_per_block"] = x
    tiny = rng.choice([-1, 1], (4, 1024)) * 10.0 ** rng.uniform(-8, -5, (4, 1024))
    c["tiny_1e-8_1e-5"] = tiny.astype(F32)  # fp16 scales go subnormal or to zero
    c["tiny_1e-8"] = (rng.standard_normal((2, 512)) * 1e-8).astype(F32)
    c["below_fp16"] = (rng.standard_normal((2, 256)) * 1e-20).astype(F32)
    c["student_t2"] = rng.standard_t(2, (4, 4096)).astype(F32)
    c["cauchy"] = rng.standard_cauchy((4, 2048)).astype(F32)
    c["normal"] = rng.standard_normal((8, 4096)).astype(F32)
    # many blocks of weight-like rows: a rare rounding-order slip shows up here
    c["many_rows"] = (rng.standard_t(5, (64, 4096)) * 10.0 ** rng.uniform(-3, 0, (64, 1))).astype(F32)
    c["normal_scaled"] = (rng.standard_normal((8, 768)) * 10.0 ** rng.uniform(-4, 3, (8, 1))).astype(F32)
    c["all_positive"] = rng.random((4, 512)).astype(F32)
    c["all_negative"] = -rng.random((4, 512)).astype(F32)
    c["small_ints"] = rng.integers(-8, 8, (4, 1024)).astype(F32)  # ties in every rounding
    c["sparse"] = (rng.standard_normal((4, 1024)) * (rng.random((4, 1024)) < 0.05)).astype(F32)
    half = rng.standard_normal((4, 512)).astype(F32)
    half[:, :128] = 0  # some sub-blocks all zero, others not
    c["half_zero"] = half
    bf16 = rng.standard_normal((4, 1024)).astype(F32) * F32(0.02)
    c["bf16_values"] = (bf16.view(np.uint32) & np.uint32(0xFFFF0000)).view(F32)
    return c


CASES = edge_cases()


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_llama_cpp(name, case):
    x = CASES[case]
    want = ggml_quantize(name, x)
    got = encode(name, x)
    got_ref = encode(name, x, reference=True)
    assert got.shape == want.shape == (x.size // 256, qtype(name).type_size)
    same = (got == want).all(axis=1)
    assert same.all(), f"{name}/{case}: {same.mean():.3f} of blocks identical"
    assert np.array_equal(got_ref, want)


@pytest.mark.parametrize("name", TYPES)
def test_numba_matches_numpy_twin(name):
    rng = np.random.default_rng(7)
    scales = 10.0 ** rng.uniform(-6, 4, (48, 1))
    x = (rng.standard_t(4, (48, 256)) * scales).astype(F32)
    k = kernel(name)
    assert np.array_equal(k.encode(x), k.encode_ref(x))
    q = k.encode(x)
    assert np.array_equal(k.decode(q), k.decode_ref(q))


def importance_cases(width):
    rng = np.random.default_rng(99)
    return {
        "random": (rng.random(width) ** 3 * 10).astype(F32),
        "ones": np.ones(width, F32),
        "zeros": np.zeros(width, F32),
        "sparse": (rng.random(width) < 0.1).astype(F32) * F32(3),
        "huge": np.full(width, 1e8, F32),
    }


@pytest.mark.parametrize("name", TYPES)
def test_importance_matches_llama_cpp(name):
    """Per-column importance, as llama-quantize's imatrix: ggml uses
    quantize_row_*_impl then, a different search from the plain path."""
    rng = np.random.default_rng(5)
    for label, x in [("normal", rng.standard_normal((4, 1024)).astype(F32)),
                     ("t2", rng.standard_t(2, (2, 2048)).astype(F32)),
                     ("outliers", CASES["outlier_per_block"]),
                     ("tiny", CASES["tiny_1e-8_1e-5"]),
                     ("zeros", np.zeros((1, 512), F32))]:
        for iname, imat in importance_cases(x.shape[1]).items():
            want = ggml_quantize(name, x, imat)
            imp = np.broadcast_to(imat, x.shape)
            got = encode(name, x, importance=imp)
            got_ref = encode(name, x, importance=imp, reference=True)
            assert np.array_equal(got, want), f"{name} x={label} imatrix={iname}"
            assert np.array_equal(got_ref, want), f"{name} (twin) x={label} imatrix={iname}"
    x = rng.standard_normal((2, 1024)).astype(F32)
    plain = ggml_quantize(name, x)
    weighted = encode(name, x, importance=np.broadcast_to(importance_cases(1024)["random"], x.shape))
    assert not np.array_equal(plain, weighted)  # the importance path is really taken


@pytest.mark.parametrize("name", TYPES)
def test_decode_matches_gguf(name):
    gt = GGMLQuantizationType[name]
    rng = np.random.default_rng(11)
    x = np.concatenate([CASES["normal"].reshape(-1, 256)[:32],
                        CASES["outlier_per_block"].reshape(-1, 256),
                        CASES["zeros"].reshape(-1, 256)])
    q = encode(name, x)
    want = dequantize(q, gt).reshape(-1, 256)
    assert np.array_equal(decode(name, q), want)
    assert np.array_equal(decode(name, q, reference=True), want)
    # arbitrary bytes reach every bit pattern of the scales and quants; fp16 fields
    # are drawn finite so that the comparison is about the unpacking
    ts = qtype(name).type_size
    raw = rng.integers(0, 256, (64, ts), dtype=np.uint8)
    want = dequantize(raw, gt).reshape(-1, 256)
    finite = np.isfinite(want).all(axis=1)
    assert finite.sum() > 32
    assert np.array_equal(decode(name, raw)[finite], want[finite])
    assert np.array_equal(decode(name, raw, reference=True)[finite], want[finite])


@pytest.mark.parametrize("name", TYPES)
def test_roundtrip_error_is_small(name):
    """A sanity bound independent of llama.cpp: relative RMS error shrinks with bits."""
    bound = {"Q2_K": 0.35, "Q3_K": 0.18, "Q4_K": 0.085, "Q5_K": 0.043, "Q6_K": 0.021}[name]
    x = np.random.default_rng(3).standard_normal((16, 1024)).astype(F32)
    y = decode(name, encode(name, x)).reshape(x.shape)
    rel = np.sqrt(np.mean((y - x) ** 2) / np.mean(x ** 2))
    assert rel < bound, rel


def mixed_blocks(n):
    """n blocks of 256, each of a different kind: the numba encoders search several
    super-blocks side by side (kernels/kquant_lanes.py), so flat, zero, tiny and huge
    blocks share a search with ordinary ones."""
    rng = np.random.default_rng(n)
    kinds = [
        lambda: np.zeros(256),
        lambda: np.full(256, rng.standard_normal()),
        lambda: rng.standard_normal(256) * 1e-9,
        lambda: rng.standard_t(3, 256) * 10.0 ** rng.uniform(-3, 3),
        lambda: rng.random(256) * 1e4,
        lambda: -rng.random(256),
        lambda: rng.integers(-4, 4, 256).astype(float),
        lambda: rng.standard_normal(256) * (rng.random(256) < 0.1),
    ]
    return np.stack([kinds[(5 * i + n) % len(kinds)]() for i in range(n)]).astype(F32)


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("n_blocks", [1, 3, 9, 37])
def test_partial_lane_groups_match_llama_cpp(name, n_blocks):
    """Block counts that leave the last search group part-filled (4 or 8 super-blocks
    per group), plain and with importance."""
    x = mixed_blocks(n_blocks)
    assert np.array_equal(encode(name, x), ggml_quantize(name, x))
    imat = importance_cases(256)["random"]
    got = encode(name, x, importance=np.broadcast_to(imat, x.shape))
    assert np.array_equal(got, ggml_quantize(name, x, imat))
