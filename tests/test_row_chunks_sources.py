"""Row slices of the tensors the writer used to load whole (source/row_chunks.py): experts a
checkpoint stores stacked (Llama 4's transposed gate_up_proj, transformers 5's
(n, 2 x ff, hidden)), gpt-oss's stacked bf16 and MXFP4 experts, tensors of a GGUF input
(2-D by rows, 3-D expert by expert and each expert by rows; float and quantized), and the
`stacked` transform (StableLM's per-head norms). For each: the slices are many (one expert's
rows are cut apart), they rebuild what the stored weights say, and the file written in
small slices is byte for byte the one written a tensor at a time."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

import qconvert
from qconvert.source import row_chunks
from qconvert.source.expert_stack import ExpertStack
from qconvert.source.finite import NonFiniteError
from qconvert.source.model_source import open_source
from test_row_chunks import _peak_rss

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tiny-llama"
WHOLE = 1 << 40  # a slice budget no tensor reaches: every tensor (every expert) in one piece
SMALL = 20_000  # a few rows of 256 or 512 floats a slice, the last one shorter


@pytest.fixture
def budget(monkeypatch):
    monkeypatch.delenv(row_chunks.ENV, raising=False)

    def set_budget(n: int) -> None:
        monkeypatch.setattr(row_chunks, "CHUNK_BYTES", n)

    return set_budget


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Fixture checkpoints, built once per module on first use."""
    from fixtures.tiny_models import train_tokenizer

    root = tmp_path_factory.mktemp("sliced_sources")
    cache: dict[str, Path] = {}
    tok = []

    def get(name: str) -> Path:
        if name not in cache:
            if not tok:
                tok.append(train_tokenizer())
            cache[name] = _build(name, root, tok[0], get)
        return cache[name]

    return get


def _build(name: str, root: Path, tok, get) -> Path:
    if name in ("llama4", "qwen3_moe"):
        from fixtures.moe_models import build

        return build(name, root / name, tok)
    if name == "qwen3_moe_stacked":
        return _restack(get("qwen3_moe"), root / name)
    if name == "stablelm":
        from fixtures.family_models import build

        return build(name, root / name, tok)
    from fixtures.gpt_oss_models import build_bf16, build_mxfp4

    bf16 = get("gpt_oss_bf16") if name == "gpt_oss_mxfp4" else None
    return build_bf16(root / name) if bf16 is None else build_mxfp4(root / name, bf16)  # its own tokenizer


def _restack(src: Path, d: Path) -> Path:
    """The Qwen3-MoE fixture with each layer's experts stacked as transformers 5 holds them:
    gate_up_proj (n, 2 x ff, hidden), down_proj (n, hidden, ff)."""
    import torch
    from safetensors.torch import load_file, save_file

    d.mkdir()
    for f in src.iterdir():
        if f.suffix == ".json" and not f.name.startswith("model.safetensors"):
            shutil.copy(f, d / f.name)
    tensors = {}
    for shard in sorted(src.glob("*.safetensors")):
        tensors.update(load_file(str(shard)))
    n = json.loads((src / "config.json").read_text())["num_local_experts"]
    for layer in range(2):
        p = f"model.layers.{layer}.mlp.experts"
        tensors[f"{p}.gate_up_proj"] = torch.stack([torch.cat([tensors.pop(f"{p}.{e}.gate_proj.weight"),
                                                               tensors.pop(f"{p}.{e}.up_proj.weight")])
                                                    for e in range(n)])
        tensors[f"{p}.down_proj"] = torch.stack([tensors.pop(f"{p}.{e}.down_proj.weight") for e in range(n)])
    save_file(tensors, str(d / "model.safetensors"))
    return d


def _stored(model: Path, name: str) -> np.ndarray:
    """A stored tensor as float32, read with the safetensors library (not qconvert)."""
    from safetensors.torch import load_file

    index = model / "model.safetensors.index.json"
    shard = json.loads(index.read_text())["weight_map"][name] if index.exists() else "model.safetensors"
    return load_file(str(model / shard))[name].float().numpy()


def _sliced_and_whole(path: Path, tmp_path: Path, budget, type_name: str = "Q4_K_M", **kw) -> tuple[bytes, bytes]:
    outs = []
    for n in (WHOLE, SMALL):
        budget(n)
        out = tmp_path / f"{n}.gguf"
        qconvert.quantize(path, out, type=type_name, force=True, **kw)
        outs.append(out.read_bytes())
    return outs[0], outs[1]


def _rows_of_expert(stack: ExpertStack, e: int) -> list[tuple[int, int, np.ndarray]]:
    return list(row_chunks.row_chunks(stack.parts[e]))


# -- experts stored stacked ----------------------------------------------------------------

def test_llama4_transposed_experts_are_read_by_rows_of_one_expert(made, budget):
    """gate_up_proj (n, hidden, 2 x ff) and down_proj (n, ff, hidden): expert e's gate rows
    are columns 0..ff of its stored slab; one row per slice rebuilds them exactly."""
    model = made("llama4")
    budget(1)
    by_name = {s.name: s for s in open_source(model).tensors}
    stem = "model.layers.1.feed_forward.experts"
    gate_up, down = _stored(model, f"{stem}.gate_up_proj"), _stored(model, f"{stem}.down_proj")
    ff = gate_up.shape[2] // 2
    for name, want in (("blk.1.ffn_gate_exps.weight", lambda e: gate_up[e].T[:ff]),
                       ("blk.1.ffn_up_exps.weight", lambda e: gate_up[e].T[ff:]),
                       ("blk.1.ffn_down_exps.weight", lambda e: down[e].T)):
        stack = by_name[name]
        assert isinstance(stack, ExpertStack)
        for e in (0, len(stack.parts) - 1):
            slices = _rows_of_expert(stack, e)
            assert len(slices) == stack.shape[1] > 1, name
            np.testing.assert_array_equal(np.concatenate([x for _, _, x in slices]), want(e), err_msg=name)


@pytest.mark.parametrize("name", ["llama4", "qwen3_moe_stacked"])
def test_stacked_experts_sliced_file_equals_whole(made, budget, tmp_path, name):
    whole, sliced = _sliced_and_whole(made(name), tmp_path, budget)
    assert sliced == whole


# -- gpt-oss ---------------------------------------------------------------------------------

def test_gpt_oss_bf16_experts_are_read_by_rows_of_one_expert(made, budget):
    """bf16 gate_up_proj (n, in, 2 x out) with gate and up interleaved by column."""
    model = made("gpt_oss_bf16")
    budget(1)
    by_name = {s.name: s for s in open_source(model).tensors}
    gate_up = _stored(model, "model.layers.0.mlp.experts.gate_up_proj")
    for name, k in (("blk.0.ffn_gate_exps.weight", 0), ("blk.0.ffn_up_exps.weight", 1)):
        stack = by_name[name]
        slices = _rows_of_expert(stack, 1)
        assert len(slices) == stack.shape[1] > 1
        np.testing.assert_array_equal(np.concatenate([x for _, _, x in slices]), gate_up[1][:, k::2].T)


@pytest.mark.parametrize("which,kw", [("gpt_oss_bf16", {}), ("gpt_oss_mxfp4", {"allow_requantize": True})])
def test_gpt_oss_sliced_file_equals_whole(made, budget, tmp_path, which, kw):
    whole, sliced = _sliced_and_whole(made(which), tmp_path, budget, **kw)
    assert sliced == whole


def test_gpt_oss_mxfp4_rows_decode_like_the_whole_expert(made, budget):
    """Decoded MXFP4 slabs (for --allow-requantize) read a few stored rows at a time."""
    src = open_source(made("gpt_oss_mxfp4"), allow_requantize=True)
    stack = next(s for s in src.tensors if s.name == "blk.1.ffn_up_exps.weight")
    whole = stack.parts[2].load()
    budget(1)
    slices = _rows_of_expert(stack, 2)
    assert len(slices) == whole.shape[0] > 1
    np.testing.assert_array_equal(np.concatenate([x for _, _, x in slices]), whole)


# -- GGUF input ------------------------------------------------------------------------------

@pytest.mark.parametrize("stored,kw", [("F16", {}), ("Q8_0", {"allow_requantize": True})])
def test_gguf_input_sliced_file_equals_whole(budget, tmp_path, stored, kw):
    budget(WHOLE)
    src = qconvert.quantize(EXAMPLE, tmp_path / f"in-{stored}.gguf", type=stored).output
    budget(1)
    emb = next(s for s in open_source(src, **kw).tensors if s.name == "token_embd.weight")
    slices = list(row_chunks.row_chunks(emb))
    assert len(slices) == emb.shape[0]
    np.testing.assert_array_equal(np.concatenate([x for _, _, x in slices]), emb.load())
    whole, sliced = _sliced_and_whole(src, tmp_path, budget, **kw)
    assert sliced == whole


def test_gguf_input_experts_by_expert_then_rows(made, budget, tmp_path):
    """A 3-D GGUF tensor is a stack of slabs read by rows; requantizing the F32 GGUF of an
    MoE model gives the bytes converting the checkpoint does, in small slices or whole."""
    model = made("qwen3_moe")
    budget(WHOLE)
    f32 = qconvert.quantize(model, tmp_path / "f32.gguf", type="F32").output
    direct = qconvert.quantize(model, tmp_path / "direct.gguf", type="Q4_K_M").output.read_bytes()
    budget(1)
    stack = next(s for s in open_source(f32).tensors if s.name == "blk.0.ffn_down_exps.weight")
    assert isinstance(stack, ExpertStack) and len(stack.parts) == stack.shape[0]
    slices = _rows_of_expert(stack, 3)
    assert len(slices) == stack.shape[1] > 1
    np.testing.assert_array_equal(np.concatenate([x for _, _, x in slices]),
                                  _stored(model, "model.layers.0.mlp.experts.3.down_proj.weight"))
    whole, sliced = _sliced_and_whole(f32, tmp_path, budget)
    # the GGUF's metadata differs from the checkpoint's conversion; the tensor data must not
    assert sliced == whole and _tensor_bytes(tmp_path / f"{SMALL}.gguf") == _tensor_bytes_of(direct, tmp_path)


def _tensor_bytes(path: Path) -> dict[str, bytes]:
    return {t.name: np.asarray(t.data).tobytes() for t in gguf.GGUFReader(str(path)).tensors}


def _tensor_bytes_of(data: bytes, tmp_path: Path) -> dict[str, bytes]:
    p = tmp_path / "copy.gguf"
    p.write_bytes(data)
    return _tensor_bytes(p)


def test_gguf_input_nan_in_a_later_slice_counts_the_whole_tensor(budget, tmp_path):
    budget(WHOLE)
    src = qconvert.quantize(EXAMPLE, tmp_path / "in.gguf", type="F32").output
    info = next(t for t in gguf.GGUFReader(str(src)).tensors if t.name == "blk.1.ffn_down.weight")
    data = bytearray(src.read_bytes())
    cols = int(info.shape[0])
    for i, bits in ((100 * cols + 5, 0x7FC00001), (255 * cols, 0x7F800000), (255 * cols + 9, 0x7FC00000)):
        data[info.data_offset + 4 * i:info.data_offset + 4 * i + 4] = bits.to_bytes(4, "little")
    src.write_bytes(bytes(data))
    budget(cols * 4 * 16)  # 16 rows a slice: the first NaN is in the 7th
    with pytest.raises(NonFiniteError, match=r"blk\.1\.ffn_down\.weight'?: 2 NaN, 1 Inf"):
        qconvert.quantize(src, tmp_path / "out.gguf", type="Q8_0")
    assert not (tmp_path / "out.gguf").exists()


# -- the `stacked` transform -----------------------------------------------------------------

def test_stacked_per_head_norms_are_read_a_head_at_a_time(made, budget, tmp_path):
    model = made("stablelm")
    budget(1)
    norm = next(s for s in open_source(model).tensors if s.name == "blk.1.attn_q_norm.weight")
    slices = list(row_chunks.row_chunks(norm))
    assert len(slices) == norm.shape[0] > 1
    head2 = _stored(model, "model.layers.1.self_attn.q_layernorm.norms.2.weight")
    np.testing.assert_array_equal(slices[2][2][0], head2)
    np.testing.assert_array_equal(np.concatenate([x for _, _, x in slices]), norm.load())
    whole, sliced = _sliced_and_whole(model, tmp_path, budget, type_name="Q8_0")
    assert sliced == whole



# -- peak memory -----------------------------------------------------------------------------

def _scripts():
    if str(ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(ROOT / "scripts"))


@pytest.mark.skipif(sys.platform != "linux", reason="the peak is read from /proc/self/status (VmHWM), Linux only")
def test_peak_memory_of_gguf_requantization_does_not_follow_the_largest_tensor(tmp_path):
    _scripts()
    from synthetic_checkpoint import make_checkpoint

    code = "import qconvert\nqconvert.quantize({!r}, {!r}, type='Q8_0')"
    peaks = {}
    for name, vocab in (("small", 1024), ("big", 65536)):  # embeddings of 4 or 256 MiB as float32
        make_checkpoint(tmp_path / name, layers=1, hidden=1024, vocab=vocab)
        src = qconvert.quantize(tmp_path / name, tmp_path / f"{name}-f16.gguf", type="F16").output
        peaks[name] = _peak_rss(code.format(str(src), str(tmp_path / f"{name}-q8.gguf")))
    # loaded whole, the two 256 MiB embeddings cost ~2.2 float32 copies (560 MiB); in slices
    # the working set is a few 16 MiB slices whatever the tensor
    f32 = 4 * 65536 * 1024
    assert peaks["big"] - peaks["small"] < f32 / 2, {k: v / 2**20 for k, v in peaks.items()}


@pytest.mark.skipif(sys.platform != "linux", reason="the peak is read from /proc/self/status (VmHWM), Linux only")
def test_peak_memory_of_large_stacked_transposed_experts_stays_flat(tmp_path):
    """Llama 4's layout with experts of 2048 x 2 x 8192 (one expert's gate_up is 128 MiB as
    float32): converting it peaks like a model of narrow experts."""
    _scripts()
    from measure_moe_memory import make_moe_checkpoint

    # slices of 4 MiB: the pipeline's working set (a few slices and their encodings) then
    # stays well under half an expert's gate, whatever the machine's default slice size
    code = ("import os\nos.environ['QCONVERT_CHUNK_MB'] = '4'\nimport qconvert\n"
            "qconvert.quantize({!r}, {!r}, type='Q8_0')")
    peaks = {}
    for name, ff in (("narrow", 256), ("wide", 8192)):
        make_moe_checkpoint(tmp_path / name, 2, 2048, 1, 1000, ff=ff, layout="llama4")
        peaks[name] = _peak_rss(code.format(str(tmp_path / name), str(tmp_path / f"{name}.gguf")))
    gate_f32 = 4 * 8192 * 2048  # one expert's gate (or up) as float32: 64 MiB
    assert peaks["wide"] - peaks["narrow"] < gate_f32 / 2, {k: v / 2**20 for k, v in peaks.items()}
