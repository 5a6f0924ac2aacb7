"""`quantize --format safetensors` end to end: RTN and GPTQ (with a real calibration pass)
checkpoints that transformers loads in a process that never imports qconvert, decoding to
exactly the weights qconvert computed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

import qconvert
from qconvert.sink.safetensors_out import read_dequantized
from test_safetensors_out import IDS, LOADER, Reference


def test_rtn_and_gptq_checkpoints_load_in_transformers(tiny, tmp_path):
    src = tiny("qwen3")
    outs = {
        "rtn": qconvert.quantize(src, tmp_path / "rtn", format="safetensors", bits=4, group_size=64).output,
        "gptq": None,
    }
    res = qconvert.quantize(src, tmp_path / "gptq", format="safetensors", bits=4, group_size=64, scheme="gptq",
                            act_order=True, calibration_samples=8, calibration_seqlen=64, device="cpu")
    outs["gptq"] = res.output
    ratios = [v["err"] / v["rtn_err"] for v in res.stats.values()]
    assert len(ratios) == 14 and sum(ratios) / len(ratios) < 1.0
    (tmp_path / "load.py").write_text(LOADER)
    (tmp_path / "spec.json").write_text(json.dumps({"ids": IDS, "models": {k: str(v) for k, v in outs.items()}}))
    env = dict(os.environ, TQDM_DISABLE="1")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, str(tmp_path / "load.py"), str(tmp_path / "spec.json"),
                           str(tmp_path / "res.pt")], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = torch.load(tmp_path / "res.pt")
    ref = Reference(src)
    for name, out in outs.items():
        ours = {k: torch.from_numpy(v) for k, v in read_dequantized(out).items()}
        for k, w in loaded[name]["weights"].items():
            assert torch.equal(w.float(), ours[k].to(w.dtype).float()), (name, k)
        want = ref.logits(ours)
        assert torch.allclose(loaded[name]["logits"], want, atol=1e-3), name
    assert (loaded["gptq"]["weights"]["model.layers.0.self_attn.q_proj.weight"]
            != loaded["rtn"]["weights"]["model.layers.0.self_attn.q_proj.weight"]).any()
