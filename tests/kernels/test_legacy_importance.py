"""Q4_0, Q4_1, Q5_0, Q5_1 with importance (llama.cpp's quantize_row_q*_impl, the path
llama-quantize takes whenever an imatrix is given): numba and NumPy twin both byte for
byte equal to ggml_quantize_chunk on the edge-case suites of the K-quants and of the
plain 32-wide kernels."""

import numpy as np
import pytest

from ggml_oracle import ggml_quantize
from kernels import test_kquants, test_simple_blocks
from qconvert.kernels import IMPORTANCE_TYPES, encode
from qconvert.kernels._blocks import row_sigma2

TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1"]
F32 = np.float32
SUITE = {**{f"k/{k}": v for k, v in test_kquants.CASES.items()},
         **{f"s/{k}": v for k, v in test_simple_blocks.CASES.items()}}


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("case", sorted(SUITE))
def test_importance_matches_llama_cpp(name, case):
    x = SUITE[case]
    for iname, imat in test_kquants.importance_cases(x.shape[1]).items():
        want = ggml_quantize(name, x, imat)
        imp = np.broadcast_to(imat, x.shape)
        got = encode(name, x, importance=imp).reshape(want.shape)
        same = (got == want).all(axis=1)
        assert same.all(), f"{name}/{case}/{iname}: {same.mean():.3f} of blocks identical"
        assert np.array_equal(encode(name, x, importance=imp, reference=True).reshape(want.shape), want), \
            f"{name} (twin) {case}/{iname}"


@pytest.mark.parametrize("name", TYPES)
def test_importance_path_is_taken_and_uses_whole_rows(name):
    assert name in IMPORTANCE_TYPES
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 512)).astype(F32)
    imp = np.broadcast_to((rng.random(512) ** 3 * 10).astype(F32), x.shape)
    weighted = encode(name, x, importance=imp)
    assert not np.array_equal(weighted, encode(name, x))
    # llama.cpp weighs each value by sqrt(sigma2 + x^2) with sigma2 the mean square of
    # the whole row; encoding the same blocks as 32-wide rows must differ somewhere...
    alone = encode(name, x.reshape(-1, 32), importance=imp.reshape(-1, 32))
    assert not np.array_equal(alone, weighted)
    # ...and giving the row statistics explicitly (GPTQ's block columns) restores it
    sig = row_sigma2(x)
    cols = [encode(name, x[:, c:c + 32], importance=imp[:, c:c + 32], row_sigma2=sig) for c in range(0, 512, 32)]
    assert np.array_equal(np.stack(cols, axis=1).reshape(weighted.shape), weighted)


def test_types_without_importance_ignore_it():
    """llama.cpp's quantize_q8_0 ignores quant_weights; so do we (it was a TypeError)."""
    x = np.random.default_rng(4).standard_normal((2, 256)).astype(F32)
    assert np.array_equal(encode("Q8_0", x, importance=np.ones_like(x)), encode("Q8_0", x))
