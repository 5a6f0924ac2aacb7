"""The sized planner's candidate types: every type whose block fits a row (K-quants, the
32-wide legacy types, i-quants, Q8_0, F16), narrowed by --candidates. On widths the
K-quants do not divide (hidden 320, ffn 576) the plan must still choose among the 32-wide
types, and llama.cpp must run what it writes."""

from __future__ import annotations

import os

import numpy as np
import pytest

import qconvert
from qconvert.errors import InputError
from qconvert.eval.llama_model import open_llama

LEGACY = {"Q4_0", "Q4_1", "Q5_0", "Q5_1"}


@pytest.fixture(scope="module")
def narrow(tiny):
    return tiny("llama_narrow")


def test_narrow_widths_choose_32_wide_types_and_run(narrow, tmp_path):
    preset = qconvert.quantize(narrow, tmp_path / "p.gguf", type="Q4_K_M")
    res = qconvert.quantize(narrow, tmp_path / "s.gguf", target_size=os.path.getsize(preset.output),
                            sensitivity_cache=tmp_path / "c.json")
    types = {t.qtype.name for t in res.plan.tensors if ".blk." in "." + t.name}
    # no K-quant fits 320 or 576 columns: every matrix takes a 32-wide type
    assert types and not any(t.endswith("_K") for t in types)
    assert types & (LEGACY | {"IQ4_NL"}), types
    assert os.path.getsize(res.output) <= os.path.getsize(preset.output)
    llm = open_llama(res.output, n_ctx=64, logits_all=True, n_threads=1)
    try:
        llm.eval([1, 5, 9, 33, 2])
        assert np.isfinite(np.array(llm.scores[:5])).all()
    finally:
        llm.close()


def test_candidates_narrow_the_choice(narrow, tmp_path):
    res = qconvert.quantize(narrow, target_bpw=9.0, candidates="k", dry_run=True,
                            sensitivity_cache=tmp_path / "c.json")
    chosen = {t.qtype.name for t in res.plan.tensors if t.reason.startswith("budget")}
    # only K-quants (none fits these widths), Q8_0 and F16 remain
    assert chosen <= {"Q8_0", "F16"}, chosen
    with pytest.raises(qconvert.errors.BudgetError):  # and Q8_0 alone cannot reach 5 bits
        qconvert.quantize(narrow, target_bpw=5.0, candidates="k", dry_run=True, sensitivity_cache=tmp_path / "c.json")
    res = qconvert.quantize(narrow, target_bpw=5.0, candidates="legacy,k", dry_run=True,
                            sensitivity_cache=tmp_path / "c.json")
    chosen = {t.qtype.name for t in res.plan.tensors if t.reason.startswith("budget")}
    assert chosen & LEGACY and not chosen & {"IQ4_NL", "IQ4_XS", "IQ3_S"}, chosen


@pytest.mark.parametrize("bad", ["", " , ", "kq", "k,foo", "IQ4_XS"])
def test_bad_candidates_are_refused(narrow, bad):
    with pytest.raises(InputError, match="--candidates"):
        qconvert.quantize(narrow, target_bpw=5.0, candidates=bad, dry_run=True)


def test_candidates_need_a_target(narrow):
    with pytest.raises(InputError, match="--candidates"):
        qconvert.quantize(narrow, type="Q4_K_M", candidates="k", dry_run=True)


def test_fallback_output_keeps_the_presets_bits_with_statistics(narrow, tmp_path):
    """An output whose width the K-quants do not divide falls back to Q8_0 in Q4_K_M; with
    statistics the sized plan must not trade it down to a 5-6-bit 32-wide type (a tied
    SmolLM-shaped model lost 4.5x the preset's KL when its output went to Q5_1)."""
    preset = qconvert.quantize(narrow, tmp_path / "p.gguf", type="Q4_K_M")
    want = {t.name: t.qtype.name for t in preset.plan.tensors}["output.weight"]
    assert want == "Q8_0"
    res = qconvert.quantize(narrow, tmp_path / "s.gguf", target_size=os.path.getsize(preset.output),
                            calibration=True, calibration_samples=4, calibration_seqlen=32, device="cpu",
                            sensitivity_cache=tmp_path / "c.json")
    got = {t.name: t.qtype.name for t in res.plan.tensors}["output.weight"]
    assert got in ("Q8_0", "F16"), got
    assert os.path.getsize(res.output) <= os.path.getsize(preset.output)
