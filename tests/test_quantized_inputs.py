"""Checkpoints stored quantized (FP8 with block, tensor or channel scales; AutoGPTQ;
AutoAWQ; compressed-tensors pack-quantized and int-quantized) read as the float weights
they stand for, exactly, a slice of rows at a time; their scale tensors consumed; the
GGUF made from them the one made from those float weights; llama.cpp runs it."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import qconvert
from fixtures.quantized_models import build, float_twin
from qconvert.errors import FormatError
from qconvert.source.checkpoint import Checkpoint
from qconvert.source.fp8 import decode

KINDS = ("fp8_block", "fp8_tensor", "fp8_channel", "gptq", "awq")


def tensor_bytes(path) -> dict[str, bytes]:
    return {t.name: bytes(t.data.tobytes()) for t in gguf.GGUFReader(path).tensors}


def rows_in_slices(h, step: int) -> np.ndarray:
    return np.concatenate([h.rows(a, min(a + step, h.shape[0])) for a in range(0, h.shape[0], step)])


def test_fp8_decoding_is_torchs_for_every_byte():
    b = torch.arange(256, dtype=torch.uint8)
    for dtype, tdtype in (("F8_E4M3", torch.float8_e4m3fn), ("F8_E5M2", torch.float8_e5m2)):
        want = b.view(tdtype).to(torch.float32).numpy()
        got = decode(b.numpy(), dtype)
        assert np.array_equal(got, want, equal_nan=True), dtype
    assert decode(np.array([0x7E, 0x7F, 0x01], np.uint8), "F8_E4M3")[[0, 2]].tolist() == [448.0, 2.0**-9]


@pytest.fixture(scope="module")
def made(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("quantized")
    model = tiny("llama")
    cache = {}

    def get(kind):
        if kind not in cache:
            ref = build(kind, model, root / kind)
            cache[kind] = (root / kind, ref, float_twin(model, root / kind, ref, root / f"{kind}-twin"))
        return cache[kind]

    return get


@pytest.mark.parametrize("kind", KINDS)
def test_decoded_weights_are_exactly_what_the_codes_stand_for(made, kind):
    path, ref, _ = made(kind)
    ckpt = Checkpoint(path)
    assert set(ckpt.decoded) == set(ref)
    for name, want in ref.items():
        h = ckpt.handles[name]
        assert h.shape == tuple(want.shape)
        assert np.array_equal(h.load(), want.numpy()), name
        assert np.array_equal(rows_in_slices(h, 37), want.numpy()), name  # slices that cut scale blocks
    # the stored parts are consumed, not passed on as tensors
    left = [n for n in ckpt.handles if not n.endswith(("weight", "bias"))]
    assert left == []


@pytest.mark.parametrize("kind", KINDS)
def test_gguf_from_a_quantized_checkpoint_is_the_one_from_its_float_weights(made, kind, tmp_path):
    path, _, twin = made(kind)
    got = qconvert.quantize(path, tmp_path / "q.gguf", type="Q8_0")
    want = qconvert.quantize(twin, tmp_path / "t.gguf", type="Q8_0")
    assert tensor_bytes(got.output) == tensor_bytes(want.output)
    assert any("14 tensors were already quantized" in n and "errors add up" in n for n in got.notes), got.notes


def test_llama_cpp_runs_a_gguf_made_from_fp8_and_gptq(made, tmp_path):
    from qconvert.eval.llama_model import open_llama

    for kind in ("fp8_block", "gptq"):
        path, _, twin = made(kind)
        res = qconvert.quantize(path, tmp_path / f"{kind}.gguf", type="Q4_K_M")
        ref = qconvert.quantize(twin, tmp_path / f"{kind}-twin.gguf", type="Q4_K_M")
        scores = []
        for out in (res.output, ref.output):
            llm = open_llama(out, n_ctx=64, logits_all=True, n_threads=2)
            llm.eval(llm.tokenize(b"def quantize(self):\n    return"))
            scores.append(np.array(llm.scores[: llm.n_tokens], dtype=np.float32))
            llm.close()
        assert np.isfinite(scores[0]).all() and np.array_equal(scores[0], scores[1])


@pytest.mark.parametrize("bits,group_size,sym", [(4, 64, True), (4, 128, False), (8, -1, True)])
def test_compressed_tensors_pack_quantized_decodes_as_its_writer_meant(tiny, tmp_path, bits, group_size, sym):
    from qconvert.sink.safetensors_out import dequantized_state_dict, write_quantized_safetensors

    model = tiny("llama")
    out = write_quantized_safetensors(model, tmp_path / "ct", bits=bits, group_size=group_size, sym=sym)
    want = dequantized_state_dict(model, bits=bits, group_size=group_size, sym=sym)
    ckpt = Checkpoint(out)
    assert set(ckpt.decoded) == set(want)
    for name, w in want.items():
        assert np.array_equal(ckpt.handles[name].load(), w.numpy()), name
        assert np.array_equal(rows_in_slices(ckpt.handles[name], 100), w.numpy()), name
    assert not [n for n in ckpt.handles if n.endswith(("_packed", "_scale", "_zero_point", "_shape"))]
    res = qconvert.quantize(out, tmp_path / "ct.gguf", type="Q8_0")
    assert res.output.stat().st_size > 0 and len(res.plan.tensors) == 21


def test_compressed_tensors_int8_and_fp8_input_scales(made, tiny, tmp_path):
    """int-quantized int8 (weight I8 + weight_scale) and FP8 with activation scales: the
    activation scales carry no weight and are dropped."""
    path, ref, _ = made("fp8_channel")
    assert "model.layers.0.self_attn.q_proj.input_scale" in load_file(str(path / "model.safetensors"))
    weights = {}
    for f in sorted(tiny("llama").glob("*.safetensors")):
        weights.update(load_file(str(f)))
    name = "model.layers.0.mlp.down_proj.weight"
    w = weights[name].to(torch.float32)
    scale = (w.abs().amax(1, keepdim=True) / 127).to(torch.float32)
    q = torch.round(w / scale).clamp(-127, 127).to(torch.int8)
    weights[name] = q
    weights[name + "_scale"] = scale
    d = tmp_path / "int8"
    d.mkdir()
    for f in tiny("llama").iterdir():
        if f.suffix == ".json" and f.name != "model.safetensors.index.json":
            d.joinpath(f.name).write_bytes(f.read_bytes())
    save_file(weights, str(d / "model.safetensors"))
    h = Checkpoint(d).handles[name]
    assert np.array_equal(h.load(), (q.to(torch.float32) * scale).numpy())


def test_a_quantized_weight_without_its_scale_is_one_line_error(made, tmp_path):
    path, _, _ = made("fp8_block")
    tensors = load_file(str(path / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight_scale_inv"]
    d = tmp_path / "broken"
    d.mkdir()
    for f in path.iterdir():
        if f.suffix == ".json":
            d.joinpath(f.name).write_bytes(f.read_bytes())
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(FormatError, match=r"up_proj.weight' is F8_E4M3 without a scale") as ei:
        qconvert.quantize(d, tmp_path / "x.gguf", type="Q8_0")
    assert "\n" not in str(ei.value) and not (tmp_path / "x.gguf").exists()
    config = json.loads((d / "config.json").read_text())
    assert config["quantization_config"]["weight_block_size"] == [96, 80]


def test_calibration_runs_the_decoded_model(made, tmp_path):
    """--calibration on a GPTQ checkpoint: the model is built without its quantization_config
    (which would need optimum) and reads the decoded weights: the same statistics, and so
    the same file, as calibrating its float twin."""
    path, _, twin = made("gptq")
    kw = dict(type="Q4_K_M", calibration=True, calibration_samples=4, calibration_seqlen=64, device="cpu")
    got = qconvert.quantize(path, tmp_path / "q.gguf", **kw)
    want = qconvert.quantize(twin, tmp_path / "t.gguf", **kw)
    assert tensor_bytes(got.output) == tensor_bytes(want.output)


def test_an_fp4_packing_is_refused_naming_the_tensor(made, tmp_path):
    from qconvert.errors import UnsupportedError

    path, _, _ = made("fp8_block")
    tensors = load_file(str(path / "model.safetensors"))
    p = "model.layers.0.mlp.up_proj"
    w = tensors.pop(p + ".weight")
    del tensors[p + ".weight_scale_inv"]
    tensors[p + ".weight_packed"] = torch.zeros(w.shape[0], w.shape[1] // 2, dtype=torch.uint8)  # NVFP4's layout
    tensors[p + ".weight_scale"] = torch.ones(w.shape[0], w.shape[1] // 16).to(torch.float8_e4m3fn)
    tensors[p + ".weight_global_scale"] = torch.ones(1)
    d = tmp_path / "fp4"
    d.mkdir()
    for f in path.iterdir():
        if f.suffix == ".json":
            d.joinpath(f.name).write_bytes(f.read_bytes())
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(UnsupportedError, match=r"up_proj.weight_packed' is U8, not int32 words"):
        Checkpoint(d)


@pytest.mark.parametrize("grid,row0", [((128, 128), 0), ((96, 80), 200), ((1, 300), 7), ((5, 1), 3)])
def test_fp8_kernel_equals_its_numpy_twin(grid, row0):
    """kernels/fp8_scaled (numba, one pass) against quantized_input.grid_rows (table, then
    scale per cell): every value identical, NaN codes included."""
    from qconvert.kernels.fp8_scaled import fp8_grid_rows
    from qconvert.source.fp8 import TABLES
    from qconvert.source.quantized_input import grid_rows

    rng = np.random.default_rng(grid[0] + row0)
    raw = rng.integers(0, 256, size=(300, 300), dtype=np.uint8)  # all codes, 0x7F/0xFF (NaN) too
    n_cells = (-(-(row0 + 300) // grid[0]), -(-300 // grid[1]))
    cells = (rng.standard_normal(n_cells) * 1e-3).astype(np.float32)
    table = TABLES["F8_E4M3"]
    first = row0 // grid[0]

    def codes(a, b):
        return decode(raw[a - row0:b - row0], "F8_E4M3")

    twin = grid_rows(codes, lambda r: cells[r], None, grid, row0, row0 + 300)
    fast = fp8_grid_rows(raw, table, cells[first:], row0, grid)
    assert np.array_equal(fast, twin, equal_nan=True) and np.isnan(fast).any()


def test_safetensors_output_writes_a_decoded_tensor_kept_dense_as_floats(made, tmp_path):
    """An FP8 lm_head is kept dense by --format safetensors: written as the bf16 of the
    weights its codes stand for (the model's dtype), never as the FP8 codes without their
    scale."""
    path, _, _ = made("fp8_block")
    tensors = load_file(str(path / "model.safetensors"))
    w = tensors["lm_head.weight"].to(torch.float32)
    scale = w.abs().amax() / 448
    tensors["lm_head.weight"] = (w / scale).to(torch.float8_e4m3fn)
    tensors["lm_head.weight_scale_inv"] = scale.reshape(())
    d = tmp_path / "fp8-head"
    d.mkdir()
    for f in path.iterdir():
        if f.suffix == ".json":
            d.joinpath(f.name).write_bytes(f.read_bytes())
    save_file(tensors, str(d / "model.safetensors"))
    res = qconvert.quantize(d, tmp_path / "st", format="safetensors")
    out = {}
    for f in res.output.glob("*.safetensors"):
        out.update(load_file(str(f)))
    want = (tensors["lm_head.weight"].to(torch.float32) * scale).to(torch.bfloat16)
    assert out["lm_head.weight"].dtype == torch.bfloat16 and torch.equal(out["lm_head.weight"], want)
    assert "lm_head.weight_scale_inv" not in out


@pytest.mark.parametrize("kind", ["gptq", "awq"])
def test_gptq_and_awq_kernels_equal_their_numpy_twins(kind):
    """kernels/packed_int (numba, one pass) against source/int_packed (NumPy), on random
    words (every code and zero point) and act-order groups, from a row that is not a
    word boundary."""
    from qconvert.kernels import packed_int
    from qconvert.source import int_packed

    rng = np.random.default_rng(7)
    n_out, n_in, group = 96, 256, 64
    start, stop = 13, 83
    scales = rng.standard_normal((n_in // group, n_out)).astype(np.float32)
    if kind == "gptq":
        qw = rng.integers(0, 2**32, size=(n_in // 8, n_out), dtype=np.uint32).view(np.int32)
        qz = rng.integers(0, 2**32, size=(n_in // group, n_out // 8), dtype=np.uint32).view(np.int32)
        g_idx = rng.permutation(n_in) // group
        twin = int_packed.gptq_rows(qw, qz, scales[:, start:stop], g_idx, 4, group, 1, start, stop)
        fast = packed_int.gptq_rows(qw, qz, scales[:, start:stop], g_idx, 4, 1, start, stop)
    else:
        qw = rng.integers(0, 2**32, size=(n_in, n_out // 8), dtype=np.uint32).view(np.int32)
        qz = rng.integers(0, 2**32, size=(n_in // group, n_out // 8), dtype=np.uint32).view(np.int32)
        twin = int_packed.awq_rows(qw, qz, scales[:, start:stop], group, start, stop)
        fast = packed_int.awq_rows(qw, qz, scales[:, start:stop], group, start, stop)
    assert fast.shape == (stop - start, n_in) and np.array_equal(fast, twin)


@pytest.mark.parametrize("damage,message", [
    ("g_idx as float", r"gate_proj.g_idx' should hold .*integers, not F32"),
    ("g_idx out of range", r"gate_proj.g_idx': group indices run from 0 to 999, but the scales hold"),
    ("g_idx negative", r"gate_proj.g_idx': group indices run from -4 to"),
    ("qzeros as float", r"gate_proj.qzeros' should hold I32 integers, not F32"),
])
def test_damaged_gptq_tensors_are_refused_naming_them(made, tmp_path, damage, message):
    """Group indices pick scale rows in a decoder that does not bound-check them, and int
    words read as floats (or floats as ints) decode to other weights: each of these wrote a
    GGUF with exit 0 before."""
    path, _, _ = made("gptq")
    tensors = load_file(str(path / "model.safetensors"))
    p = "model.layers.0.mlp.gate_proj"
    g = tensors[p + ".g_idx"].clone()
    if damage == "g_idx as float":
        tensors[p + ".g_idx"] = g.to(torch.float32)
    elif damage == "qzeros as float":
        tensors[p + ".qzeros"] = tensors[p + ".qzeros"].view(torch.float32)
    else:
        g[5 if damage == "g_idx out of range" else 0] = 999 if damage == "g_idx out of range" else -4
        tensors[p + ".g_idx"] = g
    d = tmp_path / "broken"
    d.mkdir()
    for f in path.iterdir():
        if f.suffix == ".json":
            d.joinpath(f.name).write_bytes(f.read_bytes())
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(FormatError, match=message):
        qconvert.quantize(d, tmp_path / "x.gguf", type="Q8_0")
    assert not (tmp_path / "x.gguf").exists()
