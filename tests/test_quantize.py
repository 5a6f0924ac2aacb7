"""The quantize command as a user meets it: default names, --force, --dry-run, plans
recorded per tensor, overrides, fallbacks, GGUF input, and files llama.cpp wrote."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

import qconvert
from qconvert.errors import InputError, OutputExistsError, ShapeError

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "qconvert", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env)


def types_of(path: Path) -> dict[str, str]:
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}


def test_bits_4_picks_a_name_and_says_where(tiny, tmp_path):
    model = tiny("llama")
    r = run_cli("quantize", model, "--bits", "4", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / f"{model.name}-Q4_K_M.gguf"
    assert out.exists()
    assert str(out) in r.stderr.replace("\n", "")
    t = types_of(out)
    assert t["blk.0.attn_q.weight"] == "Q4_K" and t["blk.0.attn_norm.weight"] == "F32"
    # a second run refuses to overwrite, and leaves the file alone
    before = out.read_bytes()
    r2 = run_cli("quantize", model, "--bits", "4", cwd=tmp_path)
    assert r2.returncode != 0 and "--force" in r2.stderr and len(r2.stderr.strip().splitlines()) == 1
    assert out.read_bytes() == before
    assert run_cli("quantize", model, "--bits", "4", "--force", cwd=tmp_path).returncode == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary file left behind"


def test_dry_run_prints_plan_and_writes_nothing(tiny, tmp_path):
    model = tiny("qwen2")
    r = run_cli("quantize", model, "--type", "Q3_K_M", "--dry-run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "blk.0.attn_v.weight" in r.stdout and "bits/weight" in r.stdout and "fallbacks: 0" in r.stdout
    assert list(tmp_path.iterdir()) == []


def test_plan_size_equals_file_tensor_bytes(tiny, tmp_path):
    res = qconvert.quantize(tiny("qwen3"), tmp_path / "a.gguf", type="Q5_K_M")
    r = gguf.GGUFReader(res.output)
    assert sum(int(t.n_bytes) for t in r.tensors) == res.plan.nbytes
    assert types_of(res.output) == {t.name: t.qtype.name for t in res.plan.tensors}
    # every tensor records the rule that chose it
    assert all(t.reason for t in res.plan.tensors)


def test_overrides_first_match_wins_and_beat_the_preset(tiny, tmp_path):
    res = qconvert.quantize(tiny("llama"), tmp_path / "o.gguf", type="Q4_K_M",
                            tensor_types=["attn_v=Q8_0", "attn_.*=Q5_K"], output_tensor_type="Q8_0",
                            token_embedding_type="Q4_0")
    t = types_of(res.output)
    assert t["blk.0.attn_v.weight"] == "Q8_0"
    assert t["blk.1.attn_q.weight"] == "Q5_K"
    assert t["output.weight"] == "Q8_0" and t["token_embd.weight"] == "Q4_0"
    assert t["blk.0.ffn_up.weight"] == "Q4_K"


def test_pure_uses_base_type_everywhere(tiny):
    plan = qconvert.quantize(tiny("llama"), type="Q4_K_M", pure=True, dry_run=True).plan
    assert {t.qtype.name for t in plan.tensors if len(t.shape) == 2} == {"Q4_K"}


def test_fallbacks_are_recorded_and_can_be_refused(tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from fixtures.tiny_models import save_tokenizer, train_tokenizer

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=256, intermediate_size=320, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=512, max_position_embeddings=256)
    d = tmp_path / "odd"
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(d)
    save_tokenizer(train_tokenizer(), d)
    plan = qconvert.quantize(d, type="Q4_K_M", dry_run=True).plan
    fb = {t.name: t.fallback for t in plan.fallbacks}
    assert "blk.0.ffn_down.weight" in fb and "320" in fb["blk.0.ffn_down.weight"]
    with pytest.raises(ShapeError, match="ffn_down"):
        qconvert.quantize(d, type="Q4_K_M", dry_run=True, no_fallback=True)
    r = run_cli("quantize", d, "--type", "Q4_K_M", "-o", tmp_path / "x.gguf")
    assert r.returncode == 0 and "fallbacks: 2 tensors" in r.stderr


def test_gguf_input_requantizes_to_the_same_bytes(tiny, tmp_path):
    model = tiny("llama")
    f32 = qconvert.quantize(model, tmp_path / "f32.gguf", type="F32").output
    direct = qconvert.quantize(model, tmp_path / "direct.gguf", type="Q4_K_M").output
    again = qconvert.quantize(f32, tmp_path / "again.gguf", type="Q4_K_M").output
    a, b = gguf.GGUFReader(direct), gguf.GGUFReader(again)
    for ta, tb in zip(a.tensors, b.tensors):
        assert ta.name == tb.name and ta.tensor_type == tb.tensor_type
        assert np.array_equal(np.asarray(ta.data), np.asarray(tb.data)), ta.name
    assert b.fields["tokenizer.ggml.model"].contents() == a.fields["tokenizer.ggml.model"].contents()
    assert b.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q4_K_M


def test_quantized_gguf_input_needs_allow_requantize(tiny, tmp_path):
    q = qconvert.quantize(tiny("llama"), tmp_path / "q.gguf", type="Q8_0").output
    with pytest.raises(InputError, match="allow-requantize"):
        qconvert.quantize(q, tmp_path / "r.gguf", type="Q4_K_M")
    out = qconvert.quantize(q, tmp_path / "r.gguf", type="Q4_K_M", allow_requantize=True).output
    assert types_of(out)["blk.0.attn_q.weight"] == "Q4_K"


def test_existing_output_refused(tiny, tmp_path):
    out = tmp_path / "x.gguf"
    out.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError):
        qconvert.quantize(tiny("llama"), out, type="Q8_0")
    assert out.read_bytes() == b"keep me"


def test_inspect_reads_a_gguf_llama_cpp_wrote(tiny, tmp_path):
    import llama_cpp

    src = qconvert.quantize(tiny("llama"), tmp_path / "in.gguf", type="F16").output
    dst = tmp_path / "by-llama.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    params.nthread = 2
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) == 0
    rep = qconvert.inspect(dst).to_dict()
    reader = gguf.GGUFReader(dst)
    assert {t["name"] for t in rep["tensors"]} == {t.name for t in reader.tensors}
    assert set(rep["metadata"]) == set(reader.fields)
    r = run_cli("inspect", dst)
    assert r.returncode == 0 and "Q4_K" in r.stdout


def test_estimate_memory_costs_presets_by_the_real_plan(tiny, tmp_path):
    d = tiny("qwen3")
    rows = {r.name: r for r in qconvert.estimate_memory(model_dir=d).rows}
    for preset in ("Q4_K_M", "Q3_K_M", "Q8_0"):
        written = qconvert.quantize(d, tmp_path / f"{preset}.gguf", type=preset).output
        tensor_bytes = sum(int(t.n_bytes) for t in gguf.GGUFReader(written).tensors)
        assert abs(rows[preset].weight_bytes - tensor_bytes) <= 0.005 * tensor_bytes, preset
