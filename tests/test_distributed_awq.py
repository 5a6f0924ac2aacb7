"""--scheme awq and awq+gptq under torchrun (two gloo ranks on CPU) against one process on
the same windows: AWQ's input sums are all-reduced per layer, rank 0 searches the scales and
broadcasts them, every rank folds them, rank 0 alone writes. The windows are two batches of
8, one per rank, so each batch's sums come from the same inputs in both runs and the files
come out byte for byte equal (see test_distributed.py for the launcher)."""

from __future__ import annotations

import os

import torch

import qconvert
from qconvert.calib.world import World
from qconvert.schemes.awq_driver import _searched, _Sums, _unite
from test_distributed import CAL, CAL_ARGS, MODEL, dirs, one_thread, text, torchrun  # noqa: F401 (fixtures)


def test_two_ranks_write_the_awq_gguf_of_one_process(text, tmp_path, one_thread):  # noqa: F811
    one, two = dirs(tmp_path)
    res = qconvert.quantize(MODEL, one / "a.gguf", type="Q4_K_M", scheme="awq", calibration=text, device="cpu",
                            **CAL)
    p = torchrun(["-t", "Q4_K_M", "--scheme", "awq", "--calibration", str(text), "-o", "a.gguf", *CAL_ARGS], two)
    assert p.returncode == 0, p.stderr[-3000:]
    assert any(n.startswith("AWQ scales on") for n in res.notes)
    assert (two / "a.gguf").read_bytes() == (one / "a.gguf").read_bytes()
    # rank 0 alone wrote, its scratch (the folded checkpoint) is gone, one summary
    assert sorted(os.listdir(two)) == ["a.gguf"]
    assert (p.stdout + p.stderr).count("wrote ") == 1


def test_two_ranks_write_the_awq_gptq_safetensors_of_one_process(tmp_path, one_thread):  # noqa: F811
    # the bundled calibration text (no --calibration): AWQ is a calibration pass of its own;
    # rank 1 keeps its folded copy for the GPTQ pass in a temporary directory of its own
    one, two = dirs(tmp_path)
    qconvert.quantize(MODEL, one / "q", format="safetensors", bits=4, scheme="awq+gptq", device="cpu", **CAL)
    p = torchrun(["--format", "safetensors", "--bits", "4", "--scheme", "awq+gptq", "-o", "q", *CAL_ARGS], two)
    assert p.returncode == 0, p.stderr[-3000:]
    names = sorted(f.name for f in (one / "q").iterdir())
    assert sorted(f.name for f in (two / "q").iterdir()) == names and "model.safetensors" in names
    for name in names:
        assert (two / "q" / name).read_bytes() == (one / "q" / name).read_bytes(), name
    assert sorted(os.listdir(two)) == ["q"]


def test_two_ranks_write_the_awq_safetensors_of_one_process(text, tmp_path, one_thread):  # noqa: F811
    # int-N grids: the clipped weights are searched on rank 0 and broadcast too
    one, two = dirs(tmp_path)
    qconvert.quantize(MODEL, one / "q", format="safetensors", bits=3, scheme="awq", calibration=text,
                      device="cpu", **CAL)
    p = torchrun(["--format", "safetensors", "--bits", "3", "--scheme", "awq", "--calibration", str(text),
                  "-o", "q", *CAL_ARGS], two)
    assert p.returncode == 0, p.stderr[-3000:]
    names = sorted(f.name for f in (one / "q").iterdir())
    assert sorted(f.name for f in (two / "q").iterdir()) == names
    for name in names:
        assert (two / "q" / name).read_bytes() == (one / "q" / name).read_bytes(), name


def test_a_world_of_one_searches_and_keeps_its_sums():
    """Outside torchrun the uniting and the broadcast are no-ops: the search's own answer."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 32, generator=g) * torch.linspace(0.2, 4, 32)
    st = _Sums(32, "cpu")
    st.add(x)
    sums = {"self_attn.q_proj": st}
    before = [t.clone() for t in st.tensors()]
    _unite(World(), sums, "cpu")
    assert all(torch.equal(a, b) for a, b in zip(before, st.tensors()))
    lin = torch.nn.Linear(32, 16, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(16, 32, generator=g))

    def coarse(w, imp):  # a 3-level grid per row: scales have something to gain
        s = abs(w).max(axis=1, keepdims=True) / 1.0
        return (s * (w / s).round()).astype("float32")

    found = _searched(World(), "searching", st, [lin], [coarse])
    assert found.scales.shape == (32,) and found.err <= found.rtn_err
    assert float(st.rows) == 64
