"""Calibrated routes on a checkpoint whose widths are not multiples of 256 (hidden 320,
ffn 576): a K-quant preset falls back to Q5_0 / Q8_0 on nearly every tensor, and those
fallbacks must get the statistics too. Before, `--scheme gptq` died with "TypeError: too
many arguments" (Q5_0's encoder was handed importance) and `--calibration` wrote Q5_0
rounded plainly, unlike llama.cpp with the same imatrix."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

import qconvert
from ggml_oracle import ggml_quantize
from qconvert.cli.app import run
from qconvert.errors import InputError

CAL = ["--calibration", "default", "--calibration-samples", "4", "--calibration-seqlen", "64", "--device", "cpu"]


@pytest.fixture(scope="module")
def narrow(tiny):
    return tiny("llama_narrow")


@pytest.fixture(scope="module")
def f32_weights(narrow, tmp_path_factory):
    """The weights in llama.cpp's order (q/k rows permuted), as the quantizer sees them."""
    out = tmp_path_factory.mktemp("f32") / "f32.gguf"
    qconvert.quantize(narrow, out, type="F32")
    return {t.name: np.array(t.data, dtype=np.float32) for t in gguf.GGUFReader(out).tensors}


def tensors(path):
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def runs_in_llama_cpp(path) -> None:
    from qconvert.eval.llama_model import open_llama

    llm = open_llama(path, n_ctx=64, logits_all=True, n_threads=2)
    llm.eval([1, 50, 60, 70, 80])
    logits = np.asarray(llm.scores[:5])
    assert np.isfinite(logits).all() and logits.std() > 0


def test_importance_reaches_fallback_types_and_equals_llama_cpp(narrow, f32_weights, tmp_path):
    from qconvert.calib.imatrix import ImportanceMatrix

    out, imx_path = tmp_path / "cal.gguf", tmp_path / "imatrix.dat"  # llama.cpp's legacy format
    assert run(["quantize", str(narrow), "-o", str(out), "-t", "Q4_K_M", *CAL, "--save-imatrix", str(imx_path)]) == 0
    got = tensors(out)
    types = {n: t.tensor_type.name for n, t in got.items()}
    fallback = [n for n, t in types.items() if t == "Q5_0" and n.startswith("blk.")]
    assert len(fallback) >= 8 and "Q8_0" in types.values()
    imx = ImportanceMatrix.load(imx_path)
    checked = 0
    for name, t in got.items():
        stats = imx.get(name)
        if t.tensor_type.name not in ("Q5_0", "Q4_K", "Q6_K") or stats is None:
            continue
        w = f32_weights[name].reshape(-1, stats.shape[0])
        want = ggml_quantize(t.tensor_type.name, w, stats)
        assert np.array_equal(np.asarray(t.data).reshape(-1), want.reshape(-1)), name
        if t.tensor_type.name == "Q5_0":
            assert not np.array_equal(want, ggml_quantize("Q5_0", w)), f"{name}: importance changed nothing"
        checked += 1
    assert checked >= len(fallback)
    runs_in_llama_cpp(out)

    # the saved llama.cpp-format statistics given back with --imatrix: the same bytes
    again = tmp_path / "imx.gguf"
    assert run(["quantize", str(narrow), "-o", str(again), "-t", "Q4_K_M", "--imatrix", str(imx_path)]) == 0
    for name, t in tensors(again).items():
        assert np.array_equal(np.asarray(t.data), np.asarray(got[name].data)), name


def test_gptq_runs_on_fallback_grids(narrow, f32_weights, tmp_path):
    out = tmp_path / "gptq.gguf"
    res = qconvert.quantize(narrow, out, type="Q4_K_M", scheme="gptq", calibration_samples=4,
                            calibration_seqlen=64, device="cpu")
    by = {t.name: t for t in res.plan.tensors}
    fallback = [n for n, t in by.items() if t.qtype.name == "Q5_0" and n.startswith("blk.")]
    assert fallback and all(by[n].scheme == "gptq" for n in fallback)
    assert {by[n].scheme for n in by if by[n].qtype.name == "Q8_0" and n.startswith("blk.")} == {"gptq"}
    assert set(fallback) <= set(res.stats)
    assert np.mean([res.stats[n]["err"] / res.stats[n]["rtn_err"] for n in fallback]) < 1.0
    got = tensors(out)
    for n in fallback:  # error feedback moved codes off round-to-nearest
        plain = ggml_quantize("Q5_0", f32_weights[n].reshape(-1, by[n].shape[-1]))
        assert not np.array_equal(np.asarray(got[n].data).reshape(-1), plain.reshape(-1)), n
    runs_in_llama_cpp(out)
    # and through the command line, as the issue ran it
    assert run(["quantize", str(narrow), "-o", str(tmp_path / "cli.gguf"), "-t", "Q4_K_M", "--scheme", "gptq",
                *CAL]) == 0


def test_sized_plan_solved_with_gptq(narrow, tmp_path):
    """--target-size with --scheme gptq-imatrix: the sized route's types (measured with the
    same statistics), the decoder linears solved by GPTQ on them, the file exactly the
    budget; tensors GPTQ leaves alone are the sized route's bytes."""
    from qconvert.calib.collect import collect_importance

    imx = tmp_path / "imatrix.gguf"
    collect_importance(narrow, n_samples=4, seqlen=64, device="cpu", show_progress=False).save(imx)
    preset = qconvert.quantize(narrow, tmp_path / "preset.gguf", type="Q4_K_M", imatrix=imx)
    budget = preset.file_size
    common = dict(target_size=budget, imatrix=imx, sensitivity_cache=tmp_path / "cache.json")
    rtn = qconvert.quantize(narrow, tmp_path / "sized.gguf", **common)
    res = qconvert.quantize(narrow, tmp_path / "sized-gptq.gguf", scheme="gptq-imatrix", calibration_samples=4,
                            calibration_seqlen=64, device="cpu", **common)
    assert res.file_size == rtn.file_size <= budget
    want = {t.name: t.qtype.name for t in rtn.plan.tensors}
    assert {t.name: t.qtype.name for t in res.plan.tensors} == want
    solved = [t.name for t in res.plan.tensors if t.scheme == "gptq"]
    assert len(solved) >= 10 and set(solved) <= set(res.stats)
    assert np.mean([res.stats[n]["err"] / res.stats[n]["rtn_err"] for n in solved]) < 1.0
    a, b = tensors(rtn.output), tensors(res.output)
    moved = [n for n in solved if not np.array_equal(np.asarray(a[n].data), np.asarray(b[n].data))]
    assert len(moved) == len(solved)
    for n in set(a) - set(solved):
        assert np.array_equal(np.asarray(a[n].data), np.asarray(b[n].data)), n
    runs_in_llama_cpp(res.output)
    # awq has no sized route: still refused in one line before any work
    with pytest.raises(InputError, match="--scheme"):
        qconvert.quantize(narrow, tmp_path / "awq.gguf", scheme="awq", **common)


def test_sized_gptq_route_options():
    """What --target-size with --scheme gptq consumes: the sized route's options, GPTQ's
    damping and the calibration pass's; a preset's type choices stay refused."""
    from pathlib import Path

    from qconvert.job import build_job
    from qconvert.routes import route_for

    example = Path(__file__).resolve().parents[1] / "examples" / "tiny-llama"
    base = dict(target_size="1GB", scheme="gptq")
    for kw in ({"damp": 0.02}, {"calibration": True, "calibration_samples": 8, "device": "cpu"},
               {"imatrix": "x.gguf", "calibration_seqlen": 64}, {"candidates": "legacy"},
               {"sensitivity_cache": "c.json"}):
        assert route_for(build_job(example, **base, **kw)).name == "gguf-sized-gptq", kw
    for kw in ({"type": "Q4_K_M"}, {"tensor_types": ["attn_v=Q8_0"]}, {"group_size": 64}):
        with pytest.raises(InputError, match="not used by a sized GGUF plan solved with --scheme gptq"):
            route_for(build_job(example, **base, **kw))
