"""--scheme awq, awq+gptq and gptq-imatrix end to end: on llama_narrow (hidden 320, ffn 576:
K-quant presets fall back to Q5_0 / Q8_0, safetensors groups fall back) and on the example
model. The folded float model must be the same function as the original (transformers),
llama.cpp must run the GGUF files, transformers must load the safetensors output (in a
process that never imports qconvert) and decode exactly our weights, and on the example
model AWQ and GPTQ-imatrix must beat plain rounding's KL as llama.cpp measures it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

import qconvert
from qconvert.cli.app import run
from qconvert.errors import UnsupportedError
from test_calibrated_fallbacks import runs_in_llama_cpp
from test_safetensors_out import IDS, LOADER

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny-llama"
CAL = ["--calibration-samples", "4", "--calibration-seqlen", "64", "--device", "cpu"]
CAL_KW = dict(calibration_samples=4, calibration_seqlen=64, device="cpu")


@pytest.fixture(scope="module")
def narrow(tiny):
    return tiny("llama_narrow")


def logits_of(model_dir, ids) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor(ids)).logits


def test_folded_model_is_the_same_function(narrow, tmp_path):
    from safetensors.torch import load_file

    from qconvert.schemes.awq_driver import gguf_quantizer, run_awq

    folded = run_awq(narrow, tmp_path, lambda name: gguf_quantizer("Q5_0"), n_samples=4, seqlen=64,
                     device="cpu", progress=False)
    assert folded.model_dir.parent == tmp_path and folded.model_dir.name == narrow.name
    # every layer's norm -> q/k/v and norm -> gate/up, and up -> down (v -> o: 1 kv head of 5, no)
    assert len(folded.stats) == 3 * 2 and all(v["err"] <= v["rtn_err"] for v in folded.stats.values())
    assert any(v["alpha"] > 0 for v in folded.stats.values())
    ours = load_file(folded.model_dir / "layer-00000.safetensors")
    orig = logits_of(narrow, IDS)
    from transformers import AutoModelForCausalLM

    norm = AutoModelForCausalLM.from_pretrained(narrow, dtype=torch.float32).model.layers[0].input_layernorm.weight
    assert not torch.allclose(ours["model.layers.0.input_layernorm.weight"], norm)  # scales were folded
    got = logits_of(folded.model_dir, IDS)
    assert torch.allclose(got, orig, atol=1e-4 * float(orig.abs().max())), float((got - orig).abs().max())


@pytest.mark.parametrize("scheme", ["awq", "gptq-imatrix", "awq+gptq"])
def test_gguf_schemes_run_on_fallback_grids(narrow, tmp_path, scheme):
    out = tmp_path / f"{scheme}.gguf"
    assert run(["quantize", str(narrow), "-o", str(out), "-t", "Q4_K_M", "--scheme", scheme, *CAL]) == 0
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(out).tensors}
    assert "Q5_0" in types.values() and "Q8_0" in types.values()
    runs_in_llama_cpp(out)
    plain = tmp_path / "plain.gguf"
    qconvert.quantize(narrow, plain, type="Q4_K_M")
    theirs = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(plain).tensors}
    changed = [t.name for t in gguf.GGUFReader(out).tensors
               if t.name.startswith("blk.") and not np.array_equal(np.asarray(t.data), theirs[t.name])]
    assert len(changed) >= 5 * 2  # every layer's linears, the norms AWQ folds into


def test_gptq_imatrix_differs_from_gptq(narrow, tmp_path):
    kw = dict(type="Q4_K_M", **CAL_KW)
    a = qconvert.quantize(narrow, tmp_path / "g.gguf", scheme="gptq", **kw).output
    b = qconvert.quantize(narrow, tmp_path / "gi.gguf", scheme="gptq-imatrix", **kw).output
    ta = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(a).tensors}
    diff = [t.name for t in gguf.GGUFReader(b).tensors if not np.array_equal(np.asarray(t.data), ta[t.name])]
    assert any(n.endswith("attn_q.weight") for n in diff)


@pytest.mark.parametrize("scheme", ["awq", "awq+gptq"])
def test_awq_safetensors_loads_in_transformers(narrow, tmp_path, scheme):
    from safetensors.torch import load_file

    from qconvert.sink.safetensors_out import read_dequantized
    from test_safetensors_out import Reference

    res = qconvert.quantize(narrow, tmp_path / "awq", format="safetensors", bits=4, group_size=128, scheme=scheme,
                            **CAL_KW)
    assert ("GPTQ on 14 tensors" in " ".join(res.notes)) == (scheme == "awq+gptq")
    out = res.output
    (tmp_path / "load.py").write_text(LOADER)
    (tmp_path / "spec.json").write_text(json.dumps({"ids": IDS, "models": {"awq": str(out)}}))
    env = dict(os.environ, TQDM_DISABLE="1")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, str(tmp_path / "load.py"), str(tmp_path / "spec.json"),
                           str(tmp_path / "res.pt")], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = torch.load(tmp_path / "res.pt")["awq"]
    ours = {k: torch.from_numpy(v) for k, v in read_dequantized(out).items()}
    for k, w in loaded["weights"].items():
        assert torch.equal(w.float(), ours[k].to(w.dtype).float()), k
    dense = {}
    for f in out.glob("*.safetensors"):
        dense.update({k: v for k, v in load_file(f).items() if k.endswith("norm.weight")})
    ref = Reference(narrow)
    assert not torch.equal(dense["model.layers.0.input_layernorm.weight"],
                           ref.pristine["model.layers.0.input_layernorm.weight"])  # folded
    assert torch.allclose(loaded["logits"], ref.logits({**ours, **dense}), atol=1e-3)


def test_awq_gptq_solves_the_folded_model(narrow, tmp_path):
    """awq+gptq folds the scales awq folds (same windows, same search grids), then GPTQ
    rounds the folded linears: norms equal to awq's file, linears unlike it."""
    kw = dict(type="Q4_K_M", **CAL_KW)
    a = qconvert.quantize(narrow, tmp_path / "a.gguf", scheme="awq", **kw).output
    res = qconvert.quantize(narrow, tmp_path / "ag.gguf", scheme="awq+gptq", **kw)
    plain = qconvert.quantize(narrow, tmp_path / "p.gguf", type="Q4_K_M").output
    ta, tp = ({t.name: np.asarray(t.data) for t in gguf.GGUFReader(f).tensors} for f in (a, plain))
    tag = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(res.output).tensors}
    for n in ("blk.0.attn_norm.weight", "blk.1.ffn_norm.weight"):
        assert np.array_equal(tag[n], ta[n]) and not np.array_equal(tag[n], tp[n]), n
    assert not np.array_equal(tag["blk.0.attn_q.weight"], ta["blk.0.attn_q.weight"])
    notes = " ".join(res.notes)
    assert "AWQ scales on 6 groups" in notes and "GPTQ on 14 tensors" in notes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gguf", "ag.gguf", "p.gguf"]  # scratch removed


def test_awq_gptq_imatrix_is_gguf_only(narrow, tmp_path):
    from qconvert.errors import InputError

    with pytest.raises(InputError, match="awq\\+gptq-imatrix: int-N group grids"):
        qconvert.quantize(narrow, tmp_path / "s", format="safetensors", scheme="awq+gptq-imatrix")
    with pytest.raises(InputError, match="--act-order: not used by GGUF output with --scheme awq\\+gptq"):
        qconvert.quantize(narrow, tmp_path / "g.gguf", type="Q4_K_M", scheme="awq+gptq", act_order=True, **CAL_KW)


def test_clipping_lowers_the_group_error_on_an_int_grid():
    from qconvert.schemes.awq import clip_weights
    from qconvert.schemes.awq_driver import int_quantizer

    g = torch.Generator().manual_seed(0)
    W = torch.randn(24, 256, generator=g)
    W[:, 7] *= 8  # an outlier column stretches every row's first group
    X = torch.randn(512, 256, generator=g)
    H = (X.T @ X).double()
    q = int_quantizer(4, 128, True, torch.bfloat16)
    clipped, err, plain = clip_weights(W, H, q, 128)
    assert err < 0.9 * plain
    changed = (clipped != W).any(dim=1)
    assert changed.any() and (clipped.abs() <= W.abs()).all()  # clamped, never enlarged
    D = lambda A: (W - torch.from_numpy(q(A.numpy(), None))).double()  # noqa: E731 (the error is W's)
    block = lambda A: sum(float(((D(A)[:, a:a + 128] @ H[a:a + 128, a:a + 128]) * D(A)[:, a:a + 128]).sum())  # noqa: E731
                          for a in (0, 128))
    assert abs(block(W) - plain) <= 1e-6 * plain and abs(block(clipped) - err) <= 1e-6 * plain


def test_gemma_norms_are_refused(tiny, tmp_path):
    with pytest.raises(UnsupportedError, match="awq.*1 \\+ w"):
        qconvert.quantize(tiny("gemma3"), tmp_path / "g.gguf", type="Q4_K_M", scheme="awq", **CAL_KW)
    assert not (tmp_path / "g.gguf").exists()


def test_awq_and_gptq_imatrix_beat_rtn_on_the_example_model(tmp_path):
    """KL against the F16 file, measured by llama.cpp on the held-out evaluation split."""
    from qconvert.eval.comparison import evaluate

    kw = dict(type="Q4_K_M", calibration_samples=32, calibration_seqlen=256, device="cpu")
    files = [qconvert.quantize(EXAMPLE, tmp_path / "rtn.gguf", type="Q4_K_M").output,
             qconvert.quantize(EXAMPLE, tmp_path / "awq.gguf", scheme="awq", **kw).output,
             qconvert.quantize(EXAMPLE, tmp_path / "gi.gguf", scheme="gptq-imatrix", **kw).output]
    ref = qconvert.quantize(EXAMPLE, tmp_path / "f16.gguf", type="F16").output
    cmp = evaluate(files, ref, n_ctx=256, max_windows=16, threads=2)
    kl = [r.metrics.mean_kl for r in cmp.rows]
    assert kl[1] < 0.97 * kl[0] and kl[2] < 0.85 * kl[0], kl
