"""Each supported architecture converts, loads in llama.cpp and computes what transformers
computes; broken model directories fail with one line that names the file.

Fixtures are tiny random checkpoints written by transformers itself (fixtures/tiny_models.py).
The reference is transformers' forward pass in float32 over the bf16 checkpoint; llama.cpp
runs our GGUF over the same token ids. F32 keeps every weight exact (bf16 widens exactly), so
the remaining difference is llama.cpp's arithmetic (an f16 KV cache, tanh-GELU table):
measured max |diff| 0.003-0.008 on logits with std ~3. F16 rounds weights and activations a
little more (0.005-0.017). Each tolerance sits well below what a conversion mistake costs:
dropping Gemma's +1 norm offset, the per-layer sliding pattern, the window, the swa rope base,
the global rope scaling, the soft-cap, Llama's q/k permutation, the llama3 rope factors, or
permuting Qwen's q/k moved the max difference by 0.25 to 36.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

import qconvert
from qconvert.errors import FormatError, InputError, UnsupportedError
from fixtures.tiny_models import SPECS, build, train_tokenizer

PROMPT = "The return statement leaves the current function call with the expression list (or None)"
N_TOKENS = 24
GGUF_ARCH = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2",
             "Qwen3ForCausalLM": "qwen3", "Gemma3ForCausalLM": "gemma3"}
# max |llama.cpp - transformers| allowed, as a fraction of the reference logits' std
TOLERANCE = {"F32": 0.01, "F16": 0.02}


@pytest.fixture(scope="session")
def reference(tiny):
    """name -> (token ids, transformers logits [n_tokens, vocab], transformers config)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import transformers

    torch.set_num_threads(2)
    transformers.utils.logging.disable_progress_bar()
    done: dict[str, tuple] = {}

    def get(name: str):
        if name not in done:
            d = tiny(name)
            ids = AutoTokenizer.from_pretrained(d)(PROMPT)["input_ids"][:N_TOKENS]
            assert len(ids) == N_TOKENS
            model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0].numpy()
            done[name] = (ids, logits, model.config)
        return done[name]

    return get


def llama_logits(path: Path, ids: list[int]) -> np.ndarray:
    from qconvert.eval.llama_model import open_llama

    llm = open_llama(path, n_ctx=128, logits_all=True, n_threads=2)
    llm.eval(ids)
    out = np.array(llm.scores[: len(ids)], dtype=np.float32)
    llm.close()
    return out


def fields(path: Path) -> tuple[dict, set[str]]:
    r = gguf.GGUFReader(str(path))
    kv = {k: f.contents() for k, f in r.fields.items() if not k.startswith("tokenizer.")}
    return kv, {t.name for t in r.tensors}


def check_metadata(kv: dict, names: set[str], cfg, arch: str) -> None:
    """GGUF keys against transformers' parsed config (not against our own reading of it)."""
    a = GGUF_ARCH[arch]
    rope = cfg.rope_parameters.get("full_attention", cfg.rope_parameters)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    expect = {
        "general.architecture": a,
        f"{a}.block_count": cfg.num_hidden_layers,
        f"{a}.context_length": cfg.max_position_embeddings,
        f"{a}.embedding_length": cfg.hidden_size,
        f"{a}.feed_forward_length": cfg.intermediate_size,
        f"{a}.attention.head_count": cfg.num_attention_heads,
        f"{a}.attention.head_count_kv": cfg.num_key_value_heads,
        f"{a}.attention.key_length": head_dim,
        f"{a}.attention.value_length": head_dim,
        f"{a}.rope.dimension_count": head_dim,
        f"{a}.vocab_size": cfg.vocab_size,
    }
    for k, v in expect.items():
        assert kv.get(k) == v, (k, kv.get(k), v)
    assert kv[f"{a}.rope.freq_base"] == pytest.approx(rope["rope_theta"])
    assert kv[f"{a}.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg.rms_norm_eps, rel=1e-6)
    assert ("output.weight" in names) == (not cfg.tie_word_embeddings)
    assert ("rope_freqs.weight" in names) == (rope.get("rope_type") == "llama3")
    assert ("blk.0.attn_q.bias" in names) == (arch == "Qwen2ForCausalLM")
    assert ("blk.1.attn_k_norm.weight" in names) == (a in ("qwen3", "gemma3"))
    if a == "gemma3":
        sliding = [t == "sliding_attention" for t in cfg.layer_types]
        assert kv["gemma3.attention.sliding_window"] == cfg.sliding_window
        assert kv["gemma3.rope.freq_base_swa"] == pytest.approx(cfg.rope_parameters["sliding_attention"]["rope_theta"])
        # written only when it differs from llama.cpp's built-in period of 6
        pattern = kv.get("gemma3.attention.sliding_window_pattern", [i % 6 < 5 for i in range(len(sliding))])
        assert list(pattern) == sliding
        if rope.get("rope_type") == "linear":
            assert kv["gemma3.rope.scaling.type"] == "linear"
            assert kv["gemma3.rope.scaling.factor"] == pytest.approx(rope["factor"])
        assert kv.get("gemma3.final_logit_softcapping") == (
            pytest.approx(cfg.final_logit_softcapping) if cfg.final_logit_softcapping else None)


@pytest.mark.parametrize("type_name", ["F32", "F16"])
@pytest.mark.parametrize("name", list(SPECS))
def test_converts_loads_and_matches_transformers(name, type_name, tiny, reference, tmp_path):
    ids, ref, cfg = reference(name)
    out = tmp_path / f"{name}-{type_name}.gguf"
    qconvert.quantize(tiny(name), out, type=type_name)
    kv, names = fields(out)
    check_metadata(kv, names, cfg, SPECS[name].arch)

    got = llama_logits(out, ids)
    diff = np.abs(got - ref).max()
    agree = float(np.mean(got.argmax(-1) == ref.argmax(-1)))
    print(f"{name} {type_name}: max |diff| {diff:.5f} (logit std {ref.std():.2f}), argmax agreement {agree:.3f}")
    assert diff <= TOLERANCE[type_name] * ref.std(), diff
    assert agree >= 0.95


# ----------------------------------------------------------------------- Gemma 3 multimodal

@pytest.mark.parametrize("prefix", ["model.language_model.", "language_model.model."])
def test_gemma3_conditional_generation_text_part(prefix, tiny, tmp_path):
    """A Gemma3ForConditionalGeneration checkpoint (5.x or 4.x tensor prefixes, config under
    text_config, vision tensors beside) gives the same GGUF tensors as the text model."""
    import torch
    from safetensors.torch import load_file, save_file

    src = tiny("gemma3")
    mm = tmp_path / "mm"
    mm.mkdir()
    for f in src.glob("tokenizer*"):
        shutil.copy(f, mm)
    text_cfg = json.loads((src / "config.json").read_text())
    text_cfg.pop("architectures")
    (mm / "config.json").write_text(json.dumps({
        "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
        "text_config": text_cfg, "vision_config": {"hidden_size": 16}}))
    index = json.loads((src / "model.safetensors.index.json").read_text())
    weight_map = {}
    for shard in sorted(set(index["weight_map"].values())):
        tensors = {prefix + k[len("model."):] if k.startswith("model.") else k: v
                   for k, v in load_file(src / shard).items()}
        save_file(tensors, mm / shard)
        weight_map.update(dict.fromkeys(tensors, shard))
    vision = "model.vision_tower.patch.weight" if prefix.startswith("model.") else "vision_tower.patch.weight"
    save_file({vision: torch.ones(4, 4)}, mm / "vision.safetensors")
    weight_map[vision] = "vision.safetensors"
    (mm / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))

    a = qconvert.quantize(src, tmp_path / "text.gguf", type="F32").output
    b = qconvert.quantize(mm, tmp_path / "mm.gguf", type="F32").output
    ra, rb = gguf.GGUFReader(str(a)), gguf.GGUFReader(str(b))
    ta, tb = {t.name: t for t in ra.tensors}, {t.name: t for t in rb.tensors}
    assert sorted(ta) == sorted(tb)
    for n in ta:
        np.testing.assert_array_equal(ta[n].data, tb[n].data, err_msg=n)
    assert fields(a)[0].keys() - {"general.name"} == fields(b)[0].keys() - {"general.name"}


def test_gemma3_query_scale_llama_cpp_cannot_express(tiny, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny("gemma3"), d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["query_pre_attn_scalar"] = 256  # head_dim is 64: llama.cpp would scale by 1/8, HF by 1/16
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedError, match="query_pre_attn_scalar"):
        qconvert.quantize(d, tmp_path / "x.gguf", type="F32", dry_run=True)


# ----------------------------------------------------------------------- broken inputs

@pytest.fixture
def broken(tiny, tmp_path):
    """A writable copy of the llama fixture to damage."""
    d = tmp_path / "model"
    shutil.copytree(tiny("llama"), d)
    return d


def _fails(d: Path, err: type, *needles: str, tmp: Path) -> str:
    out = tmp / "out.gguf"
    with pytest.raises(err) as ei:
        qconvert.quantize(d, out, type="F32")
    msg = str(ei.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, (n, msg)
    assert not out.exists()
    return msg


def _set_arch(d: Path, name: str) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = [name]
    (d / "config.json").write_text(json.dumps(cfg))


def test_unknown_architecture_lists_supported(broken, tmp_path):
    _set_arch(broken, "FalconMambaForCausalLM")
    _fails(broken, UnsupportedError, "FalconMambaForCausalLM", str(broken / "config.json"),
           "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
           "Gemma3ForCausalLM", tmp=tmp_path)


def test_cli_one_line_error_and_exit_code(broken, tmp_path):
    _set_arch(broken, "FalconMambaForCausalLM")
    out = tmp_path / "cli.gguf"
    p = subprocess.run([sys.executable, "-m", "qconvert", "quantize", str(broken), "-o", str(out), "-t", "F32"],
                       capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1],
                       env=dict(os.environ, COLUMNS="80", QCONVERT_DEBUG="0"))
    assert p.returncode not in (0, 70), p.stderr  # 70 is the CLI's "internal error"
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert "FalconMambaForCausalLM" in lines[0] and "config.json" in lines[0]
    assert "Traceback" not in p.stderr
    assert not out.exists()


def test_missing_config(broken, tmp_path):
    (broken / "config.json").unlink()
    _fails(broken, InputError, str(broken / "config.json"), tmp=tmp_path)


def test_garbled_config(broken, tmp_path):
    (broken / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "hidden_size": 25')
    _fails(broken, FormatError, str(broken / "config.json"), "JSON", tmp=tmp_path)


def test_missing_shard(broken, tmp_path):
    shard = sorted(broken.glob("model-*.safetensors"))[1]
    shard.unlink()
    _fails(broken, InputError, str(shard), "missing", tmp=tmp_path)


def test_tensor_in_index_but_absent_from_shard(broken, tmp_path):
    path = broken / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    shard = index["weight_map"]["model.norm.weight"]
    index["weight_map"]["model.layers.0.mlp.extra_proj.weight"] = shard
    path.write_text(json.dumps(index))
    _fails(broken, FormatError, str(broken / shard), "model.layers.0.mlp.extra_proj.weight", tmp=tmp_path)


def test_integer_weight(broken, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    index = json.loads((broken / "model.safetensors.index.json").read_text())
    shard = broken / index["weight_map"]["model.layers.1.mlp.up_proj.weight"]
    tensors = load_file(shard)
    name = "model.layers.1.mlp.up_proj.weight"
    tensors[name] = torch.zeros(tensors[name].shape, dtype=torch.int32)
    save_file(tensors, shard, metadata={"format": "pt"})
    _fails(broken, UnsupportedError, str(shard), "model.layers.1.mlp.up_proj.weight", "I32", tmp=tmp_path)


def test_config_silent_on_tying_keeps_stored_lm_head(broken, tmp_path):
    """LlamaConfig's default is untied; a config.json without the key and with an lm_head
    must keep it as output.weight rather than fall back to the embeddings."""
    cfg = json.loads((broken / "config.json").read_text())
    del cfg["tie_word_embeddings"]
    (broken / "config.json").write_text(json.dumps(cfg))
    names = [t.name for t in qconvert.quantize(broken, tmp_path / "x.gguf", type="F32", dry_run=True).plan.tensors]
    assert "output.weight" in names and "token_embd.weight" in names
