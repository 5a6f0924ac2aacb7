"""llama-quantize's preset mixes, checked against llama.cpp's own quantizer.

For every preset and model, the tensor -> type map of our plan must equal the map in the
file llama.cpp's `llama_model_quantize` writes from the same F32 GGUF. Models:
  * tiny Hugging Face checkpoints (Llama, Qwen2, Qwen3, Gemma 3; GQA 1-4, tied and untied
    embeddings, 4-16 layers, row widths that force fallbacks), converted to F32 GGUF by
    qconvert itself: this also checks that our names and shapes are what llama.cpp reads;
  * GGUFs written directly with gguf-py for what no tiny checkpoint reaches: an 80-layer
    GQA Llama (llama.cpp's "70B" rule), 8- and 4-expert MoE, Falcon (fused attn_qkv).
llama.cpp's quantizer needs no tokenizer for this: it reads the header and the tensors."""

from __future__ import annotations

import ctypes
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import pytest

import qconvert
from qconvert.arch import adapter_for
from qconvert.errors import InputError, ShapeError, UnsupportedError
from qconvert.plan.presets import BITS_TO_PRESET, PRESETS, parse_override, preset_plan
from qconvert.plan.rules import make_plan, single_type_rules
from qconvert.source.checkpoint import Checkpoint

ALL = ["Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "Q8_0",
       "Q4_0", "Q4_1", "Q5_0", "Q5_1", "F16", "BF16", "F32", "MXFP4_MOE"]

# llama.cpp logs every tensor; keep the test output readable
_QUIET = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)(lambda *a: None)
llama_cpp.llama_log_set(_QUIET, None)


# -- llama.cpp's side ----------------------------------------------------------------------
def _ftype(preset: str) -> int:
    return getattr(llama_cpp, "LLAMA_FTYPE_ALL_F32" if preset == "F32" else f"LLAMA_FTYPE_MOSTLY_{preset}")


def llama_types(src: Path, out: Path, preset: str, *, overrides=(), pure=False,
                output_tensor_type=None, token_embedding_type=None) -> dict[str, str]:
    """Run llama.cpp's quantizer on 2 threads; name -> type of the file it wrote."""
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = _ftype(preset)
    p.nthread = 2
    p.pure = pure
    if output_tensor_type:
        p.output_tensor_type = int(gguf.GGMLQuantizationType[output_tensor_type])
    if token_embedding_type:
        p.token_embedding_type = int(gguf.GGMLQuantizationType[token_embedding_type])
    keep = None
    if overrides:
        keep = (llama_cpp.llama_model_tensor_override * (len(overrides) + 1))()
        for i, (pat, typ) in enumerate(overrides):
            keep[i].pattern = pat.encode()
            keep[i].type = int(gguf.GGMLQuantizationType[typ])
        keep[len(overrides)].pattern = None  # terminator
        p.tt_overrides = ctypes.cast(keep, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(p))
    assert rc == 0, f"llama_model_quantize failed on {src} ({preset})"
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(out).tensors}
    out.unlink()
    return types


# -- our side ---------------------------------------------------------------------------------
def plan_from_gguf(path: Path, preset: str, **kw):
    """Plan from what llama.cpp reads: the header's hparams and the tensor shapes."""
    r = gguf.GGUFReader(path)
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()

    def kv(key: str) -> int:
        f = r.fields.get(f"{arch}.{key}")
        return int(f.parts[-1][0]) if f is not None else 0

    tensors = [(t.name, tuple(int(d) for d in reversed(t.shape)), "F32") for t in r.tensors]
    return preset_plan(tensors, preset, n_layers=kv("block_count"), n_head=kv("attention.head_count"),
                       n_head_kv=kv("attention.head_count_kv"), n_expert=kv("expert_count"),
                       arch_name=arch, **kw)


def plan_from_checkpoint(model_dir: Path, preset: str, **kw):
    """Plan the way the pipeline does: the adapter's tensors and hparams."""
    adapter = adapter_for(Checkpoint(model_dir))
    hp = adapter.hp
    tensors = [(s.name, s.shape, s.src_dtype) for s in adapter.tensors()]
    return preset_plan(tensors, preset, n_layers=hp.n_layers, n_head=hp.n_head, n_head_kv=hp.n_head_kv,
                       n_expert=int(hp.get("num_local_experts", "num_experts", default=0) or 0),
                       arch_name=adapter.arch_name, **kw)


def types_of(plan) -> dict[str, str]:
    return {t.name: t.qtype.name for t in plan.tensors}


def diff(ours: dict, theirs: dict) -> dict:
    return {k: (ours.get(k), theirs.get(k)) for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)}


# -- tiny Hugging Face checkpoints -----------------------------------------------------------
_COMMON = dict(vocab_size=512, max_position_embeddings=256, rms_norm_eps=1e-6)
HF_MODELS = {
    # GQA 4 (Q2_K's attn_v -> Q4_K), untied output, 8 layers: use_more_bits picks 0,3,6,7
    "llama-gqa4": ("LlamaConfig", "LlamaForCausalLM",
                   dict(_COMMON, hidden_size=256, intermediate_size=512, num_hidden_layers=8,
                        num_attention_heads=4, num_key_value_heads=1, head_dim=64, tie_word_embeddings=False)),
    # 16 layers (Q3_K_M's first-1/16 ffn_down), GQA 2, tied embeddings, q/k/v biases
    "qwen2-16l": ("Qwen2Config", "Qwen2ForCausalLM",
                  dict(_COMMON, hidden_size=256, intermediate_size=256, num_hidden_layers=16,
                       num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)),
    # q_norm/k_norm, q wider than the hidden size
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM",
              dict(_COMMON, hidden_size=256, intermediate_size=512, num_hidden_layers=6,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=128, tie_word_embeddings=False)),
    # always tied; extra pre/post norms; GQA 4
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM",
               dict(_COMMON, hidden_size=256, intermediate_size=512, num_hidden_layers=6,
                    num_attention_heads=4, num_key_value_heads=1, head_dim=64, query_pre_attn_scalar=64,
                    sliding_window=8, tie_word_embeddings=True)),
    # ffn_down rows of 320: K-quants fall back to 32-wide types
    "llama-ffn320": ("LlamaConfig", "LlamaForCausalLM",
                     dict(_COMMON, hidden_size=256, intermediate_size=320, num_hidden_layers=4,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=64, tie_word_embeddings=True)),
    # rows of 160 (no K-quant fits; the tied output takes llama.cpp's Q8_0 branch) and ffn_down
    # rows of 200 (not even 32-wide blocks fit: F16)
    "qwen2-odd": ("Qwen2Config", "Qwen2ForCausalLM",
                  dict(_COMMON, hidden_size=160, intermediate_size=200, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)),
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("presets")


@pytest.fixture(scope="module")
def tokenizer():
    from fixtures.tiny_models import train_tokenizer

    return train_tokenizer()


_BUILT: dict[str, tuple[Path, Path]] = {}


@pytest.fixture
def hf_model(workdir, tokenizer, request) -> tuple[Path, Path]:
    """(checkpoint dir, F32 GGUF made by qconvert) for model `request.param`, built once."""
    name = request.param
    if name not in _BUILT:
        import torch
        import transformers
        from fixtures.tiny_models import save_tokenizer

        cfg_cls, model_cls, cfg = HF_MODELS[name]
        torch.manual_seed(0)
        model = getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**cfg))
        d = workdir / name
        model.to(torch.bfloat16).save_pretrained(d)
        save_tokenizer(tokenizer, d)
        f32 = workdir / f"{name}-F32.gguf"
        qconvert.quantize(d, f32, type="F32")
        _BUILT[name] = (d, f32)
    return _BUILT[name]


@pytest.mark.parametrize("preset", ALL)
@pytest.mark.parametrize("hf_model", list(HF_MODELS), indirect=True)
def test_preset_matches_llama_quantize(hf_model, preset, workdir):
    model_dir, f32 = hf_model
    plan = plan_from_checkpoint(model_dir, preset)
    theirs = llama_types(f32, workdir / "out.gguf", preset)
    assert diff(types_of(plan), theirs) == {}
    assert plan.ftype == preset


# -- GGUFs written directly: 70B, MoE, Falcon ---------------------------------------------
def write_gguf(path: Path, arch="llama", n_layers=8, hidden=256, ff=256, n_head=4, n_head_kv=1,
               vocab=256, tied=False, n_expert=0) -> Path:
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(n_layers)
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_layer_norm_eps(1e-5)
    w.add_rope_dimension_count(hidden // n_head)
    if n_expert:
        w.add_expert_count(n_expert)
        w.add_expert_used_count(2)
    rng = np.random.default_rng(0)

    def t(name, *shape):
        w.add_tensor(name, rng.standard_normal(shape).astype(np.float32))

    hd = hidden // n_head
    t("token_embd.weight", vocab, hidden)
    t("output_norm.weight", hidden)
    if not tied:
        t("output.weight", vocab, hidden)
    for i in range(n_layers):
        b = f"blk.{i}."
        t(b + "attn_norm.weight", hidden)
        t(b + "ffn_norm.weight", hidden)
        if arch == "falcon":
            t(b + "attn_qkv.weight", (n_head + 2 * n_head_kv) * hd, hidden)
        else:
            t(b + "attn_q.weight", n_head * hd, hidden)
            t(b + "attn_k.weight", n_head_kv * hd, hidden)
            t(b + "attn_v.weight", n_head_kv * hd, hidden)
        t(b + "attn_output.weight", hidden, n_head * hd)
        if n_expert:
            t(b + "ffn_gate_inp.weight", n_expert, hidden)
            t(b + "ffn_gate_exps.weight", n_expert, ff, hidden)
            t(b + "ffn_up_exps.weight", n_expert, ff, hidden)
            t(b + "ffn_down_exps.weight", n_expert, hidden, ff)
        else:
            if arch != "falcon":
                t(b + "ffn_gate.weight", ff, hidden)
            t(b + "ffn_up.weight", ff, hidden)
            t(b + "ffn_down.weight", hidden, ff)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


SYNTH = {
    # 80 layers with GQA is what llama.cpp calls 70B (attn_v gets Q5_K); rows of 64 make every
    # K-quant fall back, which still tells the rules apart (Q2_K->Q4_0, Q4_K->Q5_0, Q5_K->Q5_1...)
    "llama-80l-gqa": dict(n_layers=80, hidden=64, ff=128, n_head=4, n_head_kv=1),
    "llama-80l-mha": dict(n_layers=80, hidden=64, ff=128, n_head=4, n_head_kv=4),
    "moe-8x": dict(n_expert=8, n_layers=4, n_head_kv=2),
    "moe-4x": dict(n_expert=4, n_layers=4, n_head=8, n_head_kv=2),
    "falcon-16l": dict(arch="falcon", n_layers=16, n_head=8, n_head_kv=1),
    "falcon-tied": dict(arch="falcon", n_layers=8, n_head=4, n_head_kv=4, tied=True),
}


@pytest.fixture
def synth_gguf(workdir, request) -> Path:
    path = workdir / f"synth-{request.param}.gguf"
    if not path.exists():
        write_gguf(path, **SYNTH[request.param])
    return path


# the 80-layer files are slow to quantize (720 tensors); run them for the presets whose
# attn_v rules the 70B test changes
_70B_PRESETS = ["Q2_K", "Q3_K_S", "Q3_K_M", "Q4_K_S", "Q4_K_M", "Q5_K_M"]
SYNTH_CASES = [(m, p) for m in SYNTH for p in (_70B_PRESETS if m.startswith("llama-80l") else ALL[:14])]


@pytest.mark.parametrize("synth_gguf,preset", SYNTH_CASES, indirect=["synth_gguf"])
def test_preset_matches_llama_quantize_special_models(synth_gguf, preset, workdir):
    theirs = llama_types(synth_gguf, workdir / "out.gguf", preset)
    assert diff(types_of(plan_from_gguf(synth_gguf, preset)), theirs) == {}


# -- options: --tensor-type, --pure, --output-tensor-type, --token-embedding-type ----------
OPTION_CASES = [
    # pinning blk.0's attn_v stops llama.cpp's attn_v counter: blk.1 then takes slot 0
    ("Q4_K_M", dict(overrides=[(r"blk\.0\.attn_v", "Q8_0")])),
    # first matching pattern wins; an override type that does not fit still falls back
    ("Q3_K_M", dict(overrides=[(r"blk\.[01]\.", "Q4_0"), ("ffn_down", "Q2_K")])),
    ("Q4_K_S", dict(pure=True)),
    ("Q4_K_M", dict(output_tensor_type="Q8_0")),  # a tied token_embd follows the output
    ("Q4_K_M", dict(output_tensor_type="Q8_0", pure=True)),
    ("Q4_K_M", dict(output_tensor_type="Q8_0", overrides=[("token_embd", "Q5_K")])),
    ("Q5_K_M", dict(output_tensor_type="Q8_0", token_embedding_type="Q4_K")),
    ("Q6_K", dict(token_embedding_type="Q3_K")),
    ("F16", dict(token_embedding_type="Q8_0")),
]


@pytest.mark.parametrize("preset,options", OPTION_CASES)
def test_options_match_llama_quantize(preset, options, workdir):
    src = workdir / "synth-options.gguf"
    if not src.exists():
        write_gguf(src, n_layers=8, ff=320, n_head_kv=2, tied=True)
    theirs = llama_types(src, workdir / "out.gguf", preset, **options)
    assert diff(types_of(plan_from_gguf(src, preset, **options)), theirs) == {}


def test_single_type_plan_matches_llama_pure(workdir):
    """`--type Q4_K` (no mix) is llama-quantize's --pure Q4_K_M, fallbacks included."""
    src = workdir / "synth-pure.gguf"
    write_gguf(src, n_layers=4, ff=320, tied=False)
    r = gguf.GGUFReader(src)
    tensors = [(t.name, tuple(int(d) for d in reversed(t.shape)), "F32") for t in r.tensors]
    ours = types_of(make_plan(tensors, single_type_rules("Q4_K"), ftype="Q4_K"))
    assert diff(ours, llama_types(src, workdir / "out.gguf", "Q4_K_M", pure=True)) == {}


# -- the plan records why ---------------------------------------------------------------------
def _toy(ff=320, tied=False, n_layers=8):
    t = [("token_embd.weight", (512, 256), "BF16"), ("output_norm.weight", (256,), "BF16")]
    if not tied:
        t.append(("output.weight", (512, 256), "BF16"))
    for i in range(n_layers):
        b = f"blk.{i}."
        t += [(b + "attn_norm.weight", (256,), "BF16"), (b + "attn_q.weight", (256, 256), "BF16"),
              (b + "attn_k.weight", (64, 256), "BF16"), (b + "attn_v.weight", (64, 256), "BF16"),
              (b + "attn_output.weight", (256, 256), "BF16"), (b + "ffn_gate.weight", (ff, 256), "BF16"),
              (b + "ffn_up.weight", (ff, 256), "BF16"), (b + "ffn_down.weight", (256, ff), "BF16")]
    return t


def _plan(preset, tensors=None, **kw):
    return preset_plan(tensors or _toy(), preset, n_layers=8, n_head=4, n_head_kv=1, arch_name="llama", **kw)


def test_fallbacks_are_recorded_and_can_be_refused():
    plan = _plan("Q4_K_M")
    by = {t.name: t for t in plan.tensors}
    # ffn_down of layer 0 wants Q6_K (use_more_bits) and gets Q8_0; layer 1 wants Q4_K -> Q5_0
    assert by["blk.0.ffn_down.weight"].qtype.name == "Q8_0"
    assert by["blk.0.ffn_down.weight"].fallback.startswith("Q6_K -> Q8_0: row width 320")
    assert "use_more_bits" in by["blk.0.ffn_down.weight"].reason
    assert by["blk.1.ffn_down.weight"].fallback.startswith("Q4_K -> Q5_0")
    assert {t.name for t in plan.fallbacks} == {f"blk.{i}.ffn_down.weight" for i in range(8)}
    assert by["blk.0.attn_v.weight"].reason.startswith("Q4_K_M: attn_v")
    assert by["output_norm.weight"].qtype.name == "F32" and not by["output_norm.weight"].fallback
    with pytest.raises(ShapeError, match="blk.0.ffn_down.weight"):
        _plan("Q4_K_M", no_fallback=True)


def test_last_resort_is_f16():
    plan = _plan("Q4_0", _toy(ff=200))
    down = next(t for t in plan.tensors if t.name == "blk.3.ffn_down.weight")
    assert down.qtype.name == "F16" and down.fallback.startswith("Q4_0 -> F16: row width 200")
    down = next(t for t in _plan("Q3_K_S", _toy(ff=200)).tensors if t.name == "blk.3.ffn_down.weight")
    assert down.qtype.name == "F16" and "nor of Q4_0's 32" in down.fallback


def test_preset_registry_and_bits():
    assert BITS_TO_PRESET == {2: "Q2_K", 3: "Q3_K_M", 4: "Q4_K_M", 5: "Q5_K_M", 6: "Q6_K", 8: "Q8_0",
                              16: "F16", 32: "F32"}
    from qconvert.plan.iquant_presets import BASE as IQ_PRESETS  # checked in test_iquant_presets.py

    assert set(ALL) | set(IQ_PRESETS) == set(PRESETS.names())
    assert _plan("q4_k_m").ftype == "Q4_K_M"  # lookups ignore case
    with pytest.raises(UnsupportedError, match="Q4_K_M"):
        _plan("Q4_K_XL")
    # every preset file type is one gguf-py knows, so the writer can name it
    for name in PRESETS.names():
        assert name == "F32" or f"MOSTLY_{name}" in gguf.LlamaFileType.__members__


def test_override_parsing_and_errors():
    assert parse_override(r"blk\.[0-3]\.ffn_down=q8_0") == (r"blk\.[0-3]\.ffn_down", "Q8_0")
    with pytest.raises(InputError):
        parse_override("attn_v")
    with pytest.raises(InputError, match="regular expression"):
        _plan("Q4_K_M", overrides=[("attn_v(", "Q8_0")])
    with pytest.raises(InputError, match="Q4_X"):  # the user's option: exit 2, listing the types
        _plan("Q4_K_M", overrides=[("attn_v", "Q4_X")])


def test_overrides_also_apply_to_float_presets():
    """A deliberate difference from llama-quantize, which ignores --tensor-type when the
    file type is F16/BF16/F32: asking for a type and silently not getting it is worse."""
    by = {t.name: t for t in _plan("F16", overrides=[("attn_v", "Q8_0")]).tensors}
    assert by["blk.5.attn_v.weight"].qtype.name == "Q8_0"
    assert by["blk.5.attn_v.weight"].reason == "--tensor-type attn_v=Q8_0"
    assert by["blk.5.attn_k.weight"].qtype.name == "F16"
