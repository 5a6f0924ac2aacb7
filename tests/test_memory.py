"""`qconvert.estimate_memory` and `qconvert estimate-memory`: figures checked by hand.

Byte counts per block come from llama.cpp's block structs (ggml-common.h): block_q8_0 is
an f16 scale + 32 int8 = 34 bytes per 32 weights; block_q6_K 210 bytes, block_q4_K 144
bytes per 256 weights."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

from qconvert.errors import InputError
from qconvert.plan.memory import (
    PRECISIONS, estimate_memory, kv_cache_bytes, model_shape_from_dir, params_from_dir, parse_bytes, parse_params,
)

GiB = 2**30


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
    assert [p.name for p in PRECISIONS] == ["FP32", "FP16/BF16", "INT8", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M",
                                            "INT4", "Q3_K_M", "Q2_K"]
    # heavier types never need less memory
    sizes = [e.row(n).weight_bytes for n in ("FP32", "FP16", "Q8_0", "INT8", "Q6_K", "Q5_K_M", "Q4_K_M",
                                             "INT4", "Q3_K_M", "Q2_K")]
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
