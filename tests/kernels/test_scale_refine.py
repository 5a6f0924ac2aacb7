"""The thorough K-quant scale search (kernels/scale_refine.py): numba kernel and NumPy
twin give the same bytes; every refined block's weighted error is at most llama.cpp's and
most are strictly lower; the blocks are ordinary ggml blocks (gguf-py decodes them to the
values our decoder gives)."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize

from qconvert import kernels
from qconvert.kernels.scale_refine import SPECS, error_weights, refine

TYPES = sorted(SPECS)


def blocks_under_test(n: int = 48, seed: int = 7) -> np.ndarray:
    """Weight-like rows (normal, heavy-tailed, with outliers, skewed) and edge cases:
    all zero, constant, a single non-zero, tiny values."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, 256)) * 0.02).astype(np.float32)
    x[n // 4:n // 2] = (rng.standard_t(3, (n // 2 - n // 4, 256)) * 0.01).astype(np.float32)
    x[n // 2:3 * n // 4, ::37] *= 12  # outliers
    x[3 * n // 4:] += np.float32(0.03)  # skewed: mins matter for the asymmetric types
    edge = np.zeros((4, 256), np.float32)
    edge[1] = 0.5
    edge[2, 17] = -3.0
    edge[3] = (rng.standard_normal(256) * 1e-6).astype(np.float32)
    return np.concatenate([x, edge])


def importance_for(x: np.ndarray, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cols = rng.gamma(0.7, 1.0, 256).astype(np.float32)
    cols[::50] = 0.0  # dead input channels
    return np.broadcast_to(cols, x.shape).copy()


def weighted_errors(name, x, q, w):
    y = kernels.decode(name, q).astype(np.float64)
    return ((y - x.astype(np.float64)) ** 2 * w).sum(axis=1)


@pytest.mark.parametrize("with_importance", [False, True], ids=["plain", "importance"])
@pytest.mark.parametrize("name", TYPES)
def test_kernel_equals_twin_and_never_raises_the_error(name, with_importance):
    x = blocks_under_test()
    imp = importance_for(x) if with_importance else None
    base = kernels.encode(name, x, importance=imp)
    fast = refine(name, x, base, imp)
    slow = refine(name, x, base, imp, reference=True)
    assert np.array_equal(fast, slow)

    w = error_weights(x, imp).astype(np.float64)  # the weights the search scores with
    before = weighted_errors(name, x, base, w)
    after = weighted_errors(name, x, fast, w)
    assert (after <= before).all(), np.flatnonzero(after > before)
    changed = np.flatnonzero((fast != base).any(axis=1))
    assert (after[changed] < before[changed]).all()  # a block is rewritten only for a gain
    n_real = 48
    assert (after[:n_real] < before[:n_real]).sum() >= n_real // 2
    assert after[:n_real].sum() < 0.99 * before[:n_real].sum()
    # the all-zero block stays as llama.cpp wrote it
    assert np.array_equal(fast[n_real], base[n_real])


@pytest.mark.parametrize("name", TYPES)
def test_refined_blocks_decode_in_gguf_py_as_in_ours(name):
    x = blocks_under_test(seed=11)
    imp = importance_for(x)
    q = refine(name, x, kernels.encode(name, x, importance=imp), imp)
    ours = kernels.decode(name, q)
    theirs = dequantize(q.reshape(-1), GGMLQuantizationType[name]).reshape(ours.shape)
    assert np.array_equal(ours.view(np.uint32), theirs.astype(np.float32).view(np.uint32))


def test_other_types_pass_through():
    x = blocks_under_test()[:, :256].reshape(-1, 32)
    q = kernels.encode("Q8_0", x)
    assert refine("Q8_0", x, q) is q
