"""gpt-oss: a tiny transformers-built checkpoint (bf16, and the same model with OpenAI's
MXFP4 expert layout; fixtures/gpt_oss_models.py) converts, loads in llama.cpp and computes
what transformers computes; MXFP4 experts reach the GGUF byte for byte; the plan's types and
bytes equal llama.cpp's own quantizer, and the files equal what llama.cpp's own converter
writes (tensor by tensor, key by key); the tokenizer tokenizes as transformers does.

References: transformers' forward in float32, over the bf16 checkpoint, or over the MXFP4
checkpoint dequantized by transformers' own MXFP4 reader (transformers.integrations.mxfp4;
its CPU path needs `accelerate` and triton kernels to run MXFP4 itself, so the reference
is the model it would dequantize to). Logits of this model have a std of about 3.

Measured max |llama.cpp - transformers| (logits std ~3):
  bf16 -> F32                                         0.012 (0.007 when transformers' yarn
                                                             rounds its correction range too,
                                                             as llama.cpp's always does)
  MXFP4 -> F32 --allow-requantize (experts decoded)   0.011
  MXFP4 -> F32 (experts kept MXFP4)                   0.15  (ggml multiplies MXFP4 weights by
                                                             activations rounded to Q8_0)
  bf16 -> Q8_0 / Q4_K_M / MXFP4 / Q4_K, against transformers on the GGUF's own decoded
  weights: 0.28 / 0.45 / 0.26 / 0.46
  (and against the original weights: 0.38 / 3.7 / 5.3 / 4.0 - the model amplifies weight
  rounding ~30x through its expert mixing weights, which is why quantized files are compared
  with their own weights). Swapping gate and up moves bf16 -> F32 to 9.5; leaving the
  (square) down experts untransposed, to 14.4.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize

import qconvert
from qconvert.errors import UnsupportedError
from fixtures.gpt_oss_models import CHAT_TEMPLATE, EXPERT_PROJ, build_bf16, build_mxfp4, train_tokenizer
from ggml_oracle import ggml_quantize
from tokenizer_builders import STRINGS

PROMPT = "The return statement leaves the current function call with the expression list (or None)"
N_TOKENS = 24
F32_TOL = 0.01  # of the reference logits' std
KEPT_MXFP4_TOL = 0.1
OWN_WEIGHTS_TOL = 0.25


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpt_oss")
    tok = train_tokenizer()
    bf16 = build_bf16(root / "bf16", tok)
    return {"bf16": bf16, "mxfp4": build_mxfp4(root / "mxfp4", bf16), "root": root}


_CONVERTED: dict = {}


def converted(models, which: str, type_name: str, **kw) -> Path:
    key = (which, type_name, tuple(sorted(kw.items())))
    if key not in _CONVERTED:
        out = models["root"] / f"{which}-{type_name}{'-rq' if kw else ''}.gguf"
        qconvert.quantize(models[which], out, type=type_name, **kw)
        _CONVERTED[key] = out
    return _CONVERTED[key]


# -- transformers' side -----------------------------------------------------------------------
def _model(config_dir: Path, state: dict):
    import torch
    from transformers import GptOssConfig, GptOssForCausalLM

    cfg = json.loads((config_dir / "config.json").read_text())
    cfg.pop("quantization_config", None)
    for k in ("architectures", "model_type", "transformers_version", "dtype"):
        cfg.pop(k, None)
    model = GptOssForCausalLM(GptOssConfig(**cfg))
    model.config._attn_implementation = "eager"
    model.load_state_dict({k: torch.as_tensor(np.ascontiguousarray(v)).float() for k, v in state.items()},
                          strict=True)
    return model.eval()


def checkpoint_state(d: Path) -> dict:
    """The checkpoint as transformers would hold it: MXFP4 experts through transformers'
    own dequantizer."""
    import torch
    from safetensors.torch import load_file
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    sd: dict = {}
    for f in sorted(d.glob("*.safetensors")):
        sd.update(load_file(str(f)))
    state = {}
    for k, v in sd.items():
        if k.endswith("_blocks"):
            stem = k[: -len("_blocks")]
            state[stem] = convert_moe_packed_tensors(v, sd[stem + "_scales"], dtype=torch.float32)
        elif not k.endswith("_scales"):
            state[k] = v.float()
    return state


_ATTN = {"attn_q": "q_proj", "attn_k": "k_proj", "attn_v": "v_proj", "attn_output": "o_proj"}
_LAYER = {"attn_norm.weight": "input_layernorm.weight", "post_attention_norm.weight": "post_attention_layernorm.weight",
          "attn_sinks.weight": "self_attn.sinks", "ffn_gate_inp.weight": "mlp.router.weight",
          "ffn_gate_inp.bias": "mlp.router.bias",
          **{f"{g}.{s}": f"self_attn.{h}.{s}" for g, h in _ATTN.items() for s in ("weight", "bias")}}
_GLOBAL = {"token_embd.weight": "model.embed_tokens.weight", "output.weight": "lm_head.weight",
           "output_norm.weight": "model.norm.weight"}


def interleave(gate: np.ndarray, up: np.ndarray, axis: int) -> np.ndarray:
    shape = list(gate.shape)
    shape[axis] *= 2
    out = np.empty(shape, np.float32)
    idx = [slice(None)] * len(shape)
    idx[axis] = slice(0, None, 2)
    out[tuple(idx)] = gate
    idx[axis] = slice(1, None, 2)
    out[tuple(idx)] = up
    return out


def gguf_state(path: Path) -> dict:
    """A GGUF's tensors, decoded by gguf-py, mapped back to transformers' names and layouts
    (experts re-fused and transposed): the weights llama.cpp actually multiplies by."""
    state, experts = {}, {}
    for t in gguf.GGUFReader(str(path)).tensors:
        a = dequantize(t.data, t.tensor_type).reshape([int(x) for x in reversed(t.shape)]).astype(np.float32)
        if not t.name.startswith("blk."):
            state[_GLOBAL[t.name]] = a
            continue
        _, i, rest = t.name.split(".", 2)
        if rest in _LAYER:
            state[f"model.layers.{i}.{_LAYER[rest]}"] = a
        else:
            experts[(i, rest)] = a
    for i in sorted({k[0] for k in experts}):
        p, e = f"model.layers.{i}.mlp.experts.", lambda n: experts[(i, n)]
        state[p + "gate_up_proj"] = interleave(e("ffn_gate_exps.weight"), e("ffn_up_exps.weight"), 1).transpose(0, 2, 1)
        state[p + "gate_up_proj_bias"] = interleave(e("ffn_gate_exps.bias"), e("ffn_up_exps.bias"), 1)
        state[p + "down_proj"] = e("ffn_down_exps.weight").transpose(0, 2, 1)
        state[p + "down_proj_bias"] = e("ffn_down_exps.bias")
    return state


def token_ids(d: Path) -> list[int]:
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(d)(PROMPT)["input_ids"][:N_TOKENS]
    assert len(ids) == N_TOKENS
    return ids


def hf_logits(config_dir: Path, state: dict, ids: list[int]) -> np.ndarray:
    import torch

    torch.set_num_threads(2)
    with torch.no_grad():
        return _model(config_dir, state)(torch.tensor([ids])).logits[0].numpy()


def llama_logits(path: Path, ids: list[int]) -> np.ndarray:
    from qconvert.eval.llama_model import open_llama

    llm = open_llama(path, n_ctx=128, logits_all=True, n_threads=2)
    llm.eval(ids)
    out = np.array(llm.scores[: len(ids)], dtype=np.float32)
    llm.close()
    return out


def gap(path: Path, config_dir: Path, state: dict) -> tuple[float, float]:
    """(max |llama.cpp - transformers|, std of transformers' logits)."""
    ids = token_ids(config_dir)
    ref = hf_logits(config_dir, state, ids)
    return float(np.abs(llama_logits(path, ids) - ref).max()), float(ref.std())


# -- logits ---------------------------------------------------------------------------------
def test_bf16_f32_matches_transformers(models):
    d, std = gap(converted(models, "bf16", "F32"), models["bf16"], checkpoint_state(models["bf16"]))
    print(f"gpt-oss bf16 -> F32: max |dlogit| {d:.4f} (std {std:.2f})")
    assert d <= F32_TOL * std


# MXFP4 and Q4_K: plain types written everywhere (the 2-D expert biases stay F32: llama.cpp
# adds them with an F32-only op and aborts otherwise)
@pytest.mark.parametrize("type_name", ["Q8_0", "Q4_K_M", "MXFP4", "Q4_K"])
def test_quantized_match_transformers_on_their_own_weights(models, type_name):
    path = converted(models, "bf16", type_name)
    d, std = gap(path, models["bf16"], gguf_state(path))
    d0, _ = gap(path, models["bf16"], checkpoint_state(models["bf16"]))
    print(f"gpt-oss bf16 -> {type_name}: max |dlogit| {d:.4f} on its own weights, {d0:.3f} on the original (std {std:.2f})")
    assert d <= OWN_WEIGHTS_TOL * std


def test_mxfp4_decoded_matches_transformers_dequantized(models):
    """--allow-requantize to F32: the experts decoded by our MXFP4 decoder from the HF layout
    compute what transformers' own MXFP4 reader makes of the same bytes."""
    path = converted(models, "mxfp4", "F32", allow_requantize=True)
    d, std = gap(path, models["mxfp4"], checkpoint_state(models["mxfp4"]))
    print(f"gpt-oss MXFP4 -> F32 (experts decoded): max |dlogit| {d:.4f} (std {std:.2f})")
    assert d <= F32_TOL * std


def test_mxfp4_kept_matches_transformers_dequantized(models):
    path = converted(models, "mxfp4", "F32")
    d, std = gap(path, models["mxfp4"], checkpoint_state(models["mxfp4"]))
    print(f"gpt-oss MXFP4 -> F32 (experts kept MXFP4): max |dlogit| {d:.4f} (std {std:.2f})")
    assert d <= KEPT_MXFP4_TOL * std


# -- MXFP4 bytes ----------------------------------------------------------------------------
def _tensors(path: Path) -> dict:
    return {t.name: t for t in gguf.GGUFReader(str(path)).tensors}


@pytest.mark.parametrize("type_name", ["F32", "Q4_K_M", "MXFP4_MOE"])
def test_mxfp4_experts_are_the_checkpoints_bytes(models, type_name):
    """Whatever the type, the experts stay MXFP4, and their blocks are the ones llama.cpp's
    quantizer makes from the bf16 experts the fixture encoded: the repack lost nothing and
    put every nibble in ggml's place. Their decoded values equal transformers' dequantization
    of the checkpoint (an independent reader of the HF layout)."""
    from safetensors.torch import load_file

    bf16: dict = {}
    for f in sorted(models["bf16"].glob("*.safetensors")):
        bf16.update(load_file(str(f)))
    ref = checkpoint_state(models["mxfp4"])
    got = _tensors(converted(models, "mxfp4", type_name))
    for i in range(2):
        stem = f"model.layers.{i}.mlp.experts."
        for proj in EXPERT_PROJ:
            w = bf16[stem + proj].float().numpy().transpose(0, 2, 1)  # (E, out, in)
            halves = {"gate": w[:, 0::2], "up": w[:, 1::2]} if proj == "gate_up_proj" else {"down": w}
            deq = ref[stem + proj].numpy().transpose(0, 2, 1)
            for k, (kind, rows) in enumerate(halves.items()):
                t = got[f"blk.{i}.ffn_{kind}_exps.weight"]
                assert t.tensor_type == gguf.GGMLQuantizationType.MXFP4
                want = ggml_quantize("MXFP4", np.ascontiguousarray(rows).reshape(-1, rows.shape[-1]))
                assert np.array_equal(np.asarray(t.data).reshape(-1), want.reshape(-1)), t.name
                mine = dequantize(t.data, t.tensor_type).reshape(rows.shape)
                expect = deq[:, k::len(halves)] if len(halves) == 2 else deq
                assert np.array_equal(mine, expect), t.name


# -- llama.cpp's quantizer ------------------------------------------------------------------
def llama_quantize(src: Path, out: Path, preset: str, allow_requantize: bool = False) -> dict:
    """llama.cpp's quantizer (llama-quantize's library call) on 2 threads; name -> tensor."""
    import ctypes

    import llama_cpp

    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype, p.nthread = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{preset}"), 2
    p.allow_requantize = allow_requantize
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(p)) == 0
    return _tensors(out)


@pytest.mark.parametrize("preset", ["Q4_K_M", "MXFP4_MOE"])
def test_types_and_bytes_equal_llama_quantize(models, preset):
    """llama-quantize on our F32 GGUF against our own file of that preset from the checkpoint:
    the same type for every tensor and the same bytes (expert stacks included)."""
    theirs = llama_quantize(converted(models, "bf16", "F32"), models["root"] / f"llama-{preset}.gguf", preset)
    ours = _tensors(converted(models, "bf16", preset))
    assert {n: t.tensor_type.name for n, t in ours.items()} == {n: t.tensor_type.name for n, t in theirs.items()}
    differ = [n for n, t in ours.items() if not np.array_equal(np.asarray(t.data), np.asarray(theirs[n].data))]
    assert differ == []


def test_requantized_mxfp4_equals_llama_quantize_allow_requantize(models):
    """--allow-requantize to Q4_K_M from the MXFP4 checkpoint: the bytes llama-quantize
    --allow-requantize makes from the F32 file holding the MXFP4 experts (experts decoded,
    Q4_K / Q6_K by the mix)."""
    theirs = llama_quantize(converted(models, "mxfp4", "F32"), models["root"] / "llama-rq.gguf", "Q4_K_M",
                            allow_requantize=True)
    ours = _tensors(converted(models, "mxfp4", "Q4_K_M", allow_requantize=True))
    assert {n: t.tensor_type.name for n, t in ours.items()} == {n: t.tensor_type.name for n, t in theirs.items()}
    assert [n for n, t in ours.items() if not np.array_equal(np.asarray(t.data), np.asarray(theirs[n].data))] == []


# -- metadata and refusals ------------------------------------------------------------------
def _fields(path: Path) -> dict:
    r = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in r.fields.items() if k != "tokenizer.ggml.tokens"}


def test_metadata(models):
    kv = _fields(converted(models, "bf16", "F32"))
    assert kv["general.architecture"] == "gpt-oss"
    assert kv["gpt-oss.expert_count"] == 4 and kv["gpt-oss.expert_used_count"] == 2
    assert kv["gpt-oss.expert_feed_forward_length"] == 256
    assert kv["gpt-oss.attention.sliding_window"] == 8
    assert "gpt-oss.attention.sliding_window_pattern" not in kv  # llama.cpp's default: even layers slide
    assert kv["gpt-oss.rope.scaling.type"] == "yarn" and kv["gpt-oss.rope.scaling.factor"] == 32.0
    assert kv["gpt-oss.rope.scaling.original_context_length"] == 4096
    assert kv["tokenizer.ggml.pre"] == "gpt-4o"
    assert kv["tokenizer.chat_template"] == CHAT_TEMPLATE


def _edited_copy(models, name: str, edit) -> Path:
    src, dst = models["bf16"], models["root"] / name
    dst.mkdir(exist_ok=True)
    for f in src.iterdir():
        target = dst / f.name
        if not target.exists():
            target.symlink_to(f)
    cfg = json.loads((src / "config.json").read_text())
    edit(cfg)
    (dst / "config.json").unlink()
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_other_layer_pattern_is_written_per_layer(models):
    d = _edited_copy(models, "full_first", lambda c: c.update(layer_types=["full_attention", "sliding_attention"]))
    out = models["root"] / "full_first.gguf"
    qconvert.quantize(d, out, type="F32")
    assert list(_fields(out)["gpt-oss.attention.sliding_window_pattern"]) == [False, True]


def test_other_swiglu_limit_is_refused(models):
    d = _edited_copy(models, "limit9", lambda c: c.update(swiglu_limit=9.0))
    with pytest.raises(UnsupportedError, match="swiglu_limit is 9.0"):
        qconvert.quantize(d, models["root"] / "limit9.gguf", type="F32", dry_run=True)


# -- tokenizer --------------------------------------------------------------------------------
HARMONY = ["<|start|>user<|message|>What is 2+2?<|end|><|start|>assistant<|channel|>final<|message|>4<|return|>",
           "<|startoftext|>Don't SPLIT camelCase HTTPServer's 12345 tokens<|endoftext|>"]


@pytest.mark.parametrize("text", STRINGS + HARMONY)
def test_tokenizer_ids_equal_transformers(models, text):
    from transformers import AutoTokenizer

    from qconvert.eval.llama_model import open_llama

    llm = open_llama(converted(models, "bf16", "F32"), vocab_only=True)
    ours = llm.tokenize(text.encode(), add_bos=False, special=True)
    llm.close()
    assert ours == AutoTokenizer.from_pretrained(models["bf16"])(text, add_special_tokens=False)["input_ids"]


def test_mxfp4_checkpoint_parameter_count(models):
    """estimate-memory counts two weights per MXFP4 block byte and none for the scales."""
    from qconvert.plan.model_shape import params_from_dir

    assert params_from_dir(models["mxfp4"]) == params_from_dir(models["bf16"]) == 2_501_912


@pytest.mark.parametrize("which", ["bf16", "mxfp4"])
def test_writer_reads_one_expert_at_a_time(models, which, monkeypatch, tmp_path):
    """No expert stack is ever loaded whole (floats or MXFP4 bytes): peak memory stays flat in
    the number of experts (README: 194-199 MB converting 8 or 32 experts of 1024x2048)."""
    from qconvert.source.expert_stack import ExpertStack

    def whole(self):
        raise AssertionError(f"{self.name}: whole stack loaded")

    monkeypatch.setattr(ExpertStack, "_stacked", whole)
    monkeypatch.setattr(ExpertStack, "load_packed", whole)  # the stacks' MXFP4 bytes, whole
    for type_name in ("Q8_0", "F32"):
        qconvert.quantize(models[which], tmp_path / f"{type_name}.gguf", type=type_name)


# -- llama.cpp's own converter ------------------------------------------------------------------
from llama_cpp_converter import llama_cpp_source  # noqa: E402  (fetches the sdist when needed)


# our fixture tokenizer's hash is in no table of the converter's: give it the name we derive
_CONVERTER = """
import runpy, sys
src = sys.argv[1]
sys.path[:0] = [src, src + "/gguf-py"]
import conversion.base as b
b.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-4o"
sys.argv = ["convert_hf_to_gguf.py"] + sys.argv[2:]
runpy.run_path(src + "/convert_hf_to_gguf.py", run_name="__main__")
"""
# keys we write that its converter leaves to llama.cpp's defaults (same values)
OUR_EXTRA_KEYS = {"gpt-oss.rope.dimension_count", "gpt-oss.vocab_size", "tokenizer.ggml.add_bos_token"}


@pytest.mark.parametrize("which, outtype", [("bf16", "F16"), ("bf16", "Q8_0"), ("mxfp4", "F32"), ("mxfp4", "Q8_0")])
def test_equal_to_llama_cpp_converter(models, which, outtype):
    """convert_hf_to_gguf.py --outtype X and `qconvert -t X`: every tensor the same name, type,
    shape and bytes (MXFP4 experts included), every metadata value the same."""
    import subprocess
    import sys

    src = llama_cpp_source()
    if src is None:
        pytest.skip("no llama.cpp source tree (set LLAMA_CPP_SRC)")
    theirs = models["root"] / f"llama-cpp-{which}-{outtype}.gguf"
    subprocess.run([sys.executable, "-c", _CONVERTER, str(src), str(models[which]), "--outfile", str(theirs),
                    "--outtype", outtype.lower()], check=True, capture_output=True)
    ours = converted(models, which, outtype)
    a, b = _tensors(ours), _tensors(theirs)
    assert sorted(a) == sorted(b)
    for n, t in a.items():
        u = b[n]
        assert (t.tensor_type, list(t.shape)) == (u.tensor_type, list(u.shape)), n
        assert np.array_equal(np.asarray(t.data).view(np.uint8), np.asarray(u.data).view(np.uint8)), n
    fa, fb = _fields(ours), _fields(theirs)
    # general.* beyond the architecture and file type is description (name, size label...)
    keys = {k for k in fa.keys() | fb.keys() if not k.startswith("general.")} - OUR_EXTRA_KEYS - {"GGUF.kv_count"}
    keys |= {"general.architecture", "general.file_type"}
    assert {k: fa.get(k) for k in keys} == {k: fb.get(k) for k in keys}


def test_openai_config_spelling(models):
    """OpenAI's config.json (transformers 4.55): rope_theta + rope_scaling, experts_per_token
    beside num_experts_per_tok, initial_context_length: the same file as the 5.x spelling."""
    def v4(c):
        rp = c.pop("rope_parameters")
        c["rope_theta"] = rp.pop("rope_theta")
        c["rope_scaling"] = rp
        c["experts_per_token"] = c["num_experts_per_tok"]
        c["initial_context_length"] = 4096

    d = _edited_copy(models, "openai_spelling", v4)
    out = models["root"] / "openai_spelling.gguf"
    qconvert.quantize(d, out, type="F32")
    a, b = _fields(out), _fields(converted(models, "bf16", "F32"))
    a.pop("general.name"), b.pop("general.name")
    assert a == b


# -- calibration ------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["bf16", "mxfp4"])
def test_importance_statistics_per_expert_from_its_routed_tokens(models, which):
    """Each expert's rows of statistics sum x^2 over the tokens transformers' router sent to
    it: gate/up over the normalised input, down over the clamped-SwiGLU output of those
    tokens (recomputed here with hooks on the router and the norm, and GptOssExperts'
    own activation). The MXFP4 checkpoint is calibrated on its decoded experts (the model
    transformers would dequantize to; its MXFP4 loader needs accelerate and triton)."""
    import torch
    from transformers import AutoTokenizer

    from qconvert.calib.collect import collect_importance
    from qconvert.calib.text import calibration_samples

    d = models[which]
    imx = collect_importance(d, n_samples=2, seqlen=48, device="cpu")
    samples = calibration_samples(AutoTokenizer.from_pretrained(str(d)), n_samples=2, seqlen=48)
    model = _model(d, checkpoint_state(d))
    for i, layer in enumerate(model.model.layers):
        seen: dict = {}
        h1 = layer.post_attention_layernorm.register_forward_hook(lambda m, a, o: seen.setdefault("x", []).append(o))
        h2 = layer.mlp.router.register_forward_hook(lambda m, a, o: seen.setdefault("idx", []).append(o[2]))
        with torch.no_grad():
            for row in samples:
                model(row[None])
        h1.remove(), h2.remove()
        x = torch.cat([t.reshape(-1, t.shape[-1]) for t in seen["x"]])
        idx = torch.cat([t.reshape(-1, t.shape[-1]) for t in seen["idx"]])
        ex = layer.mlp.experts
        routed = [(idx == e).any(-1) for e in range(ex.num_experts)]
        counts = np.array([int(r.sum()) for r in routed])
        want = np.stack([(x[r].double() ** 2).sum(0).numpy() for r in routed])
        with torch.no_grad():
            down = np.stack([(ex._apply_gate(x[r] @ ex.gate_up_proj[e] + ex.gate_up_proj_bias[e]).double() ** 2)
                             .sum(0).numpy() for e, r in enumerate(routed)])
        assert counts.sum() == x.shape[0] * model.config.num_experts_per_tok
        for proj, ref in (("gate", want), ("up", want), ("down", down)):
            name = f"blk.{i}.ffn_{proj}_exps.weight"
            np.testing.assert_array_equal(imx.counts(name), counts)
            np.testing.assert_allclose(imx.sums(name), ref, rtol=2e-4, atol=1e-6)


def test_gptq_solves_routed_experts_in_llama_cpp_orientation(models, tmp_path):
    """--scheme gptq: each routed expert's slabs solved against its own tokens (they differ
    from round-to-nearest, and stay near the weights: the (out, in) orientation is right);
    an expert no token reached is rounded to nearest, byte for byte the plain file's."""
    from safetensors.torch import load_file

    out = tmp_path / "gptq.gguf"
    res = qconvert.quantize(models["bf16"], out, type="Q4_K_M", scheme="gptq", calibration=True,
                            calibration_samples=2, calibration_seqlen=48, device="cpu")
    assert any("GPTQ on" in n for n in res.notes)
    ours, plain = _tensors(out), _tensors(converted(models, "bf16", "Q4_K_M"))
    sd: dict = {}
    for f in sorted(models["bf16"].glob("*.safetensors")):
        sd.update(load_file(str(f)))
    for i in range(2):
        gu = sd[f"model.layers.{i}.mlp.experts.gate_up_proj"].float().numpy()
        dn = sd[f"model.layers.{i}.mlp.experts.down_proj"].float().numpy()
        weights = {"gate": gu[:, :, 0::2], "up": gu[:, :, 1::2], "down": dn}  # (E, in, out)
        routed = {e for e in range(4) if (e + i) % 2 == 0}  # the fixture's router bias picks these
        for kind, w in weights.items():
            t, p = ours[f"blk.{i}.ffn_{kind}_exps.weight"], plain[f"blk.{i}.ffn_{kind}_exps.weight"]
            got = dequantize(t.data, t.tensor_type).reshape(w.shape[0], w.shape[2], w.shape[1])
            for e in range(4):
                same = np.array_equal(np.asarray(t.data)[e], np.asarray(p.data)[e])
                assert same == (e not in routed), (t.name, e)
                rel = np.linalg.norm(got[e] - w[e].T) / np.linalg.norm(w[e])
                assert rel < 0.2, (t.name, e, rel)


def test_sized_plan_keeps_mxfp4_experts(models, tmp_path):
    """--target-bpw re-chooses every quantized tensor's type but not the checkpoint's MXFP4
    experts: they are copied as under any preset (requantizing needs --allow-requantize)."""
    out = tmp_path / "sized.gguf"
    qconvert.quantize(models["mxfp4"], out, target_bpw=5.0, sensitivity_cache=tmp_path / "sens.json")
    sized, kept = _tensors(out), _tensors(converted(models, "mxfp4", "F32"))
    experts = [n for n in sized if "_exps.weight" in n]
    assert len(experts) == 6
    for n in experts:
        assert sized[n].tensor_type == gguf.GGMLQuantizationType.MXFP4
        assert np.array_equal(np.asarray(sized[n].data), np.asarray(kept[n].data)), n


def test_gguf_input_keeps_mxfp4_experts(models, tmp_path):
    """A GGUF holding MXFP4 experts (as llama.cpp's converter writes gpt-oss) requantizes to
    Q4_K_M without --allow-requantize: the experts are copied, the F32 rest quantized; the
    file equals the one made from the checkpoint. --allow-requantize decodes them too."""
    src = converted(models, "mxfp4", "F32")
    out = tmp_path / "from-gguf.gguf"
    res = qconvert.quantize(src, out, type="Q4_K_M")
    assert not any("already quantized" in n for n in res.notes)
    a, b = _tensors(out), _tensors(converted(models, "mxfp4", "Q4_K_M"))
    assert sorted(a) == sorted(b)
    for n in a:
        assert a[n].tensor_type == b[n].tensor_type and np.array_equal(np.asarray(a[n].data), np.asarray(b[n].data)), n
    res = qconvert.quantize(src, tmp_path / "rq.gguf", type="Q4_K_M", allow_requantize=True)
    assert any("6 tensors were already quantized" in n for n in res.notes)
    assert _tensors(tmp_path / "rq.gguf")["blk.0.ffn_gate_exps.weight"].tensor_type.name == "Q4_K"


def test_safetensors_output_of_mxfp4_checkpoint_loads_in_transformers(models, tmp_path):
    """--format safetensors from the MXFP4 checkpoint: attention projections int4
    (compressed-tensors), experts written decoded as the dense bf16 parameters transformers
    holds; transformers loads the result and its experts equal its own MXFP4 dequantization."""
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path / "st"
    qconvert.quantize(models["mxfp4"], out, format="safetensors")
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    ref = checkpoint_state(models["mxfp4"])
    for i in range(2):
        for p in EXPERT_PROJ:
            name = f"model.layers.{i}.mlp.experts.{p}"
            assert torch.equal(model.get_parameter(name), ref[name]), name
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([token_ids(models["mxfp4"])])).logits).all()


def test_missing_expert_tensors_are_named(models, tmp_path):
    """A checkpoint without one layer's experts (a shard lost) is refused naming the layer."""
    from safetensors.torch import load_file, save_file

    d = tmp_path / "no_experts"
    d.mkdir()
    for f in models["bf16"].iterdir():
        if f.suffix != ".safetensors" and f.name != "model.safetensors.index.json":
            (d / f.name).write_bytes(f.read_bytes())
    sd: dict = {}
    for f in sorted(models["bf16"].glob("*.safetensors")):
        sd.update(load_file(str(f)))
    save_file({k: v for k, v in sd.items() if "layers.1.mlp.experts" not in k}, str(d / "model.safetensors"))
    with pytest.raises(qconvert.errors.FormatError, match=r"no expert tensors for layer\(s\) 1"):
        qconvert.quantize(d, tmp_path / "x.gguf", type="F32", dry_run=True)
