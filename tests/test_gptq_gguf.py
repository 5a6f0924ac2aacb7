"""GPTQ on GGUF block grids through the whole pipeline: a calibration pass, error
feedback per decoder linear, a GGUF llama.cpp loads and runs."""

from __future__ import annotations

import gguf
import numpy as np

import qconvert


def test_gptq_gguf_runs_in_llama_cpp_and_beats_rtn_on_layer_error(tiny, tmp_path):
    from qconvert.eval.llama_model import open_llama

    model = tiny("llama")
    res = qconvert.quantize(model, tmp_path / "g.gguf", type="Q4_K_M", scheme="gptq",
                            calibration_samples=8, calibration_seqlen=64, device="cpu")
    schemes = {t.name: t.scheme for t in res.plan.tensors}
    assert schemes["blk.0.attn_q.weight"] == "gptq" and schemes["token_embd.weight"] == "rtn"
    assert len(res.stats) >= 14
    ratios = [v["err"] / v["rtn_err"] for v in res.stats.values()]
    assert np.mean(ratios) < 1.0, ratios
    # the file is a normal GGUF of the planned types, and llama.cpp runs it
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(res.output).tensors}
    assert types == {t.name: t.qtype.name for t in res.plan.tensors}
    llm = open_llama(res.output, n_ctx=64, logits_all=True, n_threads=2)
    llm.eval([1, 50, 60, 70, 80])
    logits = np.asarray(llm.scores[:5])
    assert np.isfinite(logits).all() and logits.std() > 0


def test_gptq_dry_run_marks_the_plan_without_calibrating(tiny):
    res = qconvert.quantize(tiny("qwen3"), type="Q3_K_M", scheme="gptq", dry_run=True)
    by = {t.name: t for t in res.plan.tensors}
    assert by["blk.0.ffn_up.weight"].scheme in ("gptq", "importance")
    assert {t.scheme for t in res.plan.tensors if t.qtype.name == "Q3_K" and t.name.startswith("blk.")} == {"gptq"}
    assert any("calibration not run" in n for n in res.notes)
