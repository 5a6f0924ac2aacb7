"""Quantized safetensors output (compressed-tensors pack-quantized).

The end-to-end check: checkpoints written by qconvert are loaded by transformers in a
fresh interpreter that never imports qconvert (so only transformers + compressed-tensors
decode them); its decoded Linear weights must equal ours and its logits must equal those
of the original architecture running on our own dequantized weights. The packing is also
compared bit for bit with compressed-tensors' packer and with a bit stream built from
Python integers, and the quantizer's scales / zero points / codes with
compressed-tensors' own rules.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open

from qconvert.errors import InputError, OutputExistsError, ShapeError, UnsupportedError
from qconvert.schemes.absmax import rtn_grid
from qconvert.schemes.gptq import accumulate_hessian, gptq_quantize, hessian_init
from qconvert.sink.compressed_tensors import pack_int32, unpack_int32
from qconvert.sink.safetensors_out import (dequantized_state_dict, read_dequantized,
                                           write_quantized_safetensors)

IDS = [[0, 5, 17, 99, 300, 2, 45, 77, 300, 411, 12, 250, 3, 8]]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")

# name -> (fixture model, writer options); "gptq" cases get GPTQ results for two tensors
CASES = {
    "llama-w4-g128": ("llama", dict(bits=4, group_size=128, sym=True)),
    "llama-w8-channel": ("llama", dict(bits=8, group_size=-1, sym=True)),
    "llama-w4-g32-asym": ("llama", dict(bits=4, group_size=32, sym=False)),
    "llama-w3-g64-asym": ("llama", dict(bits=3, group_size=64, sym=False)),  # codes straddle words
    "llama-w4-g512": ("llama", dict(bits=4, group_size=512, sym=True)),  # only down_proj divides
    "llama-w4-g128-gptq": ("llama", dict(bits=4, group_size=128, sym=True)),
    "qwen3-w4-g128": ("qwen3", dict(bits=4, group_size=128, sym=True)),
    "qwen3-w4-g32-asym": ("qwen3", dict(bits=4, group_size=32, sym=False)),
    "llama_f16-w4-g64-asym": ("llama_f16", dict(bits=4, group_size=64, sym=False)),  # F16 scales
}
GPTQ_TENSORS = ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight")

LOADER = """
import json, sys
import torch
import transformers
from transformers import AutoModelForCausalLM

transformers.utils.logging.set_verbosity_error()
spec = json.loads(open(sys.argv[1]).read())
ids = torch.tensor(spec["ids"])
out = {}
for name, path in spec["models"].items():
    model = AutoModelForCausalLM.from_pretrained(path)  # CPU, the config's dtype
    with torch.no_grad():
        logits = model(ids).logits.float()
    weights = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("_proj.weight")}
    out[name] = {"logits": logits, "weights": weights, "dtype": str(model.dtype)}
assert "qconvert" not in sys.modules, "the loader must not import qconvert"
assert "compressed_tensors" in sys.modules  # what decoded the weights
torch.save(out, sys.argv[2])
"""


def gptq_results(model_dir) -> dict:
    """GPTQ (act-order with static groups, bf16 scales) for two tensors, on random
    activations: a second source of codes besides round-to-nearest."""
    from safetensors.torch import load_file

    weights = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        weights.update(load_file(f))
    g = torch.Generator().manual_seed(11)
    out = {}
    for name in GPTQ_TENSORS:
        W = weights[name].float()
        H, n = hessian_init(W.shape[1])
        x = torch.randn(256, W.shape[1], generator=g) * torch.linspace(0.2, 3.0, W.shape[1])
        H, n = accumulate_hessian(H, n, x)
        out[name] = gptq_quantize(W, H, bits=4, group_size=128, act_order=True, static_groups=True, sym=True,
                                  scale_dtype=torch.bfloat16)
    return out


@pytest.fixture(scope="module")
def models(tiny, tmp_path_factory):
    """Fixture checkpoints by name; "llama_f16" is the tiny Llama re-saved in float16."""
    made = {}

    def get(name: str):
        if name not in made:
            if name == "llama_f16":
                from transformers import AutoModelForCausalLM

                src = tiny("llama")
                out = tmp_path_factory.mktemp("llama_f16")
                AutoModelForCausalLM.from_pretrained(src, dtype=torch.float16).save_pretrained(out)
                for f in TOKENIZER_FILES:
                    (out / f).write_bytes((src / f).read_bytes())
                made[name] = out
            else:
                made[name] = tiny(name)
        return made[name]

    return get


def options(models, case: str, gptq: dict) -> tuple:
    model, kw = CASES[case]
    kw = dict(kw)
    if case.endswith("gptq"):
        kw["quantized"] = gptq
    return models(model), kw


@pytest.fixture(scope="module")
def gptq(models):
    return gptq_results(models("llama"))


@pytest.fixture(scope="module")
def loaded(models, gptq, tmp_path_factory):
    """Every case written, then loaded by transformers in one fresh interpreter."""
    root = tmp_path_factory.mktemp("st_out")
    outs = {}
    for case in CASES:
        src, kw = options(models, case, gptq)
        outs[case] = write_quantized_safetensors(src, root / case, shard_bytes=400_000, **kw)
    (root / "load.py").write_text(LOADER)
    (root / "spec.json").write_text(json.dumps({"ids": IDS, "models": {k: str(v) for k, v in outs.items()}}))
    env = dict(os.environ, TQDM_DISABLE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, str(root / "load.py"), str(root / "spec.json"), str(root / "res.pt")],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return outs, torch.load(root / "res.pt")


class Reference:
    """The original architecture and checkpoint (loaded once), run with some weights
    swapped in."""

    def __init__(self, src) -> None:
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(src)
        self.pristine = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.original = self.logits({})

    def logits(self, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        sd = self.model.state_dict()
        with torch.no_grad():
            for k, v in self.pristine.items():
                sd[k].copy_(weights[k].to(v.dtype) if k in weights else v)
            return self.model(torch.tensor(IDS)).logits.float()


@pytest.fixture(scope="module")
def reference(models):
    made = {}

    def get(model: str) -> Reference:
        if model not in made:
            made[model] = Reference(models(model))
        return made[model]

    return get


@pytest.mark.parametrize("case", list(CASES))
def test_transformers_decodes_our_weights_and_logits(case, models, gptq, loaded, reference):
    outs, res = loaded
    src, kw = options(models, case, gptq)
    got = res[case]
    dtype = torch.float16 if "f16" in case else torch.bfloat16
    assert got["dtype"] == str(dtype)
    ours = dequantized_state_dict(src, **kw)
    # the weights transformers decoded are ours, bit for bit (a bf16/f16 scale times a
    # small integer is exact in float32, and both sides round that once to the model dtype)
    assert set(ours) <= set(got["weights"])
    for name, w in ours.items():
        assert torch.equal(got["weights"][name], w.to(dtype)), name
    ref = reference(CASES[case][0])
    logits = ref.logits(ours)
    diff = float((got["logits"] - logits).abs().max())
    assert diff <= 1e-3 * float(logits.abs().max()), (case, diff)
    # and the quantization did something: the original model answers differently
    assert float((got["logits"] - ref.original).abs().max()) > 1e-2
    # our reader of the written files agrees with the in-memory result
    back = read_dequantized(outs[case])
    assert set(back) == set(ours)
    for name, w in ours.items():
        np.testing.assert_array_equal(back[name], w.numpy())


def test_gptq_results_are_written_as_given(gptq, loaded):
    outs, _ = loaded
    back = read_dequantized(outs["llama-w4-g128-gptq"])
    rtn = read_dequantized(outs["llama-w4-g128"])
    for name, r in gptq.items():
        np.testing.assert_array_equal(back[name], r.dequant.numpy())
        assert not np.array_equal(back[name], rtn[name])  # not silently re-rounded


def test_scales_are_stored_in_the_model_dtype(loaded):
    outs, _ = loaded
    for case, dtype in (("llama-w4-g128", torch.bfloat16), ("llama_f16-w4-g64-asym", torch.float16)):
        found = set()
        for f in outs[case].glob("*.safetensors"):
            with safe_open(f, "pt") as st:
                found |= {st.get_tensor(k).dtype for k in st.keys() if k.endswith("weight_scale")}
        assert found == {dtype}, case


def test_more_bits_less_error(loaded, reference):
    _, res = loaded
    orig = reference("llama").original
    err = {c: float((res[c]["logits"] - orig).abs().mean()) for c in ("llama-w8-channel", "llama-w4-g128")}
    assert err["llama-w8-channel"] < err["llama-w4-g128"] / 4, err


# ----------------------------------------------------------------------------- packing

@pytest.mark.parametrize("bits", range(2, 9))
def test_packing_matches_compressed_tensors(bits):
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    g = torch.Generator().manual_seed(bits)
    for shape in [(5, 70), (3, 32), (9, 1), (4, 100)]:
        codes = torch.randint(0, 2**bits, shape, generator=g)
        signed = (codes - 2 ** (bits - 1)).to(torch.int8)
        ours = pack_int32(codes.numpy().astype(np.uint8), bits)
        assert ours.dtype == np.int32
        np.testing.assert_array_equal(ours, pack_to_int32(signed, bits).numpy())
        zp = pack_int32(codes.numpy().T.astype(np.uint8), bits).T  # zero points: packed down columns
        np.testing.assert_array_equal(zp, pack_to_int32(signed, bits, packed_dim=0).numpy())
        np.testing.assert_array_equal(unpack_int32(ours, bits, shape[1]), codes.numpy())


@pytest.mark.parametrize("bits", [3, 4, 5, 7])
def test_packing_is_one_little_endian_bit_stream_per_row(bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 2**bits, size=(2, 45)).astype(np.uint8)
    packed = pack_int32(codes, bits).view(np.uint32)
    for row, words in zip(codes, packed):
        stream = sum(int(c) << (bits * i) for i, c in enumerate(row))
        expect = [(stream >> (32 * k)) & 0xFFFFFFFF for k in range(len(words))]
        assert [int(w) for w in words] == expect
        assert len(words) == -(-45 * bits // 32)


# ----------------------------------------------------------------------------- quantizer

@pytest.mark.parametrize("bits,group_size,sym", [(4, 128, True), (4, 32, False), (8, -1, True),
                                                 (3, 64, False), (2, 32, True), (8, -1, False)])
def test_rtn_grid_follows_compressed_tensors_rules(bits, group_size, sym):
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import quantize
    from compressed_tensors.quantization.utils import calculate_qparams

    W = torch.randn(48, 256, generator=torch.Generator().manual_seed(bits))
    args = QuantizationArgs(num_bits=bits, symmetric=sym, strategy="channel" if group_size == -1 else "group",
                            group_size=None if group_size == -1 else group_size)
    gs = 256 if group_size == -1 else group_size
    Wg = W.reshape(48, -1, gs)
    scale, zp = calculate_qparams(Wg.amin(-1), Wg.amax(-1), args)
    r = rtn_grid(W, bits=bits, group_size=group_size, sym=sym)
    torch.testing.assert_close(r.scales, scale.reshape(r.scales.shape), rtol=1e-6, atol=0)
    zp_signed = (r.zeros - 2 ** (bits - 1)).to(torch.int8)
    assert torch.equal(zp_signed, zp.reshape(zp_signed.shape).to(torch.int8))
    for scale_dtype in (None, torch.bfloat16, torch.float16):
        r = rtn_grid(W, bits=bits, group_size=group_size, sym=sym, scale_dtype=scale_dtype)
        if scale_dtype is not None:
            assert torch.equal(r.scales, r.scales.to(scale_dtype).float())
        q = quantize(W, r.scales, None if sym else (r.zeros - 2 ** (bits - 1)).to(torch.int8), args,
                     dtype=torch.int8)
        assert torch.equal(q.to(torch.int32), r.qweight.to(torch.int32) - 2 ** (bits - 1))


def test_rtn_grid_zero_group_and_bad_shapes():
    W = torch.randn(4, 64)
    W[1, :32] = 0
    r = rtn_grid(W, bits=4, group_size=32, sym=True)
    assert torch.isfinite(r.dequant).all() and bool((r.dequant[1, :32] == 0).all())
    with pytest.raises(ShapeError):
        rtn_grid(W, bits=4, group_size=48)
    with pytest.raises(UnsupportedError):
        rtn_grid(W, bits=9, group_size=32)


# ----------------------------------------------------------------------------- files

def test_shards_index_and_copied_tensors(tiny, tmp_path):
    src = tiny("llama")
    out = write_quantized_safetensors(src, tmp_path / "q", bits=4, group_size=128, shard_bytes=150_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) >= 5 and files == sorted(p.name for p in out.glob("*.safetensors"))
    total, seen = 0, {}
    for f in files:
        with safe_open(out / f, "pt") as st:  # the reference reader accepts our headers
            assert st.metadata() == {"format": "pt"}
            size = 0
            for k in st.keys():
                assert index["weight_map"][k] == f
                seen[k] = st.get_tensor(k)
                size += seen[k].numel() * seen[k].element_size()
            assert size <= 150_000 or len(st.keys()) == 1, (f, size)  # a shard over the size holds one tensor
            total += size
    assert index["metadata"]["total_size"] == total and set(seen) == set(index["weight_map"])
    originals = {}
    for f in src.glob("*.safetensors"):
        with safe_open(f, "pt") as st:
            originals.update({k: st.get_tensor(k) for k in st.keys()})
    for k, v in originals.items():
        if k.endswith("_proj.weight"):
            prefix = k[:-len(".weight")]
            assert k not in seen
            assert seen[f"{prefix}.weight_packed"].dtype == torch.int32
            assert seen[f"{prefix}.weight_packed"].shape == (v.shape[0], v.shape[1] * 4 // 32)
            assert seen[f"{prefix}.weight_scale"].dtype == torch.bfloat16
            assert seen[f"{prefix}.weight_scale"].shape == (v.shape[0], v.shape[1] // 128)
            assert seen[f"{prefix}.weight_shape"].tolist() == list(v.shape)
            assert f"{prefix}.weight_zero_point" not in seen
        else:  # embeddings, lm_head, norms: the original bytes and dtype
            assert seen[k].dtype == v.dtype and torch.equal(seen[k], v), k
    # one big shard: a single model.safetensors and no index
    one = write_quantized_safetensors(src, tmp_path / "one", bits=4, group_size=128)
    assert sorted(p.name for p in one.glob("*.safetensors")) == ["model.safetensors"]
    assert not (one / "model.safetensors.index.json").exists()
    assert read_dequantized(one).keys() == read_dequantized(out).keys()


def test_config_and_tokenizer_files(tiny, tmp_path):
    src = tiny("qwen3")
    out = write_quantized_safetensors(src, tmp_path / "q", bits=4, group_size=32, sym=False)
    for name in TOKENIZER_FILES:
        assert (out / name).read_bytes() == (src / name).read_bytes(), name
    before = json.loads((src / "config.json").read_text())
    after = json.loads((out / "config.json").read_text())
    qc = after.pop("quantization_config")
    assert after == before
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "pack-quantized"
    assert qc["quantization_status"] == "compressed" and "lm_head" in qc["ignore"]
    (group,) = qc["config_groups"].values()
    assert group["weights"] == {"num_bits": 4, "type": "int", "symmetric": False, "group_size": 32,
                                "strategy": "group", "dynamic": False, "observer": "minmax"}
    assert group["targets"][0].startswith("re:")
    assert qc["dequantize"] is True  # asymmetric: decoded while loading (see compressed_tensors.py)
    ch = write_quantized_safetensors(src, tmp_path / "ch", bits=8, group_size=-1)
    w = json.loads((ch / "config.json").read_text())["quantization_config"]["config_groups"]["group_0"]["weights"]
    assert (w["strategy"], w["group_size"], w["num_bits"], w["symmetric"]) == ("channel", None, 8, True)
    assert "dequantize" not in json.loads((ch / "config.json").read_text())["quantization_config"]


def test_source_input_and_gguf_refusal(tiny, tmp_path):
    from types import SimpleNamespace

    from qconvert.source.model_source import open_hf

    src = tiny("llama")
    a = write_quantized_safetensors(open_hf(src, None), tmp_path / "a", bits=4, group_size=64)
    b = write_quantized_safetensors(src, tmp_path / "b", bits=4, group_size=64)
    for f in sorted(p.name for p in b.iterdir()):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    with pytest.raises(InputError, match="GGUF"):
        write_quantized_safetensors(SimpleNamespace(is_gguf=True, path=tmp_path / "m.gguf"), tmp_path / "c")


def test_output_directory_rules(tiny, tmp_path):
    src = tiny("llama")
    out = tmp_path / "q"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(OutputExistsError):
        write_quantized_safetensors(src, out)
    assert (out / "keep.txt").exists()
    # --force replaces a directory only when it holds nothing but checkpoint files
    with pytest.raises(InputError, match="keep.txt"):
        write_quantized_safetensors(src, out, force=True)
    assert (out / "keep.txt").read_text() == "x"
    (out / "keep.txt").unlink()
    (out / "model.safetensors").write_bytes(b"an earlier output")
    write_quantized_safetensors(src, out, force=True)
    assert (out / "config.json").exists() and (out / "model.safetensors").stat().st_size > 100
    with pytest.raises(InputError):
        write_quantized_safetensors(src, src, force=True)
    with pytest.raises(InputError):
        write_quantized_safetensors(src, tmp_path / "missing" / "q")


def test_failure_leaves_nothing_behind(tiny, tmp_path):
    src = tiny("llama")
    name = "model.layers.1.mlp.down_proj.weight"  # late in the plan: earlier tensors are written first
    good = rtn_grid(torch.randn(256, 512), bits=4, group_size=128)
    bad = type(good)(good.qweight | 0x10, good.scales, good.zeros, good.g_idx)  # a 5-bit code
    with pytest.raises(ShapeError, match="outside 0..15"):
        write_quantized_safetensors(src, tmp_path / "q", quantized={name: bad})
    assert list(tmp_path.iterdir()) == []


def test_unstorable_results_are_refused(tiny, tmp_path):
    src = tiny("llama")
    name = GPTQ_TENSORS[0]
    W = torch.randn(256, 256)
    H, n = accumulate_hessian(*hessian_init(256), torch.randn(64, 256) * torch.linspace(0.1, 2, 256))
    dynamic = gptq_quantize(W, H, bits=4, group_size=128, act_order=True, sym=True)
    with pytest.raises(UnsupportedError, match="g_idx"):
        write_quantized_safetensors(src, tmp_path / "a", quantized={name: dynamic})
    asym = rtn_grid(W, bits=4, group_size=128, sym=False)
    with pytest.raises(InputError, match="asymmetric"):
        write_quantized_safetensors(src, tmp_path / "b", quantized={name: asym})
    with pytest.raises(InputError, match="does not quantize"):
        write_quantized_safetensors(src, tmp_path / "c", quantized={"model.norm.weight": asym})
    with pytest.raises(UnsupportedError):
        write_quantized_safetensors(src, tmp_path / "d", scheme="kquant")
    with pytest.raises(UnsupportedError, match="actorder"):
        write_quantized_safetensors(src, tmp_path / "e", actorder="group")
    assert list(tmp_path.iterdir()) == []
