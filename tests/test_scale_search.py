"""`--scale-search thorough` end to end: every K-quant tensor of the file is at least as
close to the weights as llama.cpp's (under the search's weights), other tensors are
llama.cpp's bytes, llama.cpp runs the file; importance statistics and GPTQ reach it;
bad values and routes without K-quant scales are refused."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize

import qconvert
from qconvert.cli.app import run
from qconvert.kernels.scale_refine import REFINABLE, error_weights
from qconvert.schemes.importance import importance_for, load_importance
from test_calibrated_fallbacks import CAL, runs_in_llama_cpp


def tensors(path):
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def weighted_error(t, x, imp=None) -> float:
    y = dequantize(np.asarray(t.data), t.tensor_type).astype(np.float64).reshape(-1, 256)
    x = x.reshape(-1, 256)
    if imp is not None:
        imp = np.broadcast_to(np.asarray(imp, np.float32), (x.size // imp.shape[-1], imp.shape[-1])).reshape(x.shape)
    return float(((y - x) ** 2 * error_weights(x, imp)).sum())


@pytest.fixture(scope="module")
def llama(tiny):
    return tiny("llama")


@pytest.fixture(scope="module")
def f32_weights(llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("f32") / "f32.gguf"
    qconvert.quantize(llama, out, type="F32")
    return {t.name: np.array(t.data, dtype=np.float32) for t in gguf.GGUFReader(out).tensors}


def compare(default, thorough, f32, imx=None) -> int:
    """Assert the thorough file's K-quant tensors are no worse, the rest equal; return how
    many K-quant tensors it changed."""
    a, b = tensors(default), tensors(thorough)
    assert list(a) == list(b)
    changed = 0
    for name, ta in a.items():
        tb = b[name]
        assert ta.tensor_type == tb.tensor_type, name
        same = np.array_equal(np.asarray(ta.data), np.asarray(tb.data))
        if ta.tensor_type.name not in REFINABLE:
            assert same, name
            continue
        imp = None if imx is None else importance_for(imx, name)
        assert weighted_error(tb, f32[name], imp) <= weighted_error(ta, f32[name], imp), name
        changed += not same
    return changed


def test_thorough_is_never_worse_than_llama_cpp_and_runs(llama, f32_weights, tmp_path):
    default, thorough = tmp_path / "llama.gguf", tmp_path / "thorough.gguf"
    qconvert.quantize(llama, default, type="Q3_K_M")
    assert run(["quantize", str(llama), "-o", str(thorough), "-t", "Q3_K_M", "--scale-search", "thorough"]) == 0
    assert compare(default, thorough, f32_weights) >= 5
    runs_in_llama_cpp(thorough)
    # the default is llama.cpp's search: naming it changes nothing
    named = tmp_path / "named.gguf"
    qconvert.quantize(llama, named, type="Q3_K_M", scale_search="llama")
    assert named.read_bytes() == default.read_bytes()


def test_thorough_with_importance_statistics(llama, f32_weights, tmp_path):
    imx_path = tmp_path / "imx.gguf"
    default, thorough = tmp_path / "llama.gguf", tmp_path / "thorough.gguf"
    assert run(["quantize", str(llama), "-o", str(default), "-t", "Q4_K_M", *CAL, "--save-imatrix", str(imx_path)]) == 0
    assert run(["quantize", str(llama), "-o", str(thorough), "-t", "Q4_K_M", "--imatrix", str(imx_path),
                "--scale-search", "thorough"]) == 0
    assert compare(default, thorough, f32_weights, load_importance(imx_path)) >= 5
    runs_in_llama_cpp(thorough)


def test_gptq_imatrix_refines_the_block_scales(llama, tmp_path, monkeypatch):
    from qconvert.schemes import gptq_grid

    seen = []
    real = gptq_grid.refine

    def spy(name, x, blocks, importance=None, **kw):
        seen.append((name, importance is not None))
        return real(name, x, blocks, importance, **kw)

    monkeypatch.setattr(gptq_grid, "refine", spy)
    out = tmp_path / "gptq.gguf"
    qconvert.quantize(llama, out, type="Q4_K_M", scheme="gptq-imatrix", scale_search="thorough", calibration=True,
                      calibration_samples=4, calibration_seqlen=64, device="cpu")
    assert {n for n, _ in seen} >= {"Q4_K", "Q6_K"} and all(has_imp for _, has_imp in seen)
    runs_in_llama_cpp(out)


def test_scale_search_refusals(llama, tmp_path, capsys):
    assert run(["quantize", str(llama), "-o", str(tmp_path / "a.gguf"), "--scale-search", "fast"]) == 2
    assert "--scale-search fast: choose llama or thorough" in capsys.readouterr().err
    assert run(["quantize", str(llama), "-o", str(tmp_path / "st"), "--format", "safetensors",
                "--scale-search", "thorough"]) == 2
    assert "--scale-search" in capsys.readouterr().err
