"""`--format safetensors` on widths the group size does not divide (hidden 320, ffn 576,
as real small models have): every projection is still quantized, with the largest halved
group that divides its width, transformers loads the mixed-group checkpoint (in a process
that never imports qconvert) and decodes exactly our weights; tensors kept dense are
written in the model's dtype, not the float32 a checkpoint may store them in."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import qconvert
from qconvert.errors import InputError
from qconvert.sink.safetensors_out import fit_group_size, read_dequantized
from test_safetensors_out import IDS, LOADER, Reference


def test_fit_group_size():
    assert fit_group_size(576, 128) == 64 and fit_group_size(320, 128) == 64 and fit_group_size(1024, 128) == 128
    assert fit_group_size(96, 128) == -1  # wider than the row: one scale per channel
    assert fit_group_size(100, 64) == -1 and fit_group_size(576, -1) == -1 and fit_group_size(48, 32) == 16


def _load_in_transformers(tmp_path, models: dict) -> dict:
    (tmp_path / "load.py").write_text(LOADER)
    (tmp_path / "spec.json").write_text(json.dumps({"ids": IDS, "models": {k: str(v) for k, v in models.items()}}))
    env = dict(os.environ, TQDM_DISABLE="1")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, str(tmp_path / "load.py"), str(tmp_path / "spec.json"),
                           str(tmp_path / "res.pt")], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(tmp_path / "res.pt")


def _float32_copy(src, dst):
    """The checkpoint with every tensor stored as float32 while config.json still says
    bfloat16 (how some small models ship)."""
    dst.mkdir()
    for f in src.iterdir():
        if f.suffix == ".safetensors":
            save_file({k: v.float() for k, v in load_file(f).items()}, dst / f.name, metadata={"format": "pt"})
        elif f.is_file():
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_narrow_widths_are_all_quantized_and_load(tiny, tmp_path):
    src = tiny("llama_narrow")
    res = qconvert.quantize(src, tmp_path / "q", format="safetensors", bits=4, group_size=128)
    out = res.output
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    groups = qc["config_groups"]
    assert groups["group_0"]["weights"]["group_size"] == 128
    assert groups["group_1"]["weights"]["group_size"] == 64
    # hidden 320 and ffn 576 are multiples of 64, not of 128: all 14 projections take groups of 64
    assert len(groups["group_1"]["targets"]) == 14 and qc["ignore"] == ["lm_head"]
    assert any("use groups of 64" in n for n in res.notes)
    ours = {k: torch.from_numpy(v) for k, v in read_dequantized(out).items()}
    assert len(ours) == 14
    loaded = _load_in_transformers(tmp_path, {"q": out})["q"]
    for k, w in loaded["weights"].items():
        assert torch.equal(w.float(), ours[k].to(w.dtype).float()), k
    assert torch.allclose(loaded["logits"], Reference(src).logits(ours), atol=1e-3)


def test_no_fallback_is_an_error(tiny, tmp_path):
    with pytest.raises(InputError, match="--group-size 128"):
        qconvert.quantize(tiny("llama_narrow"), tmp_path / "q", format="safetensors", bits=4, group_size=128,
                          no_fallback=True)
    assert not (tmp_path / "q").exists()


def test_dense_tensors_in_the_models_dtype(tiny, tmp_path):
    src = tiny("llama_narrow")
    f32 = _float32_copy(src, tmp_path / "f32")
    assert json.loads((f32 / "config.json").read_text()).get("dtype", "bfloat16") in ("bfloat16", "torch.bfloat16")
    out = qconvert.quantize(f32, tmp_path / "q", format="safetensors", bits=4, group_size=128).output
    stored = {}
    for f in out.glob("*.safetensors"):
        stored.update(load_file(f))
    dense = {k: v for k, v in stored.items() if v.is_floating_point() and not k.endswith("weight_scale")}
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} <= set(dense)
    assert {v.dtype for v in dense.values()} == {torch.bfloat16}
    original = {}
    for f in src.glob("*.safetensors"):
        original.update(load_file(f))
    for k, v in dense.items():  # bf16 -> f32 -> bf16 is exact
        assert torch.equal(v, original[k]), k
    bf16_bytes = sum(f.stat().st_size for f in src.glob("*.safetensors"))
    q_bytes = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    assert q_bytes <= 0.45 * bf16_bytes, (q_bytes, bf16_bytes)
    _load_in_transformers(tmp_path, {"q": out})


def test_gptq_on_narrow_widths(tiny, tmp_path):
    src = tiny("llama_narrow")
    res = qconvert.quantize(src, tmp_path / "g", format="safetensors", bits=4, group_size=128, scheme="gptq",
                            calibration_samples=4, calibration_seqlen=64, device="cpu")
    ratios = [v["err"] / v["rtn_err"] for v in res.stats.values()]
    assert len(ratios) == 14 and sum(ratios) / len(ratios) < 1.0  # GPTQ beats rounding on its own grid
    ours = {k: torch.from_numpy(v) for k, v in read_dequantized(res.output).items()}
    loaded = _load_in_transformers(tmp_path, {"g": res.output})["g"]
    for k, w in loaded["weights"].items():
        assert torch.equal(w.float(), ours[k].to(w.dtype).float()), k
