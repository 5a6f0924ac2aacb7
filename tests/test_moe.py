"""Mixture-of-experts families convert, load in llama.cpp and compute what transformers
computes; expert stacks are written expert by expert, with llama.cpp's own bytes.

Fixtures: tests/fixtures/moe_models.py (transformers' own classes, bf16, 2 shards).
References:
- F32/F16: transformers' float32 forward over the bf16 checkpoint, as in
  test_architectures.py.
- Q8_0/Q4_K_M: transformers' forward over the weights decoded back out of our GGUF
  (gguf-py's dequantizers, mapped back to HF names): rounding is then the same on both
  sides and what remains is the conversion. Against the original weights a quantized MoE
  cannot be held to a bound: rounding moves router logits, a token's top-k flips, and
  that token's output changes by whole units (Q8_0 of the Qwen3-MoE fixture: 3.5).
A top-k choice near a tie (the k-th and (k+1)-th router logits within MIN_GAP) may go
either way in llama.cpp's arithmetic and move that token's logits by units; the float
comparisons hold tightly the tokens before the first such choice (compare) and the
quantized ones bound the typical token (compare_quantized).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest

import qconvert
from qconvert.errors import FormatError, UnsupportedError
from fixtures.moe_models import SPECS, build
from ggml_oracle import ggml_quantize

PROMPT = "The return statement leaves the current function call with the expression list (or None)"
N_TOKENS = 24
GGUF_ARCH = {"qwen3_moe": "qwen3moe", "mixtral": "llama", "qwen2_moe": "qwen2moe", "deepseek_v3": "deepseek2",
             "llama4": "llama4"}
# max |llama.cpp - reference| as a fraction of the reference logits' std (see the docstring)
TOLERANCE = {"F32": 0.01, "F16": 0.02}
MIN_GAP = 0.01  # router logits (spread ~4); llama.cpp's f16 KV cache moves them by a few 1e-3
FAMILIES = list(SPECS)


@pytest.fixture(scope="session")
def moe(tmp_path_factory):
    from fixtures.tiny_models import train_tokenizer

    tok = train_tokenizer()
    root = tmp_path_factory.mktemp("moe_models")
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = build(name, root / name, tok)
        return made[name]

    return get


def prompt_ids(model_dir: Path) -> list[int]:
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(str(model_dir))(PROMPT)["input_ids"][:N_TOKENS]
    assert len(ids) == N_TOKENS
    return ids


def hf_logits(model_dir: Path, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(transformers' float32 logits, per token the smallest top-k router gap over the layers:
    the k-th minus the (k+1)-th router logit)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(2)
    transformers.utils.logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    k = model.config.num_experts_per_tok
    gaps: list[np.ndarray] = []

    def hook(m, inp, _out):
        x = inp[0].detach()  # the router's logits, recomputed: routers return them in different places
        logits = x.reshape(-1, x.shape[-1]).float() @ m.weight.detach().float().T
        scores, slope = logits, 1.0
        bias = getattr(m, "e_score_correction_bias", None)
        if bias is not None:  # DeepSeek: chosen by sigmoid + bias; a score gap g needs a logit error >= 4g
            scores, slope = scores.sigmoid() + bias, 4.0
        top = torch.topk(scores, k + 1, dim=-1).values
        gaps.append(((top[:, k - 1] - top[:, k]) * slope).numpy())

    handles = [router.register_forward_hook(hook) for router in routers(model)]
    with torch.no_grad():
        out = model(torch.tensor([ids])).logits[0].numpy()
    for h in handles:
        h.remove()
    assert handles, "no router found"
    return out, np.min(gaps, axis=0)


def routers(model) -> list:
    """Each MoE layer's router: mlp.gate (Qwen, Mixtral, DeepSeek), feed_forward.router (Llama 4)."""
    out = []
    for layer in model.model.layers:
        ff = getattr(layer, "mlp", None) or getattr(layer, "feed_forward", None)
        r = getattr(ff, "router", None) or getattr(ff, "gate", None)
        if r is not None and getattr(ff, "experts", None) is not None:
            out.append(r)
    return out


def llama_logits(path: Path, ids: list[int]) -> np.ndarray:
    from qconvert.eval.llama_model import open_llama

    llm = open_llama(path, n_ctx=128, logits_all=True, n_threads=2)
    llm.eval(ids)
    out = np.array(llm.scores[: len(ids)], dtype=np.float32)
    llm.close()
    return out


def reference_from_gguf(model_dir: Path, gguf_path: Path, out: Path) -> Path:
    """A checkpoint holding the weights our GGUF decodes to, in the HF names and float32:
    each GGUF tensor goes back through the source tensor it came from (expert stacks split
    into their experts; Mixtral's q/k rope permutation undone)."""
    from safetensors.numpy import save_file

    from qconvert.source.expert_stack import ExpertStack
    from qconvert.source.model_source import open_source

    src = open_source(model_dir)
    by_name = {s.name: s for s in src.tensors}
    permuted = src.arch_name == "llama"
    cfg = json.loads((model_dir / "config.json").read_text())
    heads = {"attn_q": cfg["num_attention_heads"], "attn_k": cfg["num_key_value_heads"]}
    tensors: dict[str, np.ndarray] = {}
    kv_b: dict[str, dict[str, np.ndarray]] = {}  # DeepSeek's kv_b_proj, split in two
    fused: dict[str, dict[str, np.ndarray]] = {}  # Llama 4's stored stacks, split into gate/up
    for t in gguf.GGUFReader(str(gguf_path)).tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        s = by_name[t.name]
        w = w.reshape(s.shape)
        kind = t.name.split(".")[-2] if t.name.startswith("blk.") else ""
        if permuted and kind in heads:
            n = heads[kind]
            w = w.reshape(n, w.shape[0] // n // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
        if kind in ("attn_k_b", "attn_v_b"):
            kv_b.setdefault(s.hf_name, {})[kind] = w
        elif isinstance(s, ExpertStack) and s.parts[0].hf_name.endswith("]"):  # Llama 4: stored stacked
            fused.setdefault(s.hf_name, {})[kind] = w
        elif isinstance(s, ExpertStack):
            for part, slab in zip(s.parts, w):
                tensors[part.hf_name] = np.ascontiguousarray(slab)
        else:
            tensors[s.hf_name] = np.ascontiguousarray(w)
    for hf_name, parts in kv_b.items():  # (n_head, rank, nope) transposed back, then the value rows
        merged = np.concatenate([parts["attn_k_b"].transpose(0, 2, 1), parts["attn_v_b"]], axis=1)
        tensors[hf_name] = np.ascontiguousarray(merged.reshape(-1, merged.shape[-1]))
    for hf_name, parts in fused.items():  # back to (n, in, out): gate columns, then up
        rows = [parts[k] for k in ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps") if k in parts]
        tensors[hf_name] = np.ascontiguousarray(np.concatenate(rows, axis=1).transpose(0, 2, 1))
    out.mkdir()
    save_file(tensors, str(out / "model.safetensors"))
    for f in model_dir.iterdir():
        if f.suffix == ".json" and not f.name.startswith("model.safetensors"):
            shutil.copy(f, out / f.name)
    return out


def check_metadata(path: Path, name: str, model_dir: Path) -> None:
    cfg = json.loads((model_dir / "config.json").read_text())
    r = gguf.GGUFReader(str(path))
    kv = {k: f.contents() for k, f in r.fields.items() if not k.startswith("tokenizer.")}
    a = GGUF_ARCH[name]
    assert kv["general.architecture"] == a
    n_expert = cfg.get("num_experts") or cfg.get("num_local_experts") or cfg.get("n_routed_experts")
    assert kv[f"{a}.expert_count"] == n_expert
    assert kv[f"{a}.expert_used_count"] == cfg["num_experts_per_tok"]
    if "moe_intermediate_size" in cfg:
        assert kv[f"{a}.expert_feed_forward_length"] == cfg["moe_intermediate_size"]
    if "shared_expert_intermediate_size" in cfg:
        assert kv[f"{a}.expert_shared_feed_forward_length"] == cfg["shared_expert_intermediate_size"]
    shapes = {t.name: tuple(int(d) for d in t.shape) for t in r.tensors}  # GGML order: ne0 first
    ff = cfg.get("moe_intermediate_size") or cfg["intermediate_size"]
    e = cfg["hidden_size"]
    dense = cfg.get("first_k_dense_replace", 0)
    step = cfg.get("interleave_moe_layer_step", 1)
    for layer in range(cfg["num_hidden_layers"]):
        if layer < dense or (layer + 1) % step:
            assert shapes[f"blk.{layer}.ffn_gate.weight"] == (e, cfg.get("intermediate_size_mlp",
                                                                          cfg["intermediate_size"]))
            assert f"blk.{layer}.ffn_gate_exps.weight" not in shapes
            continue
        assert shapes[f"blk.{layer}.ffn_gate_exps.weight"] == (e, ff, n_expert)
        assert shapes[f"blk.{layer}.ffn_up_exps.weight"] == (e, ff, n_expert)
        assert shapes[f"blk.{layer}.ffn_down_exps.weight"] == (ff, e, n_expert)
        assert shapes[f"blk.{layer}.ffn_gate_inp.weight"] == (e, n_expert)
        assert (f"blk.{layer}.ffn_gate_shexp.weight" in shapes) == (name in ("qwen2_moe", "deepseek_v3", "llama4"))
    if name == "deepseek_v3":
        check_deepseek(kv, shapes, cfg)
    if name == "llama4":
        assert kv["llama4.interleave_moe_layer_step"] == step
        assert kv["llama4.feed_forward_length"] == cfg["intermediate_size_mlp"]


def check_deepseek(kv: dict, shapes: dict, cfg: dict) -> None:
    """MLA in llama.cpp's absorbed layout, routing keys as its converter writes them."""
    h, rank, nope, rope, v = (cfg[k] for k in ("num_attention_heads", "kv_lora_rank", "qk_nope_head_dim",
                                               "qk_rope_head_dim", "v_head_dim"))
    a = "deepseek2"
    expect = {"attention.head_count_kv": 1, "attention.key_length": rank + rope, "attention.value_length": rank,
              "attention.key_length_mla": nope + rope, "attention.value_length_mla": v,
              "attention.q_lora_rank": cfg["q_lora_rank"], "attention.kv_lora_rank": rank,
              "rope.dimension_count": rope, "leading_dense_block_count": cfg["first_k_dense_replace"],
              "expert_shared_count": cfg["n_shared_experts"], "expert_gating_func": 2,  # sigmoid
              "expert_group_count": cfg["n_group"], "expert_group_used_count": cfg["topk_group"],
              "expert_weights_norm": True}
    for k, want in expect.items():
        assert kv[f"{a}.{k}"] == want, (k, kv.get(f"{a}.{k}"), want)
    assert kv[f"{a}.expert_weights_scale"] == pytest.approx(cfg["routed_scaling_factor"])
    assert shapes["blk.1.attn_k_b.weight"] == (nope, rank, h)
    assert shapes["blk.1.attn_v_b.weight"] == (rank, v, h)
    assert shapes["blk.1.exp_probs_b.bias"] == (cfg["n_routed_experts"],)
    assert "blk.1.attn_kv_b.weight" not in shapes


def stable_tokens(gaps: np.ndarray, min_gap: float) -> int:
    """How many leading tokens have every router choice (every layer) at least `min_gap`
    from a tie. Attention is causal, so a flipped choice at token p changes p and later
    tokens only: the tokens before it must match tightly."""
    fragile = np.flatnonzero(gaps < min_gap)
    return int(fragile[0]) if fragile.size else len(gaps)


def compare(got: np.ndarray, ref: np.ndarray, gaps: np.ndarray, label: str, type_name: str) -> float:
    """F32/F16 against transformers on the same weights: every token before the first
    near-tie within TOLERANCE of the logits' std (at least 8 of them), and argmax agreement
    over all tokens."""
    n = stable_tokens(gaps, MIN_GAP)
    assert n >= 8, f"{label}: a router choice at token {n} is within {gaps[n]:.4f} of a tie; reseed the fixture"
    per_token = np.abs(got - ref).max(-1)
    diff = float(per_token[:n].max())
    agree = float(np.mean(got.argmax(-1) == ref.argmax(-1)))
    print(f"{label}: max |dlogit| {diff:.4f} over {n} tokens (logit std {ref.std():.2f}, {diff / ref.std():.4f} "
          f"of it; all {len(gaps)} tokens: {per_token.max():.4f}), argmax agreement {agree:.3f}")
    assert diff <= TOLERANCE[type_name] * ref.std(), diff
    assert agree >= 0.9
    return diff


def compare_quantized(got: np.ndarray, ref: np.ndarray, label: str) -> None:
    """llama.cpp's quantized matmuls round their activations too (to Q8_0/Q8_K blocks), so
    against the decoded weights each token's logits differ by ~0.05-0.2 of their std, and a
    router choice within ~0.3 of a tie may flip (one token at ~1-2 std). A conversion
    mistake (an expert out of place, gate and up swapped) moves every token by about the
    std. So: the typical token within 0.25 std, 80% of tokens within 0.35, argmax mostly
    kept."""
    rel = np.abs(got - ref).max(-1) / ref.std()
    agree = float(np.mean(got.argmax(-1) == ref.argmax(-1)))
    print(f"{label}: per-token max |dlogit| / std: median {np.median(rel):.3f}, max {rel.max():.3f} "
          f"(max |dlogit| {np.abs(got - ref).max():.3f}), argmax agreement {agree:.3f}")
    assert np.median(rel) <= 0.25
    assert np.mean(rel <= 0.35) >= 0.8
    assert agree >= 0.85


@pytest.mark.parametrize("type_name", ["F32", "F16"])
@pytest.mark.parametrize("name", FAMILIES)
def test_float_conversion_matches_transformers(name, type_name, moe, tmp_path):
    d = moe(name)
    ids = prompt_ids(d)
    ref, gaps = hf_logits(d, ids)
    out = tmp_path / f"{name}-{type_name}.gguf"
    qconvert.quantize(d, out, type=type_name)
    check_metadata(out, name, d)
    compare(llama_logits(out, ids), ref, gaps, f"{name} {type_name}", type_name)


@pytest.mark.parametrize("type_name", ["Q8_0", "Q4_K_M"])
@pytest.mark.parametrize("name", FAMILIES)
def test_quantized_conversion_matches_transformers_on_its_weights(name, type_name, moe, tmp_path):
    d = moe(name)
    ids = prompt_ids(d)
    out = tmp_path / f"{name}-{type_name}.gguf"
    res = qconvert.quantize(d, out, type=type_name)
    exps = [tp for tp in res.plan.tensors if "_exps." in tp.name]
    assert exps and all(tp.qtype.quantized for tp in exps)
    ref, _ = hf_logits(reference_from_gguf(d, out, tmp_path / "decoded"), ids)
    compare_quantized(llama_logits(out, ids), ref, f"{name} {type_name} (decoded weights)")


@pytest.mark.parametrize("name", FAMILIES)
def test_q4_k_m_expert_bytes_equal_llama_cpp(name, moe, tmp_path):
    """Every expert stack of the Q4_K_M file, slab by slab, is what ggml_quantize_chunk
    (llama-quantize's own function) makes of that expert's weights at the planned type;
    the mix's expert rules (Q4_K gate/up, Q6_K down where use_more_bits says) are used."""
    from qconvert.source.expert_stack import ExpertStack
    from qconvert.source.model_source import open_source

    d = moe(name)
    out = tmp_path / "q4km.gguf"
    res = qconvert.quantize(d, out, type="Q4_K_M")
    plan = {tp.name: tp for tp in res.plan.tensors}
    stacks = {s.name: s for s in open_source(d).tensors if isinstance(s, ExpertStack)}
    assert stacks
    types = set()
    for t in gguf.GGUFReader(str(out)).tensors:
        s = stacks.get(t.name)
        if s is None:
            continue
        tp = plan[t.name]
        assert t.tensor_type.name == tp.qtype.name
        types.add((t.name.split(".")[-2], int(t.name.split(".")[1]), tp.qtype.name))
        slabs = np.asarray(t.data).reshape(len(s.parts), -1)
        for i, (part, got) in enumerate(zip(s.parts, slabs)):
            want = ggml_quantize(tp.qtype.name, part.load()).reshape(-1)
            assert np.array_equal(got, want), f"{t.name} expert {i}"
    assert {k for k, _, _ in types} == {"ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"}
    # llama.cpp's Q4_K_M: gate/up experts at Q4_K; down experts at Q6_K in the layers its
    # use_more_bits(i, n) picks (i < n/8, i >= 7n/8, every third between), Q4_K elsewhere
    n = json.loads((d / "config.json").read_text())["num_hidden_layers"]
    more = {i for i in range(n) if i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2}
    assert {t for k, _, t in types if k != "ffn_down_exps"} == {"Q4_K"}
    down = {(i, t) for k, i, t in types if k == "ffn_down_exps"}
    assert down == {(i, "Q6_K" if i in more else "Q4_K") for i, _ in down}
    assert {t for _, t in down} == {"Q4_K", "Q6_K"}


def test_writer_streams_expert_by_expert(moe, tmp_path, monkeypatch):
    """The GGUF writer never builds a whole expert stack: it pulls one expert at a time."""
    from qconvert.source.expert_stack import ExpertStack

    def whole(self):
        raise AssertionError(f"{self.name}: the whole stack was loaded")

    monkeypatch.setattr(ExpertStack, "_stacked", whole)
    loads = []
    real = ExpertStack.slabs
    monkeypatch.setattr(ExpertStack, "slabs", lambda self: (loads.append(self.name), real(self))[1])
    res = qconvert.quantize(moe("qwen3_moe"), tmp_path / "x.gguf", type="Q4_K_M")
    assert res.output.stat().st_size > 0 and not loads


# ----------------------------------------------------------------------- refusals

def _copy(moe, name: str, tmp_path: Path) -> Path:
    d = tmp_path / name
    shutil.copytree(moe(name), d)
    return d


def _edit_config(d: Path, **changes) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("name,key,value,needle", [
    ("qwen3_moe", "norm_topk_prob", False, "norm_topk_prob"),
    ("qwen2_moe", "norm_topk_prob", True, "norm_topk_prob"),
    ("qwen3_moe", "mlp_only_layers", [1], "dense"),
    ("qwen3_moe", "decoder_sparse_step", 2, "dense"),
    ("llama4", "attention_chunk_size", 4096, "attention_chunk_size"),
    ("llama4", "no_rope_layers", [1, 1, 0, 1], "no_rope_layers"),
    ("llama4", "use_qk_norm", False, "use_qk_norm"),
    ("deepseek_v3", "rope_interleave", False, "rope_interleave"),
])
def test_routing_llama_cpp_cannot_express_is_refused(name, key, value, needle, moe, tmp_path):
    d = _copy(moe, name, tmp_path)
    _edit_config(d, **{key: value})
    with pytest.raises(UnsupportedError, match=needle):
        qconvert.quantize(d, tmp_path / "x.gguf", type="F32", dry_run=True)


def test_missing_expert_names_it(moe, tmp_path):
    d = _copy(moe, "mixtral", tmp_path)
    _edit_config(d, num_local_experts=9)
    with pytest.raises(FormatError, match=r"9 experts.*no expert 8"):
        qconvert.quantize(d, tmp_path / "x.gguf", type="F32", dry_run=True)


def test_expert_width_checked_against_config(moe, tmp_path):
    d = _copy(moe, "qwen3_moe", tmp_path)
    _edit_config(d, moe_intermediate_size=128)
    with pytest.raises(FormatError, match="moe_intermediate_size 128"):
        qconvert.quantize(d, tmp_path / "x.gguf", type="F32", dry_run=True)


# ----------------------------------------------------------------------- calibration

def test_importance_statistics_per_expert_from_its_routed_tokens(moe):
    """Each expert's row of statistics sums x^2 over the tokens routed to it, nothing else:
    recomputed here from transformers' own router choices and the normalised input of the
    sparse block (hooks on the model's modules, not on the experts module qconvert uses)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qconvert.calib.collect import collect_importance
    from qconvert.calib.text import calibration_samples

    d = moe("qwen3_moe")
    imx = collect_importance(d, n_samples=2, seqlen=48, device="cpu")
    samples = calibration_samples(AutoTokenizer.from_pretrained(str(d)), n_samples=2, seqlen=48)
    model = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32).eval()
    seen = {}
    layer = model.model.layers[1]
    h1 = layer.post_attention_layernorm.register_forward_hook(lambda m, i, o: seen.setdefault("x", []).append(o))
    h2 = layer.mlp.gate.register_forward_hook(lambda m, i, o: seen.setdefault("idx", []).append(o[2]))
    with torch.no_grad():
        for row in samples:  # one window at a time, as batches of any size give the same sums
            model(row[None])
    h1.remove(), h2.remove()
    x = torch.cat([t.reshape(-1, t.shape[-1]) for t in seen["x"]]).double()
    idx = torch.cat([t.reshape(-1, t.shape[-1]) for t in seen["idx"]])
    n_expert, k = model.config.num_experts, model.config.num_experts_per_tok
    want_counts = np.array([int((idx == e).any(-1).sum()) for e in range(n_expert)])
    want = np.stack([(x[(idx == e).any(-1)] ** 2).sum(0).numpy() for e in range(n_expert)])
    for proj in ("gate", "up"):
        name = f"blk.1.ffn_{proj}_exps.weight"
        np.testing.assert_array_equal(imx.counts(name), want_counts)
        np.testing.assert_allclose(imx.sums(name), want, rtol=2e-4, atol=1e-6)
    assert want_counts.sum() == x.shape[0] * k
    down = imx.sums("blk.1.ffn_down_exps.weight")
    assert down.shape == (n_expert, model.config.moe_intermediate_size) and (down > 0).any()


def test_unrouted_expert_gets_uniform_importance_and_llama_cpp_bytes(moe, tmp_path):
    """Two calibration tokens route to at most 4 of the 8 experts per layer: the others
    have no statistics. They are written with uniform importance (llama.cpp's imatrix
    convention for partial data); the routed ones with their own row. Every slab is the
    bytes ggml_quantize_chunk makes of it with that row."""
    from qconvert.calib.collect import collect_importance
    from qconvert.source.expert_stack import ExpertStack
    from qconvert.source.model_source import open_source

    d = moe("qwen3_moe")
    imx = collect_importance(d, n_samples=1, seqlen=2, device="cpu")
    name = "blk.0.ffn_gate_exps.weight"
    counts = imx.counts(name)
    assert 0 < (counts > 0).sum() <= 4 and counts.sum() == 2 * 2
    unseen = int(np.flatnonzero(counts == 0)[0])
    np.testing.assert_array_equal(imx.get(name)[unseen], 1.0)
    out = tmp_path / "imx.gguf"
    res = qconvert.quantize(d, out, type="Q4_K_M", imatrix=imx)
    tp = next(t for t in res.plan.tensors if t.name == name)
    assert tp.scheme == "importance" and tp.qtype.name == "Q4_K"
    stack = next(s for s in open_source(d).tensors if s.name == name and isinstance(s, ExpertStack))
    data = next(t for t in gguf.GGUFReader(str(out)).tensors if t.name == name).data
    slabs = np.asarray(data).reshape(len(stack.parts), -1)
    rows = imx.get(name)
    for e, part in enumerate(stack.parts):
        want = ggml_quantize("Q4_K", part.load(), imatrix=rows[e]).reshape(-1)
        assert np.array_equal(slabs[e], want), f"expert {e} ({int(counts[e])} tokens)"
    # the rows differ, so a stack written with one row for all would not have matched
    assert not np.allclose(rows[unseen], rows[int(np.flatnonzero(counts)[0])])


def test_gptq_solves_each_expert_on_its_routed_tokens(moe, tmp_path):
    """--scheme gptq on an MoE: every expert of every stack is solved on its own Hessian
    (its routed tokens), gains over rounding to nearest, and is written as its own slab;
    an expert no token reached is rounded to nearest: its bytes are ggml_quantize_chunk's
    without statistics. Two calibration tokens leave at least half the experts unrouted."""
    import torch

    from qconvert.source.expert_stack import ExpertStack
    from qconvert.source.model_source import open_source

    d = moe("qwen3_moe")
    out = tmp_path / "gptq.gguf"
    torch.manual_seed(0)
    res = qconvert.quantize(d, out, type="Q4_K_M", scheme="gptq", calibration_samples=1, calibration_seqlen=2,
                            device="cpu")
    stacks = {s.name: s for s in open_source(d).tensors if isinstance(s, ExpertStack)}
    plan = {tp.name: tp for tp in res.plan.tensors}
    assert {plan[n].scheme for n in stacks} == {"gptq"}
    files = {t.name: t for t in gguf.GGUFReader(str(out)).tensors}
    solved = plain = 0
    for name, s in stacks.items():
        slabs = np.asarray(files[name].data).reshape(len(s.parts), -1)
        for e, part in enumerate(s.parts):
            rtn = ggml_quantize(plan[name].qtype.name, part.load()).reshape(-1)
            st = res.stats[f"{name}[{e}]"]
            if "err" in st:  # routed: solved by GPTQ
                solved += 1
                assert st["err"] < st["rtn_err"]
                assert not np.array_equal(slabs[e], rtn)
            else:  # unrouted: the fallback
                plain += 1
                assert np.array_equal(slabs[e], rtn), f"{name} expert {e}"
    assert solved and plain >= solved  # 2 tokens x top-2: at most 4 of 8 experts per layer
    ids = prompt_ids(d)
    assert np.isfinite(llama_logits(out, ids)).all()


def test_safetensors_output_of_per_expert_checkpoint_refused(moe, tmp_path):
    """transformers cannot load such an output back (see arch/moe.py): one line, nothing written."""
    out = tmp_path / "st"
    with pytest.raises(UnsupportedError, match="per-expert weights"):
        qconvert.quantize(moe("qwen3_moe"), out, format="safetensors")
    assert not out.exists()


@pytest.mark.parametrize("name", ["mixtral", "deepseek_v3"])
def test_calibration_reads_experts_lazily_with_the_full_loads_statistics(name, moe, monkeypatch):
    """The layer-by-layer calibration model fills transformers' fused expert parameters
    from the per-expert tensors (Mixtral's block_sparse_moe.experts.N.w1/w3/w2 included), so
    an MoE model is never loaded whole; its statistics equal those of transformers' full load."""
    from qconvert.calib import layerwise
    from qconvert.calib.collect import collect_importance
    from qconvert.calib.lazy_model import lazy_weights

    d = moe(name)
    assert lazy_weights(layerwise.load_causal_lm(d)) is not None
    lazy = collect_importance(d, n_samples=2, seqlen=32, device="cpu")
    monkeypatch.setattr(layerwise, "load_lazy", lambda *a, **k: (None, "test: full load"))
    full = collect_importance(d, n_samples=2, seqlen=32, device="cpu")
    assert lazy.names() == full.names() and any("_exps" in n for n in lazy.names())
    for n in lazy.names():
        np.testing.assert_array_equal(lazy.counts(n), full.counts(n))
        np.testing.assert_allclose(lazy.sums(n), full.sums(n), rtol=1e-5, err_msg=n)


def test_gptq_experts_calibration_cannot_reach_are_rounded_to_nearest(moe, tmp_path, monkeypatch):
    """An experts module the calibration pass does not know how to replay (simulated here by
    hiding Llama 4's) leaves its experts without statistics: GPTQ still runs on attention and
    dense layers, and every expert slab is ggml_quantize_chunk's plain bytes."""
    from qconvert.calib import experts as calib_experts
    from qconvert.schemes import gptq_experts
    from qconvert.source.expert_stack import ExpertStack
    from qconvert.source.model_source import open_source

    monkeypatch.setattr(calib_experts, "is_experts", lambda m: False)
    monkeypatch.setattr(gptq_experts, "is_experts", lambda m: False)
    d = moe("llama4")
    out = tmp_path / "gptq.gguf"
    res = qconvert.quantize(d, out, type="Q4_K_M", scheme="gptq", calibration_samples=1, calibration_seqlen=16,
                            device="cpu")
    assert res.stats and not any("_exps" in k for k in res.stats)
    plan = {tp.name: tp for tp in res.plan.tensors}
    files = {t.name: t for t in gguf.GGUFReader(str(out)).tensors}
    stacks = [s for s in open_source(d).tensors if isinstance(s, ExpertStack)]
    assert stacks
    for s in stacks:
        slabs = np.asarray(files[s.name].data).reshape(len(s.parts), -1)
        for e, part in enumerate(s.parts):
            assert np.array_equal(slabs[e], ggml_quantize(plan[s.name].qtype.name, part.load()).reshape(-1))


def test_llama4_expert_statistics_from_routed_scaled_tokens(moe):
    """Llama 4 hands every expert every token, scaled by its routing weight (0 unless
    chosen): each expert's row counts the tokens its router chose and sums (weight x input)^2
    over them -- what llama.cpp's llama4 graph multiplies. Recomputed from transformers' router."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qconvert.calib.collect import collect_importance
    from qconvert.calib.text import calibration_samples

    d = moe("llama4")
    imx = collect_importance(d, n_samples=2, seqlen=32, device="cpu")
    samples = calibration_samples(AutoTokenizer.from_pretrained(str(d)), n_samples=2, seqlen=32)
    model = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32).eval()
    seen: dict[str, list] = {}
    ff = model.model.layers[1].feed_forward
    h = ff.router.register_forward_hook(lambda m, i, o: seen.setdefault("in", []).append((i[0], o[0])))
    with torch.no_grad():
        for row in samples:
            model(row[None])
    h.remove()
    x = torch.cat([i.reshape(-1, i.shape[-1]) for i, _ in seen["in"]]).double()
    scores = torch.cat([o for _, o in seen["in"]]).double()  # (tokens, n_expert), 0 where not chosen
    chosen = scores.argmax(-1)
    n = scores.shape[-1]
    want_counts = np.array([int((chosen == e).sum()) for e in range(n)])
    want = np.stack([((x[chosen == e] * scores[chosen == e, e:e + 1]) ** 2).sum(0).numpy() for e in range(n)])
    np.testing.assert_array_equal(imx.counts("blk.1.ffn_gate_exps.weight"), want_counts)
    np.testing.assert_allclose(imx.sums("blk.1.ffn_gate_exps.weight"), want, rtol=2e-4, atol=1e-6)
    assert want_counts.sum() == x.shape[0]  # top-1


def test_checkpoint_with_stacked_experts_converts_like_per_expert(moe, tmp_path):
    """The same Qwen3-MoE stored with each layer's experts stacked as transformers 5 holds
    them (experts.gate_up_proj (n, 2 x ff, hidden), experts.down_proj (n, hidden, ff)) gives
    the same GGUF tensors as the per-expert checkpoint."""
    import torch
    from safetensors.torch import load_file, save_file

    src = moe("qwen3_moe")
    d = tmp_path / "stacked"
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
        gate_up = [torch.cat([tensors.pop(f"{p}.{e}.gate_proj.weight"), tensors.pop(f"{p}.{e}.up_proj.weight")])
                   for e in range(n)]
        tensors[f"{p}.gate_up_proj"] = torch.stack(gate_up)
        tensors[f"{p}.down_proj"] = torch.stack([tensors.pop(f"{p}.{e}.down_proj.weight") for e in range(n)])
    save_file(tensors, str(d / "model.safetensors"))
    a = qconvert.quantize(src, tmp_path / "a.gguf", type="Q4_K_M").output
    b = qconvert.quantize(d, tmp_path / "b.gguf", type="Q4_K_M").output
    ta = {t.name: t for t in gguf.GGUFReader(str(a)).tensors}
    tb = {t.name: t for t in gguf.GGUFReader(str(b)).tensors}
    assert sorted(ta) == sorted(tb) and any("_exps" in k for k in ta)
    for k in ta:
        assert np.array_equal(np.asarray(ta[k].data), np.asarray(tb[k].data)), k


@pytest.mark.parametrize("type_name", ["F16", "Q8_0", "Q4_K_M"])
def test_shared_expert_gate_stays_f32(type_name, moe):
    """Qwen2-MoE's shared-expert gate (1, n_embd) is a vector to ggml (ggml_n_dims 1): llama.cpp's
    converter writes it F32 and llama-quantize copies it; so do we, under every type."""
    res = qconvert.quantize(moe("qwen2_moe"), None, type=type_name, dry_run=True)
    gates = [tp for tp in res.plan.tensors if tp.name.endswith("ffn_gate_inp_shexp.weight")]
    assert gates and {tp.qtype.name for tp in gates} == {"F32"}


def test_memory_estimate_counts_mla_cache_as_llama_cpp_allocates(moe, tmp_path):
    """DeepSeek's MLA: llama.cpp caches one K row of kv_lora_rank + qk_rope_head_dim per token
    and layer and no V (measured: 1024 cells x 3 layers -> 'K (f16): 1.69 MiB, V (f16): 0.00
    MiB' for this fixture); the estimate from config.json and from the GGUF says the same,
    where counting its 4 heads of K and V would give several times more."""
    from qconvert.plan.memory import kv_cache_bytes_for
    from qconvert.plan.model_shape import model_shape_from_dir, read_gguf_model

    d = moe("deepseek_v3")
    cfg = json.loads((d / "config.json").read_text())
    want = 1024 * cfg["num_hidden_layers"] * (cfg["kv_lora_rank"] + cfg["qk_rope_head_dim"]) * 2
    assert kv_cache_bytes_for(model_shape_from_dir(d), 1024) == want
    out = qconvert.quantize(d, tmp_path / "f16.gguf", type="F16").output
    assert kv_cache_bytes_for(read_gguf_model(out).shape, 1024) == want


@pytest.mark.parametrize("preset", ["Q4_K_M", "Q2_K", "Q3_K_M"])
@pytest.mark.parametrize("name", FAMILIES)
def test_whole_file_equals_llama_quantize(name, preset, moe, tmp_path):
    """The preset's whole mix on a real MoE model: qconvert's one-pass GGUF has every
    tensor's type and bytes of llama.cpp's own quantizer (llama_model_quantize) run on
    qconvert's F32 file. (llama-quantize writes Qwen2-MoE's (1, n_embd) gate as a 1-D
    tensor; the values are compared flat.)"""
    from test_llama_cpp_bytes import llama_quantize

    d = moe(name)
    f32 = qconvert.quantize(d, tmp_path / "f32.gguf", type="F32").output
    theirs = tmp_path / "llama.gguf"
    llama_quantize(f32, theirs, preset)
    ours = qconvert.quantize(d, tmp_path / "ours.gguf", type=preset).output
    rt = {t.name: t for t in gguf.GGUFReader(theirs).tensors}
    ro = {t.name: t for t in gguf.GGUFReader(ours).tensors}
    assert set(rt) == set(ro)
    for n, t in rt.items():
        assert ro[n].tensor_type == t.tensor_type, (n, ro[n].tensor_type.name, t.tensor_type.name)
        a, b = np.asarray(ro[n].data).view(np.uint8).reshape(-1), np.asarray(t.data).view(np.uint8).reshape(-1)
        assert np.array_equal(a, b), n


def test_llama4_multimodal_checkpoint_converts_its_language_model(moe, tmp_path):
    """Llama4ForConditionalGeneration as transformers saves it (language_model.model.*,
    language_model.lm_head, vision_model.*, multi_modal_projector.*, the text facts under
    text_config): the GGUF holds the text model's tensors, equal to the text-only checkpoint's."""
    import torch
    from safetensors.torch import load_file, save_file

    src = moe("llama4")
    mm = tmp_path / "mm"
    mm.mkdir()
    for f in src.glob("tokenizer*"):
        shutil.copy(f, mm)
    text_cfg = json.loads((src / "config.json").read_text())
    text_cfg.pop("architectures")
    (mm / "config.json").write_text(json.dumps({"architectures": ["Llama4ForConditionalGeneration"],
                                                "model_type": "llama4", "text_config": text_cfg,
                                                "vision_config": {"hidden_size": 64}}))
    tensors = {}
    for shard in sorted(src.glob("*.safetensors")):
        for k, v in load_file(str(shard)).items():
            tensors["language_model." + k] = v
    tensors["vision_model.patch_embedding.linear.weight"] = torch.ones(64, 588)
    tensors["multi_modal_projector.linear_1.weight"] = torch.ones(256, 64)
    save_file(tensors, str(mm / "model.safetensors"))
    a = qconvert.quantize(src, tmp_path / "text.gguf", type="Q8_0").output
    b = qconvert.quantize(mm, tmp_path / "mm.gguf", type="Q8_0").output
    ta = {t.name: t for t in gguf.GGUFReader(str(a)).tensors}
    tb = {t.name: t for t in gguf.GGUFReader(str(b)).tensors}
    assert sorted(ta) == sorted(tb)
    for n in ta:
        assert np.array_equal(np.asarray(ta[n].data), np.asarray(tb[n].data)), n
