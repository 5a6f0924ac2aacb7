"""I-quants: numba kernels and NumPy twins both byte for byte equal to llama.cpp's
ggml_quantize_chunk (which builds its grids through ggml_quantize_init), with and without
importance where llama.cpp allows either; our decoders equal gguf-py's dequantizers; a
GGUF written with them reads back through gguf-py to our floats and runs in llama.cpp."""

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize

from ggml_oracle import ggml_quantize
from kernels.test_kquants import CASES, importance_cases
from qconvert.kernels import IMPORTANCE_TYPES, decode, encode, kernel
from qconvert.qtypes import qtype

F32 = np.float32
TYPES = ["IQ4_NL", "IQ4_XS", "IQ3_XXS", "IQ3_S", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S", "IQ1_M"]
NEEDS_IMPORTANCE = {"IQ2_XXS", "IQ2_XS", "IQ1_S"}  # llama.cpp's ggml_quantize_requires_imatrix
PLAIN = [t for t in TYPES if t not in NEEDS_IMPORTANCE]
# relative RMS error of plain rounding on normal data; bounds a little above measured
ERROR_BOUND = {"IQ4_NL": 0.11, "IQ4_XS": 0.11, "IQ3_XXS": 0.24, "IQ3_S": 0.19, "IQ2_XXS": 0.37, "IQ2_XS": 0.32,
               "IQ2_S": 0.28, "IQ1_S": 0.52, "IQ1_M": 0.61}
# cases too slow for llama.cpp's own search at every importance vector (the big ones)
IMPORTANCE_CASES = ("normal", "outlier_per_block", "tiny_1e-8_1e-5", "zeros", "half_zero", "student_t2",
                    "constant_per_row", "small_ints")


def _imp(x, imat):
    return None if imat is None else np.broadcast_to(imat, x.shape)


@pytest.mark.parametrize("name", PLAIN)
@pytest.mark.parametrize("case", sorted(CASES))
def test_plain_matches_llama_cpp(name, case):
    x = CASES[case]
    want = ggml_quantize(name, x)
    got = encode(name, x).reshape(want.shape)
    same = (got == want).all(axis=1)
    assert same.all(), f"{name}/{case}: {same.mean():.3f} of blocks identical"
    assert np.array_equal(encode(name, x, reference=True).reshape(want.shape), want), f"{name} (twin) {case}"


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("case", IMPORTANCE_CASES)
def test_importance_matches_llama_cpp(name, case):
    assert name in IMPORTANCE_TYPES
    x = CASES[case]
    for iname, imat in importance_cases(x.shape[1]).items():
        want = ggml_quantize(name, x, imat)
        got = encode(name, x, importance=_imp(x, imat)).reshape(want.shape)
        same = (got == want).all(axis=1)
        assert same.all(), f"{name}/{case}/{iname}: {same.mean():.3f} of blocks identical"
        assert np.array_equal(encode(name, x, importance=_imp(x, imat), reference=True).reshape(want.shape),
                              want), f"{name} (twin) {case}/{iname}"
    if case == "normal" and name not in NEEDS_IMPORTANCE:
        imat = importance_cases(x.shape[1])["random"]
        assert not np.array_equal(ggml_quantize(name, x), encode(name, x, importance=_imp(x, imat)).reshape(-1))


@pytest.mark.parametrize("name", TYPES)
def test_decode_matches_gguf(name):
    gt = GGMLQuantizationType[name]
    qt = qtype(name)
    x = np.concatenate([CASES["normal"].reshape(-1, 256)[:16], CASES["outlier_per_block"].reshape(-1, 256),
                        CASES["zeros"].reshape(-1, 256)]).reshape(-1, qt.block_size)
    imp = np.ones_like(x) if name in NEEDS_IMPORTANCE else None
    q = encode(name, x, importance=imp)
    want = dequantize(q, gt).reshape(-1, qt.block_size)
    assert np.array_equal(decode(name, q), want)
    assert np.array_equal(decode(name, q, reference=True), want)
    # arbitrary bytes reach every index and scale pattern; fp16 scales drawn finite
    raw = np.random.default_rng(11).integers(0, 256, (64, qt.type_size), dtype=np.uint8)
    with np.errstate(invalid="ignore", over="ignore"):  # Inf/NaN scales among the random ones
        want = dequantize(raw, gt).reshape(-1, qt.block_size)
        ours, twin = decode(name, raw), decode(name, raw, reference=True)
    finite = np.isfinite(want).all(axis=1)
    assert finite.sum() > 32
    assert np.array_equal(ours[finite], want[finite])
    assert np.array_equal(twin[finite], want[finite])


@pytest.mark.parametrize("name", TYPES)
def test_numba_matches_numpy_twin(name):
    rng = np.random.default_rng(7)
    B = qtype(name).block_size
    x = (rng.standard_t(4, (4096 // B * 4, B)) * 10.0 ** rng.uniform(-6, 4, (4096 // B * 4, 1))).astype(F32)
    imp = (rng.random(x.shape) ** 2).astype(F32)
    k = kernel(name)
    for w in [imp] if name in NEEDS_IMPORTANCE else [None, imp]:
        q = k.encode(x, w)
        assert np.array_equal(q, k.encode_ref(x, w))
        assert np.array_equal(k.decode(q), k.decode_ref(q))


@pytest.mark.parametrize("name", TYPES)
def test_roundtrip_error_is_small(name):
    x = np.random.default_rng(3).standard_normal((8, 1024)).astype(F32)
    imp = np.ones_like(x) if name in NEEDS_IMPORTANCE else None
    y = decode(name, encode(name, x, importance=imp)).reshape(x.shape)
    rel = np.sqrt(np.mean((y - x) ** 2) / np.mean(x ** 2))
    assert rel < ERROR_BOUND[name], rel


@pytest.mark.parametrize("name", TYPES)
def test_gguf_file_reads_back_to_our_floats_and_runs(name, tiny, tmp_path):
    """The tiny model (widths 256/512) with its decoder linears in the type: every tensor of
    the type, dequantized by gguf-py, equals our decoder's floats; llama.cpp runs the file."""
    import gguf

    import qconvert
    from qconvert.eval.llama_model import open_llama

    # the decoder linears take the type (the presets named after these types mix others in)
    extra = dict(type="Q4_K_M", tensor_types=[f"(attn_[qkvo]|ffn_(up|down|gate))\\.weight={name}"])
    from qconvert.plan.iquant_presets import NEEDS_IMPORTANCE as QUANTIZE_NEEDS  # llama-quantize's own list

    if name in QUANTIZE_NEEDS:  # statistics exist for those linears; embedding/output keep Q4_K_M's
        extra.update(calibration=True, calibration_samples=2, calibration_seqlen=32, device="cpu")
    res = qconvert.quantize(tiny("llama"), tmp_path / "q.gguf", **extra)
    seen = 0
    for t in gguf.GGUFReader(res.output).tensors:
        if t.tensor_type.name != name:
            continue
        raw = np.asarray(t.data).reshape(-1, qtype(name).type_size)
        assert np.array_equal(dequantize(raw, t.tensor_type).reshape(-1), decode(name, raw).reshape(-1)), t.name
        seen += 1
    assert seen == sum(tp.qtype.name == name for tp in res.plan.tensors) >= 12
    llm = open_llama(res.output, n_ctx=64, logits_all=True, n_threads=2)
    llm.eval([1, 50, 60, 70, 80])
    logits = np.asarray(llm.scores[:5])
    assert np.isfinite(logits).all() and logits.std() > 0


@pytest.mark.parametrize("name", TYPES)
def test_max_abs_is_held(name):
    """qtypes.MAX_ABS (what the writer refuses beyond): at the bound, random, one-signed
    and constant blocks encode to finite values, plain and weighted, numba and twin."""
    qt = qtype(name)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 256)).astype(F32)
    x /= np.abs(x).max(axis=1, keepdims=True)
    x[1], x[2], x[3] = np.abs(x[1]), 1.0, -1.0
    x = (x * F32(qt.max_abs)).astype(F32)
    imps = [rng.exponential(size=x.shape).astype(F32) ** 3]
    if name not in NEEDS_IMPORTANCE:
        imps.append(None)
    for ref in (False, True):
        for imp in imps:
            assert np.isfinite(decode(name, encode(name, x, reference=ref, importance=imp))).all(), (ref, imp is None)


@pytest.mark.parametrize("name", sorted(NEEDS_IMPORTANCE))
def test_refused_without_importance(name, tiny, tmp_path):
    """llama.cpp asserts on these without an imatrix; we refuse in one line (and leave no
    output behind)."""
    import qconvert
    from qconvert.errors import InputError
    from qconvert.kernels import REQUIRES_IMPORTANCE

    assert name in REQUIRES_IMPORTANCE
    x = CASES["normal"]
    for ref in (False, True):
        with pytest.raises(InputError, match=f"{name} needs importance statistics.*--imatrix"):
            encode(name, x, reference=ref)
    with pytest.raises(InputError, match="needs importance statistics"):
        qconvert.quantize(tiny("llama"), tmp_path / "q.gguf", type="Q4_K_M", tensor_types=[f"ffn_up={name}"])
    assert not (tmp_path / "q.gguf").exists()


def test_statistics_missing_for_a_tensor_that_needs_them(tiny, tmp_path):
    """Statistics exist only for the decoder linears: an embedding planned as IQ2_XXS is
    refused naming it (llama.cpp's encoder would assert), and nothing is written."""
    import qconvert
    from qconvert.errors import InputError

    with pytest.raises(InputError, match="no statistics for token_embd.weight, planned as IQ2_XXS"):
        qconvert.quantize(tiny("llama"), tmp_path / "q.gguf", type="Q4_K_M", tensor_types=["token_embd=IQ2_XXS"],
                          calibration=True, calibration_samples=2, calibration_seqlen=32, device="cpu")
    assert not (tmp_path / "q.gguf").exists()
