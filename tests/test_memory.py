"""`qconvert.estimate_memory` and `qconvert estimate-memory`: figures checked by hand.

KV cache, sliding-window and longest-context figures are computed by hand in each test from
the shape (tokens x KV heads x (K + V head size) x bytes per element, per layer).

Byte counts per block come from llama.cpp's block structs (ggml-common.h): block_q8_0 is
an f16 scale + 32 int8 = 34 bytes per 32 weights; block_q6_K 210 bytes, block_q4_K 144
bytes per 256 weights."""

from __future__ import annotations

import json
import sys

import gguf
import numpy as np
import pytest
from safetensors.numpy import save_file

from qconvert.errors import InputError
from qconvert.plan.memory import (
    PRECISIONS, THIS_FILE, ModelShape, estimate_memory, kv_cache_bytes, kv_cache_bytes_for, kv_table, longest_context,
    memory_needed, model_shape_from_config, model_shape_from_dir, params_from_dir, parse_bytes, parse_params,
    read_gguf_model, runtime_overhead_bytes,
)

GiB = 2**30
MiB = 2**20


def run_cli(args, monkeypatch, capsys) -> tuple[int, str, str]:
    from qconvert.cli.app import main

    monkeypatch.setattr(sys, "argv", ["qconvert", *map(str, args)])
    monkeypatch.setenv("COLUMNS", "250")
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------ parsing

@pytest.mark.parametrize("text,n", [
    ("70B", 70_000_000_000), ("7b", 7_000_000_000), ("1.5T", 1_500_000_000_000), ("70e9", 70_000_000_000),
    ("405B", 405_000_000_000), ("125M", 125_000_000), ("8000000000", 8_000_000_000), (" 0.5k ", 500),
    ("6.74B", 6_740_000_000), ("1e3", 1000), (12345, 12345),
])
def test_parse_params(text, n):
    assert parse_params(text) == n


@pytest.mark.parametrize("text", ["", "B", "seventy", "70X", "70 GB", "-5B", "0", "1.2.3B", "0.0001", "7B7"])
def test_parse_params_rejects(text):
    with pytest.raises(InputError, match="--params"):
        parse_params(text)


@pytest.mark.parametrize("text,n", [
    ("24GB", 24_000_000_000), ("24GiB", 24 * GiB), ("8G", 8_000_000_000), ("16000MB", 16_000_000_000),
    ("1.5 GiB", 3 * GiB // 2), ("512MiB", 512 * 2**20), ("80gib", 80 * GiB), ("1TB", 10**12), ("100B", 100),
])
def test_parse_bytes(text, n):
    assert parse_bytes(text) == n


@pytest.mark.parametrize("text", ["24", "24XB", "GB", "lots", "-1GB"])
def test_parse_bytes_rejects(text):
    with pytest.raises(InputError, match="--vram"):
        parse_bytes(text)


# ------------------------------------------------------------------ weights

def test_required_figures():
    e70 = estimate_memory("70B")
    assert e70.row("FP16").weight_bytes == 140 * 10**9
    assert e70.row("INT8").weight_bytes == 70 * 10**9
    assert e70.row("INT4").weight_bytes == 35 * 10**9
    assert e70.row("FP16").weight_gb == pytest.approx(140.0)
    assert e70.row("FP16").weight_gib == pytest.approx(140e9 / 2**30)
    e405 = estimate_memory("405B")
    assert e405.row("FP16/BF16").weight_bytes == 810 * 10**9
    assert e405.row("INT8").weight_bytes == 405 * 10**9
    assert e405.row("INT4").weight_bytes == 202_500_000_000
    assert e405.row("FP32").weight_bytes == 1620 * 10**9


def test_block_formats_count_their_scales():
    e = estimate_memory(256_000)
    assert e.row("Q8_0").weight_bytes == 256_000 // 32 * 34
    assert e.row("Q6_K").weight_bytes == 1000 * 210
    assert e.row("Q4_K_M").weight_bytes == 1000 * 144  # costed at Q4_K, its main type
    assert e.row("Q8_0").bits_per_weight == 8.5
    names = ["FP32", "FP16/BF16", "INT8", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "IQ4_XS", "INT4", "IQ3_M",
             "Q3_K_M", "IQ3_XXS", "Q2_K", "IQ2_M", "IQ2_XXS", "IQ1_S"]
    assert [p.name for p in PRECISIONS] == names
    assert e.row("IQ4_XS").bits_per_weight == 4.25 and e.row("IQ1_S").bits_per_weight == 1.5625
    # heavier types never need less memory
    by_size = ["FP32", "FP16/BF16", "Q8_0", "INT8"] + names[4:]  # Q8_0's scales put it above INT8
    sizes = [e.row(n).weight_bytes for n in by_size]
    assert sizes == sorted(sizes, reverse=True)


def test_override_and_vram():
    e = estimate_memory("70B", vram="40GB", bits_per_weight_override={"q4_k_m": 4.8125})
    assert e.row("Q4_K_M").weight_bytes == 70_000_000_000 * 4.8125 / 8
    assert e.row("Q4_K_M").fits is False  # 42.1 GB now, where Q4_K alone (39.4 GB) fits
    assert e.row("Q4_K_M").note == "bits per weight overridden"
    with pytest.raises(InputError, match="Q4_K_M"):
        estimate_memory("70B", bits_per_weight_override={"Q9_Z": 3.0})


def test_overhead_is_added_to_every_total():
    e = estimate_memory("7B", overhead="1GiB", vram="8GB")
    assert e.row("INT8").total_bytes == 7 * 10**9 + GiB
    assert e.row("INT8").fits is False and e.row("INT4").fits is True


def test_fits_is_weights_plus_kv_against_vram():
    e = estimate_memory("70B", vram="40GB")
    fits = {r.name: r.fits for r in e.rows}
    assert fits["INT4"] is True and fits["Q4_K_M"] is True  # 35 GB, 39.375 GB
    assert fits["Q5_K_M"] is False and fits["FP16/BF16"] is False  # 48.125 GB, 140 GB
    assert estimate_memory("70B").rows[0].fits is None
    # 8k context of a 80-layer, 8-KV-head GQA model adds 2.5 GiB: Q4_K_M no longer fits in 40 GB
    e = estimate_memory("70B", vram="40GB", context=8192, layers=80, kv_heads=8, head_dim=128)
    assert e.kv_bytes == 2 * 80 * 8 * 128 * 8192 * 2
    assert e.row("Q4_K_M").total_bytes == 39_375_000_000 + e.kv_bytes
    assert e.row("Q4_K_M").fits is False and e.row("INT4").fits is True


# ------------------------------------------------------------------ KV cache

def test_kv_cache_known_models():
    # Llama-2-7B: 32 layers, 32 KV heads of 128, 4096 tokens, f16: 2*32*32*128*4096*2 = 2^31
    assert kv_cache_bytes(32, 32, 128, 4096) == 2 * GiB
    # Llama-3-8B (GQA, 8 KV heads) at 8192 tokens: 1 GiB
    assert kv_cache_bytes(32, 8, 128, 8192) == 1 * GiB
    # the same 2^30 elements as a q8_0 cache: 34 bytes per 32 elements
    assert kv_cache_bytes(32, 32, 128, 4096, 34 / 32) == GiB // 32 * 34


def test_context_needs_shape():
    with pytest.raises(InputError, match="--model-dir"):
        estimate_memory("7B", context=4096)
    with pytest.raises(InputError, match="--head-dim"):
        estimate_memory("7B", context=4096, layers=32, kv_heads=32)
    with pytest.raises(InputError, match="--context"):
        estimate_memory("7B", layers=32, kv_heads=32, head_dim=128)
    with pytest.raises(InputError):
        estimate_memory("7B", context=0, layers=32, kv_heads=32, head_dim=128)
    with pytest.raises(InputError, match="--params"):
        estimate_memory()


def _write_config(d, cfg):
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def test_model_shape_from_config(tmp_path):
    # Llama-2-7B: no num_key_value_heads -> every head has its own K/V; head_dim = 4096 / 32
    llama = _write_config(tmp_path / "llama", {"num_hidden_layers": 32, "num_attention_heads": 32,
                                               "hidden_size": 4096})
    s = model_shape_from_dir(llama)
    assert (s.n_layers, s.n_kv_heads, s.head_dim) == (32, 32, 128)
    # Gemma 3 4B multimodal: the language model sits under text_config, head_dim is explicit
    gemma = _write_config(tmp_path / "gemma", {
        "architectures": ["Gemma3ForConditionalGeneration"], "vision_config": {"num_hidden_layers": 27},
        "text_config": {"num_hidden_layers": 34, "num_attention_heads": 8, "num_key_value_heads": 4,
                        "hidden_size": 2560, "head_dim": 256}})
    s = model_shape_from_dir(gemma)
    assert (s.n_layers, s.n_kv_heads, s.head_dim) == (34, 4, 256)
    broken = _write_config(tmp_path / "broken", {"num_attention_heads": 8})
    with pytest.raises(InputError, match="num_hidden_layers"):
        model_shape_from_dir(broken)
    with pytest.raises(InputError, match="config.json"):
        model_shape_from_dir(tmp_path / "nowhere")


def test_model_dir_gives_params_and_shape(tmp_path):
    d = _write_config(tmp_path / "m", {"num_hidden_layers": 2, "num_attention_heads": 4,
                                       "num_key_value_heads": 2, "hidden_size": 64})
    save_file({"a": np.zeros((64, 64), np.float16), "b": np.zeros(64, np.float32)}, str(d / "model.safetensors"))
    assert params_from_dir(d) == 64 * 64 + 64
    e = estimate_memory(model_dir=d, context=100)
    assert e.params == 4160
    assert e.kv_bytes == 2 * 2 * 2 * 16 * 100 * 2
    # an explicit --params wins over the count; explicit shape options override config.json
    e = estimate_memory("1B", model_dir=d, context=100, layers=4)
    assert e.params == 10**9 and e.kv_bytes == 2 * 4 * 2 * 16 * 100 * 2

    # sharded: counted over every shard the index lists
    s = tmp_path / "sharded"
    s.mkdir()
    save_file({"x": np.zeros((3, 5), np.float32)}, str(s / "model-00001-of-00002.safetensors"))
    save_file({"y": np.zeros(7, np.float32)}, str(s / "model-00002-of-00002.safetensors"))
    (s / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "x": "model-00001-of-00002.safetensors", "y": "model-00002-of-00002.safetensors"}}))
    assert params_from_dir(s) == 22
    with pytest.raises(InputError, match="--params"):
        params_from_dir(tmp_path)


# ------------------------------------------------------------------ CLI

def test_cli_table_and_json(monkeypatch, capsys):
    code, out, err = run_cli(["estimate-memory", "--params", "70B"], monkeypatch, capsys)
    assert code == 0, err
    assert "140.00" in out and "70.00" in out and "35.00" in out  # GB
    assert "130.39" in out  # 140e9 bytes in GiB
    code, out, _ = run_cli(["estimate-memory", "--params", "405B", "--json"], monkeypatch, capsys)
    rows = {r["name"]: r for r in json.loads(out)["rows"]}
    assert rows["FP16/BF16"]["weight_gb"] == 810 and rows["INT8"]["weight_gb"] == 405
    assert rows["INT4"]["weight_gb"] == 202.5
    code, out, _ = run_cli(["estimate-memory", "--params", "70B", "--json"], monkeypatch, capsys)
    gpu = {r["name"]: r["smallest_common_gpu"] for r in json.loads(out)["rows"]}
    # 140 GB = 130.4 GiB; 35 GB = 32.6 GiB (just over a 32 GiB card); 22.97 GB = 21.4 GiB
    assert gpu["FP16/BF16"] == "MI300X 192GB" and gpu["INT4"] == "A100 40GB" and gpu["Q2_K"] == "RTX 4090 24GB"
    assert gpu["FP32"] is None  # 280 GB fits no single card in the list


def test_cli_context_vram(monkeypatch, capsys):
    code, out, _ = run_cli(["estimate-memory", "--params", "7B", "--context", "4096", "--layers", "32",
                            "--kv-heads", "32", "--head-dim", "128", "--vram", "16GB", "--json"], monkeypatch, capsys)
    assert code == 0
    d = json.loads(out)
    assert d["kv_bytes"] == 2 * GiB and d["vram"] == 16 * 10**9
    rows = {r["name"]: r for r in d["rows"]}
    assert rows["FP16/BF16"]["fits"] is False  # 14 GB + 2.15 GB > 16 GB
    assert rows["Q8_0"]["fits"] is True  # 7.44 GB + 2.15 GB
    code, out, _ = run_cli(["estimate-memory", "--params", "7B", "--context", "4096", "--layers", "32",
                            "--kv-heads", "32", "--head-dim", "128", "--vram", "16GB"], monkeypatch, capsys)
    assert code == 0 and "KV cache" in out and "fits" in out and "2.00" in out


@pytest.mark.parametrize("args,needle", [
    (["--params", "70B", "--context", "4096"], "--model-dir"),
    (["--params", "lots"], "--params"),
    (["--params", "70B", "--vram", "24"], "--vram"),
    (["--params", "70B", "--kv-type", "Q9"], "--kv-type"),
])
def test_cli_errors(args, needle, monkeypatch, capsys):
    code, out, err = run_cli(["estimate-memory", *args], monkeypatch, capsys)
    assert code == 2 and out == ""
    assert needle in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------ KV layouts, GGUF input, longest context


def _gemma3_12l_config(**extra):
    # Gemma 3-shaped (not a real size): 12 layers, 4 KV heads of 256, 1024-token window
    return {"model_type": "gemma3_text", "num_hidden_layers": 12, "num_attention_heads": 8,
            "num_key_value_heads": 4, "head_dim": 256, "hidden_size": 2560, "sliding_window": 1024,
            "max_position_embeddings": 131072, "vocab_size": 262208, **extra}


def test_sliding_window_kv_by_hand():
    # no layer_types, no pattern: gemma3's period 6 -> layers 5 and 11 global, 10 sliding
    s = model_shape_from_config(_gemma3_12l_config())
    assert s.sliding_window == 1024 and s.n_sliding_layers == 10
    assert [i for i, swa in enumerate(s.sliding_layers) if not swa] == [5, 11]
    per_token = 4 * (256 + 256) * 2  # KV heads x (K + V head size) x 2 bytes (F16)
    assert kv_cache_bytes_for(s, 8192) == 10 * 1024 * per_token + 2 * 8192 * per_token == 109_051_904
    assert kv_cache_bytes_for(s, 8192, sliding=False) == 12 * 8192 * per_token == 384 * MiB
    # below the window every layer holds the whole context
    assert kv_cache_bytes_for(s, 1000) == 12 * 1000 * per_token
    # a q8_0 cache: 34 bytes per 32 elements
    assert kv_cache_bytes_for(s, 8192, "Q8_0") == (10 * 1024 + 2 * 8192) * 4 * 512 // 32 * 34
    # layer_types wins over the period; 4.x-style sliding_window_pattern is a period
    lt = ["sliding_attention", "full_attention"] * 6
    assert model_shape_from_config(_gemma3_12l_config(layer_types=lt)).n_sliding_layers == 6
    assert model_shape_from_config(_gemma3_12l_config(sliding_window_pattern=4)).n_sliding_layers == 9
    # Qwen2 names a window it does not use; a llama with a window but no pattern gets a full cache
    assert model_shape_from_config({**_gemma3_12l_config(), "model_type": "qwen2",
                                    "use_sliding_window": False}).sliding_window is None
    assert model_shape_from_config({**_gemma3_12l_config(), "model_type": "llama"}).sliding_window is None


def test_kv_table_stops_at_trained_context(tmp_path):
    s = model_shape_from_config(_gemma3_12l_config())
    t = kv_table(s)
    assert [e["context"] for e in t] == [2048, 4096, 8192, 16384, 32768, 65536, 131072]
    per_token = 4 * 512 * 2
    for e in t:
        assert e["kv_bytes"] == (10 * 1024 + 2 * e["context"]) * per_token
        assert e["kv_bytes_full"] == 12 * e["context"] * per_token
    short = ModelShape(2, 2, 16, max_context=5000)
    assert [e["context"] for e in kv_table(short)] == [2048, 4096, 5000]


def test_runtime_overhead_rule():
    assert runtime_overhead_bytes(10**9, 0) == 512 * MiB
    # + logits of a 512-token micro-batch (F32) + the F16 mask of 8192 x 512
    assert runtime_overhead_bytes(10**9, 8192, n_vocab=32000) == 512 * MiB + 512 * 32000 * 4 + 8192 * 512 * 2
    with pytest.raises(InputError):
        runtime_overhead_bytes(0, -1)


def test_longest_context_exact_at_the_boundary_and_monotone():
    s = model_shape_from_config(_gemma3_12l_config())
    weights = 2 * 10**9
    per_token = 4 * 512 * 2
    # closed form: past the window, each token costs 2 global layers x per_token + 1024 bytes of mask
    base = weights + 10 * 1024 * per_token + 512 * MiB + 512 * 262208 * 4
    for c in (3000, 50_000, 100_001):
        vram = base + c * (2 * per_token + 1024)
        assert longest_context(vram, weights, s) == c
        assert longest_context(vram - 1, weights, s) == c - 1
        assert memory_needed(weights, s, c) <= vram < memory_needed(weights, s, c + 1)
    # capped at the trained context; 0 when nothing fits
    assert longest_context(10**12, weights, s) == 131072
    assert longest_context(weights, weights, s) == 0
    assert longest_context(10**12, weights, s, cap=4096) == 4096
    found = [longest_context(v, weights, s, kv_type="Q8_0") for v in range(weights, weights + 2 * GiB, 37 * MiB)]
    assert found == sorted(found) and found[0] == 0 and found[-1] == 131072


def _write_gguf(path, arch, kv: dict, tensors: bool = True):
    w = gguf.GGUFWriter(str(path), arch)
    for k, v in kv.items():
        if isinstance(v, list):  # gguf-py types the array from its items (bool, int)
            w.add_array(f"{arch}.{k}", v)
        else:
            w.add_uint32(f"{arch}.{k}", v)
    if tensors:
        w.add_tensor("a.weight", np.zeros((4, 64), np.float32))  # 256 elements, 1024 bytes
        # q8_0: 64 rows of 64 -> 2 blocks of 34 bytes per row; bytes given raw
        w.add_tensor("b.weight", np.zeros((64, 68), np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_header_gives_params_bytes_and_shape(tmp_path):
    f = _write_gguf(tmp_path / "g3.gguf", "gemma3", {
        "block_count": 12, "context_length": 131072, "embedding_length": 2560, "attention.head_count": 8,
        "attention.head_count_kv": 4, "attention.key_length": 256, "attention.value_length": 256,
        "attention.sliding_window": 1024})
    m = read_gguf_model(f)
    assert m.params == 256 + 64 * 64 and m.weight_bytes == 1024 + 64 * 68
    assert m.shape == ModelShape(12, 4, 256, key_length=256, sliding_window=1024,
                                 sliding_layers=(True,) * 5 + (False,) + (True,) * 5 + (False,), max_context=131072)
    e = estimate_memory(model=f, context=8192, vram="24GB")
    assert e.params == 4352 and e.model_format == "gguf"
    row = e.row(THIS_FILE)
    assert row.weight_bytes == 5376 and row.bits_per_weight == pytest.approx(5376 * 8 / 4352)
    assert e.kv_bytes == 109_051_904 and e.kv_bytes_full == 384 * MiB
    assert all(r.max_context == 131072 for r in e.rows)  # a toy model fits any context in 24 GB
    assert e.rows[0].name == THIS_FILE and e.row("FP16").weight_bytes == 2 * 4352

    # per-layer KV heads (a 0 = no KV in that layer), head size from embedding_length / head_count,
    # a per-layer sliding pattern given as bools
    f2 = _write_gguf(tmp_path / "mix.gguf", "llama", {
        "block_count": 3, "embedding_length": 256, "attention.head_count": 4,
        "attention.head_count_kv": [2, 4, 0]})
    s = read_gguf_model(f2).shape
    assert (s.n_layers, s.n_kv_heads, s.head_dim, s.kv_heads_per_layer) == (3, 4, 64, (2, 4, 0))
    assert kv_cache_bytes_for(s, 100) == 100 * (2 + 4 + 0) * (64 + 64) * 2
    f3 = _write_gguf(tmp_path / "pat.gguf", "gemma3", {
        "block_count": 4, "attention.head_count": 2, "attention.head_count_kv": 1, "attention.key_length": 32,
        "attention.value_length": 16, "attention.sliding_window": 10,
        "attention.sliding_window_pattern": [True, False, True, True]})
    s = read_gguf_model(f3).shape
    assert s.sliding_layers == (True, False, True, True) and (s.key_length, s.value_length) == (32, 16)
    assert kv_cache_bytes_for(s, 50) == (3 * 10 + 50) * 1 * (32 + 16) * 2
    # no head counts: params still counted, context refused with the reason
    f4 = _write_gguf(tmp_path / "bare.gguf", "llama", {"block_count": 2})
    assert estimate_memory(model=f4).params == 4352
    with pytest.raises(InputError, match="head_count"):
        estimate_memory(model=f4, context=10)


def test_gguf_written_by_qconvert_matches_its_directory(tiny, tmp_path):
    import qconvert

    d = tiny("gemma3")
    out = qconvert.quantize(d, tmp_path / "g.gguf", type="Q4_K_M").output
    from_dir, from_file = estimate_memory(model=d, context=4096), estimate_memory(model=out, context=4096)
    reader = gguf.GGUFReader(out)
    assert from_file.params == sum(int(t.n_elements) for t in reader.tensors)
    assert from_file.row(THIS_FILE).weight_bytes == sum(int(t.n_bytes) for t in reader.tensors)
    a, b = from_dir.shape, from_file.shape
    assert (a.n_layers, a.n_kv_heads, a.head_dim, a.sliding_window, a.sliding_layers, a.max_context) == \
           (b.n_layers, b.n_kv_heads, b.head_dim, b.sliding_window, b.sliding_layers, b.max_context)
    assert a.sliding_layers == (True, False)  # layer_types in the fixture's config
    assert from_dir.kv_bytes == from_file.kv_bytes == (6 + 4096) * 1 * 128 * 2


def test_model_dir_alias_and_runtime_in_totals(tmp_path):
    d = _write_config(tmp_path / "m", {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                                       "hidden_size": 64, "max_position_embeddings": 4096, "vocab_size": 100})
    save_file({"a": np.zeros((64, 64), np.float16)}, str(d / "model.safetensors"))
    e = estimate_memory(model=d, context=1000, runtime_overhead=True, overhead="1MiB", vram="1GB")
    r = e.row("FP16")
    kv = 2 * 2 * 2 * 16 * 1000 * 2
    ro = 512 * MiB + 512 * 100 * 4 + 1000 * 512 * 2
    assert r.runtime_overhead_bytes == ro and r.total_bytes == 2 * 4096 + kv + ro + MiB
    # the row's max context is where the same total stops fitting
    assert memory_needed(r.weight_bytes, e.shape, r.max_context, extra=MiB) <= 10**9
    assert r.max_context == 4096 or memory_needed(r.weight_bytes, e.shape, r.max_context + 1, extra=MiB) > 10**9
    assert estimate_memory(model_dir=d, context=1000).kv_bytes == kv
    with pytest.raises(InputError, match="not both"):
        estimate_memory(model=d, model_dir=tmp_path)


def test_cli_model_gguf_vram_json(tmp_path, monkeypatch, capsys):
    f = _write_gguf(tmp_path / "g3.gguf", "gemma3", {
        "block_count": 12, "context_length": 131072, "embedding_length": 2560, "attention.head_count": 8,
        "attention.head_count_kv": 4, "attention.key_length": 256, "attention.value_length": 256,
        "attention.sliding_window": 1024})
    code, out, err = run_cli(["estimate-memory", "--model", f, "--vram", "1GB", "--json"], monkeypatch, capsys)
    assert code == 0, err
    d = json.loads(out)
    assert d["model_format"] == "gguf" and d["rows"][0]["name"] == THIS_FILE and d["runtime_overhead"] is True
    assert [e["context"] for e in d["kv_table"]][-1] == 131072
    per_token = 4 * 512 * 2
    # 1 GB - 512 MiB runtime - weights: (10*1024 + 2c) * per_token + 1024 c <= remaining
    left = 10**9 - 512 * MiB - 2 * 4352  # FP16 row; no vocabulary in this file
    c = (left - 10 * 1024 * per_token) // (2 * per_token + 1024)
    assert {r["name"]: r["max_context"] for r in d["rows"]}["FP16/BF16"] == c
    code, out, err = run_cli(["estimate-memory", "--model-dir", f, "--vram", "1GB"], monkeypatch, capsys)
    assert code == 0, err
    assert "max context" in out and "KV cache per context" in out and "sliding window" in out
    assert "128k" in out


def test_kv_type_is_one_llama_cpp_caches_in():
    from qconvert.errors import InputError

    shape = dict(layers=32, kv_heads=8, head_dim=128, context=8192)
    q8 = estimate_memory("8B", kv_type="q8_0", **shape).kv_bytes
    assert q8 == 32 * 8192 * 8 * 256 * 34 // 32  # K and V rows of 128, Q8_0's 34 bytes per 32
    assert estimate_memory("8B", kv_type="iq4_nl", **shape).kv_bytes == q8 * 18 // 34
    for bad in ("q4_k", "iq2_xxs", "mxfp4"):
        with pytest.raises(InputError, match="KV cache"):
            estimate_memory("8B", kv_type=bad, **shape)
