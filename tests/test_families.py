"""The dense families beyond Llama/Qwen/Gemma 3 convert, load in llama.cpp and compute what
transformers computes; their config values are checked with one-line errors; the registry
lists them.

Fixtures (fixtures/family_models.py) are tiny seeded bf16 checkpoints written by
transformers' own classes, sharded, with each family's quirks switched on. The reference
is transformers' float32 forward (eager attention) over 24 tokens; llama.cpp runs each
GGUF over the same ids. Tolerances are fractions of the reference logits' std (1.5-3.1),
measured over the 22 fixtures. F32 keeps every weight exact, so what remains is llama.cpp's
arithmetic (f16 KV cache): max |diff| 0.0011-0.0029 x std, bound 0.01. F16: 0.0016-0.0045,
bound 0.02. Q8_0: max 0.056-0.16 and mean 0.011-0.028 x std (correlation >= 0.9993), bounds
0.3 / 0.05. Q4_K_M on random weights loses far more (mean 0.063-0.25 x std, correlation
>= 0.951), bounds mean 0.4 and correlation 0.9. A conversion mistake costs far more than
the F32/F16 bounds (below). Every GGUF tensor of these fixtures was also checked equal,
bit for bit, to what llama.cpp's own convert_hf_to_gguf.py writes (by hand: the script is
not part of this repository)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest

import qconvert
from qconvert.errors import FormatError, UnsupportedError
from fixtures.family_models import FAMILIES, build, llama_logits, reference

TYPES = ("F32", "F16", "Q8_0", "Q4_K_M")
MAX_REL = {"F32": 0.01, "F16": 0.02, "Q8_0": 0.3}  # max |diff| / std
MEAN_REL = {"Q8_0": 0.05, "Q4_K_M": 0.4}  # mean |diff| / std
MIN_CORR = {"Q8_0": 0.999, "Q4_K_M": 0.9}
# F32 max |diff| / std with one quirk undone (measured once by patching the adapter; each is
# 16-800x the F32 bound): Gemma 2 norm +1 off 2.6, attention soft-cap left to llama.cpp's
# default 0.16, window ignored 1.4; Granite multipliers at 1: 8.1; LongRoPE long/short
# tables swapped 3.1, attention factor left at 1: 1.7; SmolLM3 q/k unpermuted 2.9; GLM-4
# rope over the whole head 3.4; Cohere2 sliding pattern of period 2: 2.4; OLMo 3 window
# ignored 4.2; Mistral 3 q/k unpermuted 2.4; Ministral 3 without the attention temperature
# 1.0, without yarn_log_mul 1.3.


@pytest.fixture(scope="session")
def family(tmp_path_factory):
    """name -> (model dir, token ids, transformers logits), built once per session."""
    from fixtures.tiny_models import train_tokenizer

    tok = train_tokenizer()
    root = tmp_path_factory.mktemp("family_models")
    made: dict[str, tuple] = {}

    def get(name: str):
        if name not in made:
            d = build(name, root / name, tok)
            made[name] = (d, *reference(name, d))
        return made[name]

    return get


@pytest.fixture(scope="session")
def gguf_of(family, tmp_path_factory):
    """(name, type) -> the family's GGUF of that type, converted once per session."""
    root = tmp_path_factory.mktemp("family_gguf")
    done: dict[tuple[str, str], Path] = {}

    def get(name: str, type_name: str) -> Path:
        if (name, type_name) not in done:
            out = root / f"{name}-{type_name}.gguf"
            done[name, type_name] = qconvert.quantize(family(name)[0], out, type=type_name).output
        return done[name, type_name]

    return get


def fields(path: Path) -> tuple[dict, dict]:
    r = gguf.GGUFReader(str(path))
    kv = {k: f.contents() for k, f in r.fields.items() if not k.startswith("tokenizer.")}
    return kv, {t.name: t for t in r.tensors}


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("name", list(FAMILIES))
def test_converts_and_matches_transformers(name, type_name, family, gguf_of):
    d, ids, ref = family(name)
    out = gguf_of(name, type_name)
    kv, _ = fields(out)
    assert kv["general.architecture"] == FAMILIES[name].gguf_arch

    got = llama_logits(out, ids)
    diff = np.abs(got - ref)
    std = float(ref.std())
    corr = float(np.corrcoef(got.ravel(), ref.ravel())[0, 1])
    agree = float(np.mean(got.argmax(-1) == ref.argmax(-1)))
    print(f"{name} {type_name}: max |diff| {diff.max():.5f}, mean {diff.mean():.5f} (logit std {std:.2f}), "
          f"correlation {corr:.5f}, argmax agreement {agree:.3f}")
    if type_name in MAX_REL:
        assert diff.max() <= MAX_REL[type_name] * std, diff.max()
    if type_name in MEAN_REL:
        assert diff.mean() <= MEAN_REL[type_name] * std, diff.mean()
        assert corr >= MIN_CORR[type_name], corr
    if type_name in ("F32", "F16"):
        assert agree == 1.0


# ----------------------------------------------------------------------- metadata

def _config(d: Path) -> dict:
    return json.loads((d / "config.json").read_text())


@pytest.fixture(scope="session")
def f32(family, gguf_of):
    """name -> (GGUF fields, tensors, transformers config) of the family's F32 GGUF."""
    import transformers

    done: dict[str, tuple] = {}

    def get(name: str):
        if name not in done:
            done[name] = (*fields(gguf_of(name, "F32")), transformers.AutoConfig.from_pretrained(family(name)[0]))
        return done[name]

    return get


def test_phi3_longrope_tables(f32):
    kv, tensors, cfg = f32("phi_longrope")
    rp = cfg.rope_parameters
    np.testing.assert_allclose(tensors["rope_factors_long.weight"].data, rp["long_factor"], rtol=1e-6)
    np.testing.assert_allclose(tensors["rope_factors_short.weight"].data, rp["short_factor"], rtol=1e-6)
    assert kv["phi3.rope.scaling.original_context_length"] == cfg.original_max_position_embeddings == 16
    assert kv["phi3.rope.scaling.attn_factor"] == pytest.approx(np.sqrt(1 + np.log(64 / 16) / np.log(16)))
    # fused as llama.cpp reads them: q, k, v rows; gate rows then up rows
    h = cfg.hidden_size
    assert tensors["blk.0.attn_qkv.weight"].shape.tolist() == [h, h + 2 * 2 * 64]
    assert tensors["blk.0.ffn_up.weight"].shape.tolist() == [h, 2 * cfg.intermediate_size]
    kv4, tensors4, _ = f32("phi4")
    assert kv4["phi3.attention.sliding_window"] == 0 and "rope_factors_long.weight" not in tensors4


def test_gemma2_caps_window_and_pattern(f32):
    kv, tensors, cfg = f32("gemma2")
    assert kv["gemma2.attn_logit_softcapping"] == pytest.approx(cfg.attn_logit_softcapping)
    assert kv["gemma2.final_logit_softcapping"] == pytest.approx(cfg.final_logit_softcapping)
    assert kv["gemma2.attention.sliding_window"] == cfg.sliding_window
    # the 4.x config gives no layer types: sliding first, alternating, as llama.cpp assumes
    assert "gemma2.attention.sliding_window_pattern" not in kv
    assert cfg.layer_types == ["sliding_attention", "full_attention"]
    assert "output.weight" not in tensors


def test_granite_multipliers(f32):
    kv, _, cfg = f32("granite")
    assert kv["granite.embedding_scale"] == pytest.approx(cfg.embedding_multiplier)
    assert kv["granite.residual_scale"] == pytest.approx(cfg.residual_multiplier)
    assert kv["granite.attention.scale"] == pytest.approx(cfg.attention_multiplier)
    assert kv["granite.logit_scale"] == pytest.approx(cfg.logits_scaling)


def test_olmo_norms_and_sliding_layers(f32):
    kv, tensors, cfg = f32("olmo2")
    assert tensors["blk.0.attn_q_norm.weight"].shape.tolist() == [cfg.hidden_size]
    assert "olmo2.attention.sliding_window" not in kv
    kv3, _, cfg3 = f32("olmo3")
    assert kv3["olmo2.attention.sliding_window"] == cfg3.sliding_window
    assert list(kv3.get("olmo2.attention.sliding_window_pattern", [True, True, True, False])) == \
        [t == "sliding_attention" for t in cfg3.layer_types]


def test_glm4_and_cohere2_metadata(f32):
    kv, tensors, cfg = f32("glm4")
    assert kv["glm4.rope.dimension_count"] == 32  # half of head_dim 64
    assert "blk.0.attn_q.bias" in tensors and "blk.0.post_ffw_norm.weight" in tensors
    kv, tensors, cfg = f32("cohere2")
    assert kv["cohere2.logit_scale"] == pytest.approx(cfg.logit_scale)
    assert kv["cohere2.attention.layer_norm_epsilon"] == pytest.approx(cfg.layer_norm_eps)
    assert "cohere2.attention.layer_norm_rms_epsilon" not in kv
    assert kv["cohere2.attention.sliding_window"] == cfg.sliding_window


def test_olmo1_cohere_phi2_metadata(f32):
    kv, tensors, cfg = f32("olmo1")
    assert kv["olmo.attention.clamp_kqv"] == pytest.approx(cfg.clip_qkv)
    assert kv["olmo.attention.layer_norm_epsilon"] == pytest.approx(1e-5)  # transformers' fixed value
    assert not [n for n in tensors if "norm" in n]  # weightless LayerNorms
    kv, _, cfg = f32("cohere")
    assert kv["command-r.logit_scale"] == pytest.approx(cfg.logit_scale)
    kv, tensors, cfg = f32("phi2")
    assert kv["phi2.rope.dimension_count"] == 24
    assert "output.bias" in tensors and "blk.0.attn_norm.bias" in tensors


def test_ministral3_yarn_and_temperature(f32):
    kv, _, cfg = f32("ministral3")
    rp = cfg.rope_parameters
    assert kv["mistral3.rope.scaling.type"] == "yarn"
    assert kv["mistral3.rope.scaling.factor"] == pytest.approx(rp["factor"])
    assert kv["mistral3.rope.scaling.original_context_length"] == rp["original_max_position_embeddings"]
    assert kv["mistral3.rope.scaling.yarn_log_multiplier"] == pytest.approx(rp["mscale_all_dim"])
    assert kv["mistral3.attention.temperature_scale"] == pytest.approx(rp["llama_4_scaling_beta"])


def test_apertus_xielu_parameters_per_layer(f32, family):
    from safetensors.torch import load_file

    kv, tensors, cfg = f32("apertus")
    d = family("apertus")[0]
    index = json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]
    for p in ("alpha_n", "alpha_p", "beta", "eps"):
        names = [f"model.layers.{i}.mlp.act_fn.{p}" for i in range(cfg.num_hidden_layers)]
        want = [float(load_file(d / index[n])[n].float().reshape(-1)[0]) for n in names]
        assert list(kv[f"xielu.{p}"]) == pytest.approx(want, rel=1e-6), p  # gguf-py keys these without the arch
    assert not [n for n in tensors if "act_fn" in n or "xielu" in n]


def test_mistral3_text_part_only(f32):
    kv, tensors, cfg = f32("mistral3")
    assert kv["mistral3.attention.key_length"] == cfg.text_config.head_dim == 32
    assert not [n for n in tensors if "vision" in n or "projector" in n or "patch" in n]
    assert kv["mistral3.block_count"] == cfg.text_config.num_hidden_layers


# ----------------------------------------------------------------------- config checks

def _edited(family, name: str, tmp_path: Path, **changes) -> Path:
    d = tmp_path / name
    shutil.copytree(family(name)[0], d)
    cfg = _config(d)
    for key, value in changes.items():
        if value is _DROP:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    (d / "config.json").write_text(json.dumps(cfg))
    return d


_DROP = object()


def _refused(d: Path, err: type, *needles: str, tmp_path: Path) -> None:
    with pytest.raises(err) as e:
        qconvert.quantize(d, tmp_path / "x.gguf", type="F32", dry_run=True)
    msg = str(e.value)
    assert "\n" not in msg and "config.json" in msg, msg
    for n in needles:
        assert n in msg, msg


_MINISTRAL_ROPE = FAMILIES["ministral3"].config["rope_parameters"]


@pytest.mark.parametrize("name,changes,err,needles", [
    ("phi_longrope", {"rope_scaling": {"type": "longrope", "long_factor": [1.0] * 3, "short_factor": [1.0] * 32}},
     FormatError, ("rope_scaling.long_factor", "32 positive numbers")),
    ("phi_longrope", {"rope_scaling": {"type": "longrope", "long_factor": ["x"] * 32, "short_factor": [1.0] * 32}},
     FormatError, ("rope_scaling.long_factor",)),
    ("gemma2", {"attn_logit_softcapping": None}, UnsupportedError, ("attn_logit_softcapping", "soft-caps")),
    ("gemma2", {"final_logit_softcapping": -3}, FormatError, ("final_logit_softcapping", "-3")),
    ("gemma2", {"query_pre_attn_scalar": 256}, UnsupportedError, ("query_pre_attn_scalar",)),
    ("gemma2", {"tie_word_embeddings": False}, UnsupportedError, ("tie_word_embeddings",)),
    ("granite", {"embedding_multiplier": "12"}, FormatError, ("embedding_multiplier", "'12'")),
    ("granite", {"logits_scaling": 10**400}, FormatError, ("logits_scaling",)),
    ("granite", {"residual_multiplier": 0}, FormatError, ("residual_multiplier",)),
    ("olmo2", {"tie_word_embeddings": True}, UnsupportedError, ("tie_word_embeddings",)),
    ("olmo3", {"layer_types": ["sliding_attention"] * 3}, FormatError, ("layer_types", "4 entries")),
    ("olmo3", {"layer_types": ["sliding_attention"] * 3 + ["chunked_attention"]}, UnsupportedError,
     ("layer_types", "chunked_attention")),
    ("olmo3", {"sliding_window": 0}, FormatError, ("sliding_window",)),
    ("smollm3", {"no_rope_layers": [1, 1, 0, 1]}, UnsupportedError, ("no_rope_layers", "every 4th")),
    ("smollm3", {"no_rope_layers": [1, 1, 1, 2]}, FormatError, ("no_rope_layers", "0 or 1")),
    ("smollm3", {"no_rope_layers": _DROP, "no_rope_layer_interval": 3}, UnsupportedError,
     ("no_rope_layer_interval",)),
    ("smollm3", {"use_sliding_window": "yes"}, FormatError, ("use_sliding_window",)),
    ("glm4", {"partial_rotary_factor": 1.5}, FormatError, ("partial_rotary_factor",)),
    ("cohere2", {"logit_scale": -1}, FormatError, ("logit_scale",)),
    ("cohere2", {"sliding_window_pattern": 0}, FormatError, ("sliding_window_pattern",)),
    ("cohere2", {"attention_bias": True}, UnsupportedError, ("attention_bias",)),
    ("cohere2", {"layer_norm_eps": 2.0}, FormatError, ("layer_norm_eps",)),
    ("cohere2", {"sliding_window_pattern": "LLXG"}, FormatError, ("sliding_window_pattern", "letters")),
    ("exaone4", {"sliding_window": 4096, "layer_types": _DROP, "sliding_window_pattern": "LLLG"},
     UnsupportedError, ("sliding_window", "64 layers")),
    ("starcoder2", {"use_bias": False}, UnsupportedError, ("use_bias",)),
    ("cohere", {"use_qk_norm": True}, UnsupportedError, ("use_qk_norm", "64")),
    ("ministral3", {"rope_parameters": dict(_MINISTRAL_ROPE, mscale=2.0)}, UnsupportedError,
     ("rope_parameters.mscale",)),
    ("ministral3", {"rope_parameters": dict(_MINISTRAL_ROPE, llama_4_scaling_beta="0.1")}, FormatError,
     ("rope_parameters.llama_4_scaling_beta",)),
    ("ministral3", {"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}, UnsupportedError,
     ("rope_type", "yarn")),
    ("cohere", {"model_max_length": -5}, FormatError, ("model_max_length",)),
    ("phi2", {"qk_layernorm": True}, UnsupportedError, ("qk_layernorm",)),
    ("phi2", {"num_key_value_heads": 2}, UnsupportedError, ("KV heads",)),
    ("olmo1", {"clip_qkv": -1}, FormatError, ("clip_qkv",)),
    ("nemotron", {"tie_word_embeddings": True}, UnsupportedError, ("tied embeddings",)),
    ("stablelm", {"use_parallel_residual": "true"}, FormatError, ("use_parallel_residual",)),
    ("stablelm", {"num_key_value_heads": 3}, FormatError, ("num_key_value_heads",)),
    ("nemotron", {"norm_eps": 0.9}, FormatError, ("norm_eps",)),
    ("starcoder2", {"use_bias": 1}, FormatError, ("use_bias", "true or false")),
    ("cohere2", {"attention_bias": "no"}, FormatError, ("attention_bias", "true or false")),
    ("exaone4", {"sliding_window": "4096"}, FormatError, ("sliding_window",)),
    ("starcoder2", {"norm_epsilon": "1e-5"}, FormatError, ("norm_epsilon",)),
    ("arcee", {"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 4.0,
                                   "high_freq_factor": 1.0}}, FormatError, ("rope_parameters.high_freq_factor",)),
])
def test_config_values_checked(name, changes, err, needles, family, tmp_path):
    _refused(_edited(family, name, tmp_path, **changes), err, *needles, tmp_path=tmp_path)


def test_mistral3_v4_prefixes_give_the_same_gguf(family, f32, tmp_path):
    """transformers 4.x saved Mistral3ForConditionalGeneration as language_model.model.* /
    language_model.lm_head.* / vision_tower.*; the GGUF is the same as from 5.x names."""
    from safetensors.torch import load_file, save_file  # bf16 shards

    src = family("mistral3")[0]
    d = tmp_path / "v4"
    shutil.copytree(src, d)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    renames = (("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
               ("model.vision_tower.", "vision_tower."), ("model.multi_modal_projector.", "multi_modal_projector."))

    def v4(name: str) -> str:
        return next((new + name[len(old):] for old, new in renames if name.startswith(old)), name)

    for shard in sorted(set(index["weight_map"].values())):
        save_file({v4(k): v for k, v in load_file(src / shard).items()}, d / shard)
    index["weight_map"] = {v4(k): v for k, v in index["weight_map"].items()}
    assert any(k.startswith("language_model.model.layers.") for k in index["weight_map"])
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    out = qconvert.quantize(d, tmp_path / "v4.gguf", type="F32").output
    _, tensors, _ = f32("mistral3")
    _, tensors4 = fields(out)
    assert sorted(tensors4) == sorted(tensors)
    for n in tensors:
        np.testing.assert_array_equal(tensors4[n].data, tensors[n].data, err_msg=n)


def test_mistral3_other_text_model_refused(family, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(family("mistral3")[0], d)
    cfg = _config(d)
    cfg["text_config"]["model_type"] = "mistral4"
    (d / "config.json").write_text(json.dumps(cfg))
    _refused(d, UnsupportedError, "text_config.model_type", "mistral4", tmp_path=tmp_path)
    cfg["text_config"]["model_type"] = "mistral"
    cfg["text_config"]["hidden_size"] = 0
    (d / "config.json").write_text(json.dumps(cfg))
    _refused(d, FormatError, "text_config.hidden_size", tmp_path=tmp_path)


# ----------------------------------------------------------------------- design

def test_split_rows_parts_load_their_rows():
    from qconvert.arch.rope import generated
    from qconvert.arch.transforms import split_rows

    fused = generated("fused", np.arange(12, dtype=np.float32).reshape(6, 2))
    q, k = split_rows(fused, [("q.weight", 4), ("k.weight", 2)])
    assert q.shape == (4, 2) and k.shape == (2, 2)
    np.testing.assert_array_equal(q.load(), np.arange(8).reshape(4, 2))
    np.testing.assert_array_equal(k.load(), np.arange(8, 12).reshape(2, 2))
    with pytest.raises(ValueError):
        split_rows(fused, [("q.weight", 4)])


@pytest.mark.parametrize("theta,head_dim,orig", [(500000.0, 64, 64), (500000.0, 128, 8192), (12e6, 80, 16384)])
def test_llama3_rope_table_is_what_transformers_scales_by(theta, head_dim, orig):
    """rope_freqs = default inverse frequencies / transformers' llama3 ones (llama.cpp
    divides each frequency by its factor)."""
    import transformers
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from qconvert.arch.rope import llama3_rope_factors

    rp = {"rope_type": "llama3", "rope_theta": theta, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": orig}
    cfg = transformers.LlamaConfig(hidden_size=head_dim * 2, num_attention_heads=2, head_dim=head_dim,
                                   rope_parameters=rp)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg)
    plain = 1.0 / theta ** (np.arange(0, head_dim, 2) / head_dim)
    np.testing.assert_allclose(llama3_rope_factors(rp, head_dim), plain / scaled.double().numpy(), rtol=2e-5)


def test_stacked_joins_in_order_and_checks_shapes():
    from qconvert.arch.rope import generated
    from qconvert.arch.transforms import stacked

    parts = [(f"norms.{i}.weight", generated(f"h{i}", np.full(3, i, np.float32)).handle) for i in range(4)]
    s = stacked("blk.0.attn_q_norm.weight", parts)
    assert s.shape == (4, 3)
    np.testing.assert_array_equal(s.load()[:, 0], [0, 1, 2, 3])
    with pytest.raises(FormatError, match="norms.1.weight"):
        stacked("x", [parts[0], ("norms.1.weight", generated("odd", np.zeros(2, np.float32)).handle)])


def test_stablelm_per_head_norms_stacked(f32, family):
    kv, tensors, cfg = f32("stablelm")
    q = tensors["blk.1.attn_q_norm.weight"]
    assert q.shape.tolist() == [cfg.hidden_size // cfg.num_attention_heads, cfg.num_attention_heads]
    assert tensors["blk.1.attn_k_norm.weight"].shape.tolist()[1] == cfg.num_key_value_heads
    assert "blk.0.ffn_norm.weight" not in tensors  # parallel blocks: one norm per layer
    assert kv["stablelm.use_parallel_residual"] is True
    from safetensors.torch import load_file

    d = family("stablelm")[0]
    index = json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]
    head2 = "model.layers.1.self_attn.q_layernorm.norms.2.weight"
    np.testing.assert_array_equal(np.asarray(q.data)[2], load_file(d / index[head2])[head2].float().numpy())


def test_registry_lists_every_family_with_a_description():
    from qconvert.arch.catalog import families, help_text

    listed = {n: f for f in families() for n in f.hf_names}
    for spec in FAMILIES.values():
        assert listed[spec.arch].gguf_arch == spec.gguf_arch
        assert listed[spec.arch].description
    text = help_text()
    assert all(spec.arch in text for spec in FAMILIES.values())


def test_quantize_help_lists_architectures():
    from typer.testing import CliRunner

    from qconvert.cli.app import get_app

    res = CliRunner().invoke(get_app(), ["quantize", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    for spec in FAMILIES.values():
        assert spec.arch in res.output


def test_readme_table_matches_registry():
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, str(root / "scripts" / "arch_table.py"), "--check"],
                         capture_output=True, text=True, cwd=root)
    assert res.returncode == 0, res.stdout + res.stderr
