"""Importance-weighted K-quants through the whole pipeline: statistics collected by our
calibration pass, saved in llama.cpp's imatrix format, used by `quantize --imatrix`; every
K-quant tensor equals llama.cpp's own quantizer given the same weights and statistics."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

import qconvert
from ggml_oracle import ggml_quantize


@pytest.fixture(scope="module")
def imatrix_file(tiny, tmp_path_factory):
    from qconvert.calib.collect import collect_importance

    path = tmp_path_factory.mktemp("imx") / "imatrix.gguf"
    collect_importance(tiny("llama"), n_samples=4, seqlen=64, device="cpu", show_progress=False).save(path)
    return path


def test_imatrix_quantize_matches_llama_cpp(tiny, imatrix_file, tmp_path):
    from qconvert.calib.imatrix import ImportanceMatrix

    model = tiny("llama")
    f32 = gguf.GGUFReader(qconvert.quantize(model, tmp_path / "f32.gguf", type="F32").output)
    weights = {t.name: np.array(t.data, dtype=np.float32) for t in f32.tensors}
    res = qconvert.quantize(model, tmp_path / "q.gguf", type="Q3_K_M", imatrix=imatrix_file)
    imx = ImportanceMatrix.load(imatrix_file)
    marked = [t for t in res.plan.tensors if t.scheme == "importance"]
    assert len(marked) >= 14  # every decoder linear
    out = {t.name: t for t in gguf.GGUFReader(res.output).tensors}
    for tp in marked:
        want = ggml_quantize(tp.qtype.name, weights[tp.name].reshape(-1, tp.shape[-1]), imx.get(tp.name))
        assert np.array_equal(np.asarray(out[tp.name].data).reshape(-1), want.reshape(-1)), tp.name
        plain = ggml_quantize(tp.qtype.name, weights[tp.name].reshape(-1, tp.shape[-1]))
        assert not np.array_equal(plain.reshape(-1), want.reshape(-1)), f"{tp.name}: importance changed nothing"


def test_imatrix_of_another_model_is_refused(tiny, imatrix_file):
    from qconvert.errors import ShapeError

    with pytest.raises(ShapeError, match="imatrix"):
        qconvert.quantize(tiny("qwen3"), type="Q4_K_M", imatrix=imatrix_file, dry_run=True)
