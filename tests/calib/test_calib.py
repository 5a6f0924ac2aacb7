"""Calibration: text windows, the layer-at-a-time driver, importance statistics and
llama.cpp's imatrix files.

The driver is checked against transformers' own full-model forward on the same weights
(in float32), so anything it gets wrong about the arguments a model hands its layers
(masks, rotary tables, per-layer sliding windows in Gemma 3) shows up as a difference.
llama.cpp's imatrix formats are checked against ggml's own GGUF reader and against a
legacy file assembled here byte by byte from the layout in llama.cpp's imatrix tool."""

from __future__ import annotations

import ctypes
import glob
import os
import struct

import numpy as np
import pytest
import torch
from torch import nn

from fixtures.tiny_models import build, train_tokenizer
from qconvert.arch import adapter_for
from qconvert.calib.collect import collect_importance
from qconvert.calib.imatrix import ImportanceMatrix
from qconvert.calib.layerwise import find_decoder, load_causal_lm, resolve_device, run_layerwise
from qconvert.calib.lazy_model import lazy_weights
from qconvert.calib.text import calibration_samples, tokenize
from qconvert.errors import FormatError, InputError
from qconvert.source.checkpoint import Checkpoint

N, SEQ = 5, 48  # 5 samples in batches of 2: the last batch is smaller


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer()


@pytest.fixture(scope="module")
def models(tmp_path_factory, tok):
    root = tmp_path_factory.mktemp("calib")
    return {name: build(name, root / name, tok) for name in ("llama", "gemma3")}


def _samples(model_dir, n=N, seqlen=SEQ):
    from transformers import AutoTokenizer

    return calibration_samples(AutoTokenizer.from_pretrained(model_dir), n_samples=n, seqlen=seqlen)


def _reference(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def _linear_inputs(model: nn.Module, ids: torch.Tensor, layer: int) -> dict[str, torch.Tensor]:
    """Inputs of every nn.Linear of one decoder layer in a plain full-model forward."""
    got = {}
    handles = [m.register_forward_hook(lambda _m, inp, _o, n=n: got.__setitem__(n, inp[0].clone()))
               for n, m in model.named_modules() if isinstance(m, nn.Linear) and f".layers.{layer}." in n]
    with torch.no_grad():
        model(input_ids=ids)
    for h in handles:
        h.remove()
    return got


# ----------------------------------------------------------------------------- text

def test_samples_are_windows_of_the_text(tok, tmp_path):
    text = "".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(300))
    f = tmp_path / "t.txt"
    f.write_text(text, encoding="utf-8")
    ids = tokenize(tok, text)
    bos = tok.token_to_id("<|begin_of_text|>")
    for n, seqlen in ((4, 64), (60, 64)):  # disjoint slots; then more windows than fit: overlapping
        x = calibration_samples(tok, text_file=f, n_samples=n, seqlen=seqlen, seed=3)
        assert x.shape == (n, seqlen) and x.dtype == torch.int64
        assert (x[:, 0] == bos).all()
        starts = []
        for row in x.tolist():
            hits = [s for s in range(len(ids) - seqlen + 1) if ids[s + 1:s + seqlen] == row[1:]]
            assert hits, "a window is not a slice of the tokenized text"
            starts.append(hits[0])
        if n * seqlen <= len(ids):
            assert starts == sorted(starts) and all(b - a >= seqlen for a, b in zip(starts, starts[1:]))
        again = calibration_samples(tok, text_file=f, n_samples=n, seqlen=seqlen, seed=3)
        assert torch.equal(x, again)
        assert not torch.equal(x, calibration_samples(tok, text_file=f, n_samples=n, seqlen=seqlen, seed=4))


def test_default_text_and_errors(tok, tmp_path):
    x = calibration_samples(tok, n_samples=3, seqlen=32)
    assert x.shape == (3, 32)
    with pytest.raises(InputError, match="not found"):
        calibration_samples(tok, text_file=tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(InputError, match="empty"):
        calibration_samples(tok, text_file=tmp_path / "empty.txt")
    (tmp_path / "short.txt").write_text("just a few words")
    n = len(tokenize(tok, "just a few words"))
    with pytest.raises(InputError, match=f"{n} tokens found"):
        calibration_samples(tok, text_file=tmp_path / "short.txt", seqlen=512)


# ----------------------------------------------------------------------------- driver

@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_layerwise_equals_full_forward(models, name, lazy):
    d = models[name]
    ids = _samples(d)
    ref = _reference(d)
    model = load_causal_lm(d, lazy=lazy)
    # what transformers loads: bf16 on CPU, as stored
    before = {k: v.clone() for k, v in load_causal_lm(d, lazy=False).state_dict().items()}
    seen = []
    out = run_layerwise(model, ids, device="cpu", batch_size=2, show_progress=False, keep_weights=True,
                        transform=lambda i, layer: seen.append((i, layer.mlp.down_proj.weight.dtype)))
    h = torch.cat(out)
    with torch.no_grad():
        full = ref(input_ids=ids, output_hidden_states=True)
        logits = ref.lm_head(ref.model.norm(h))
        cap = getattr(ref.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
    assert (ref.model.norm(h) - full.hidden_states[-1]).abs().max().item() < 1e-4
    assert (logits - full.logits).abs().max().item() < 1e-4
    assert full.logits.std().item() > 1.0  # the comparison is not between near-constants
    assert seen == [(0, torch.float32), (1, torch.float32)]  # the transform sees float32 layers, in order
    # an identity transform leaves the stored weights as they were; a lazy model kept its
    # weights is whole (final norm, tied lm_head) afterwards
    after = model.state_dict()
    assert set(after) == set(before)
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.parametrize("lazy", [False, True])
def test_true_sequential(models, lazy):
    d = models["llama"]
    ids = _samples(d)

    def perturb(i, layer):
        if i == 0:
            g = torch.Generator().manual_seed(7)
            for lin in (layer.self_attn.o_proj, layer.mlp.down_proj):
                w = lin.weight
                w.add_(0.5 * torch.randn(w.shape, generator=g).to(w.device) * w.abs().mean())

    got: dict[tuple[int, str], list[torch.Tensor]] = {}
    model = load_causal_lm(d, lazy=lazy)
    run_layerwise(model, ids, device="cpu", batch_size=2, show_progress=False, transform=perturb,
                  keep_weights=lazy, on_linear=lambda i, n, x: got.setdefault((i, n), []).append(x.clone()))
    layer1 = {n: torch.cat(v) for (i, n), v in got.items() if i == 1}
    layer0 = {n: torch.cat(v) for (i, n), v in got.items() if i == 0}

    ref = _reference(d)
    plain0, plain1 = _linear_inputs(ref, ids, 0), _linear_inputs(ref, ids, 1)
    with torch.no_grad():
        perturb(0, ref.model.layers[0])
    pert1 = _linear_inputs(ref, ids, 1)
    assert set(layer1) == set(pert1) and len(pert1) == 7
    for n in pert1:
        assert (layer1[n] - pert1[n]).abs().max().item() < 1e-4, n
        assert (plain1[n] - pert1[n]).abs().max().item() > 0.05, n  # the perturbation reached layer 1
    for n in plain0:  # layer 0's own hooks ran before its transform
        assert (layer0[n] - plain0[n]).abs().max().item() < 1e-4, n
    # the transformed weights were written back into the model (in its bf16)
    w = model.model.layers[0].mlp.down_proj.weight
    assert w.dtype == torch.bfloat16 and torch.equal(w, ref.model.layers[0].mlp.down_proj.weight.bfloat16())


def test_driver_details(models):
    model = load_causal_lm(models["llama"], lazy=False)
    dec = find_decoder(model)
    assert dec.prefix == "model.layers" and dec.layers is model.model.layers
    # without a transform every weight gets its original storage back (no resident copies)
    ptrs = {k: (v.data_ptr(), v.dtype) for k, v in model.state_dict().items()}
    run_layerwise(model, _samples(models["llama"], 2, 16), device="cpu", show_progress=False)
    assert {k: (v.data_ptr(), v.dtype) for k, v in model.state_dict().items()} == ptrs
    assert all("forward" not in layer.__dict__ for layer in dec.layers)  # recorders removed
    assert resolve_device("cpu").type == "cpu"
    if torch.cuda.is_available():
        assert resolve_device("auto").type == "cuda"
    else:
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(InputError, match="no CUDA"):
            resolve_device("cuda")


@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_lazy_model_holds_one_layer(models, name):
    """The lazy path gives bit-identical hooks and outputs to the fully loaded model, while
    no more than the running decoder layer is ever read from the checkpoint. Gemma 3 has
    tied embeddings and per-layer-type rotary tables, neither of which is in the file."""
    d = models[name]
    ids = _samples(d)

    def perturb(i, layer):  # a transform whose effect reaches the next layer
        g = torch.Generator().manual_seed(i)
        w = layer.mlp.down_proj.weight
        w.add_(0.3 * torch.randn(w.shape, generator=g) * w.abs().mean())

    runs = {}
    for lazy in (False, True):
        model = load_causal_lm(d, lazy=lazy)
        assert (lazy_weights(model) is not None) == lazy
        names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
        real = []  # per hook call: (layer index, names of parameters not on meta)

        def resident(i, model=model, real=real):
            real.append((i, {n for n, p in model.named_parameters(remove_duplicate=False) if p.device.type != "meta"}))

        got: dict[tuple[int, str], list[torch.Tensor]] = {}

        def on_linear(i, n, x, got=got, resident=resident):
            got.setdefault((i, n), []).append(x.clone())
            resident(i)

        def transform(i, layer, resident=resident):
            resident(i)
            perturb(i, layer)

        out = run_layerwise(model, ids, device="cpu", batch_size=2, show_progress=False, on_linear=on_linear,
                            transform=transform)
        runs[lazy] = (torch.cat(out), {k: torch.cat(v) for k, v in got.items()})
        if lazy:
            assert len(real) == len(got) * 3 + 2  # 3 batches per linear, one transform per layer
            for i, held in real:
                assert held == {n for n in names if n.startswith(f"model.layers.{i}.")}, (i, sorted(held))
            assert all(p.device.type == "meta" for p in model.parameters())  # everything dropped afterwards
        else:
            assert all(len(held) == len(names) for _, held in real)
    (h0, x0), (h1, x1) = runs[False], runs[True]
    assert torch.equal(h0, h1)
    assert set(x0) == set(x1) and all(torch.equal(x0[k], x1[k]) for k in x0)


def test_lazy_model_finds_the_stack_under_another_prefix(models, tmp_path):
    """Multimodal Gemma 3 files keep the language model under `language_model.model.`
    (4.x) while the module tree names it differently: the prefix is found from where
    layer 0's weights are. Here a Llama file is renamed the same way: the lazy reader
    must find every tensor; a file in which a layer weight is missing is loaded in full."""
    import shutil

    from safetensors.torch import load_file, save_file

    src = models["llama"]
    renamed, broken = tmp_path / "renamed", tmp_path / "broken"
    for out, drop in ((renamed, None), (broken, "model.layers.1.mlp.up_proj.weight")):
        out.mkdir()
        for f in src.iterdir():
            if f.suffix != ".safetensors" and f.name != "model.safetensors.index.json":
                shutil.copy(f, out / f.name)
        tensors = {}
        for f in sorted(src.glob("*.safetensors")):
            tensors.update(load_file(f))
        tensors = {("language_model." + k if k.startswith("model.") else k): v for k, v in tensors.items()
                   if k != drop}
        save_file(tensors, out / "model.safetensors")
    model = load_causal_lm(renamed)
    weights = lazy_weights(model)
    assert weights is not None and weights.stored == "language_model.model."
    ids = _samples(src, 2, 16)
    eager = run_layerwise(load_causal_lm(src, lazy=False), ids, device="cpu", show_progress=False)
    lazy = run_layerwise(model, ids, device="cpu", show_progress=False)
    assert torch.equal(torch.cat(eager), torch.cat(lazy))
    assert lazy_weights(load_causal_lm(broken)) is None  # fell back to transformers' own load


# ----------------------------------------------------------------------------- importance

def test_importance_equals_full_forward_hooks(models):
    d = models["llama"]
    n, seqlen = 6, 64
    m = collect_importance(d, n_samples=n, seqlen=seqlen, device="cpu", batch_size=4, show_progress=False)

    ref = _reference(d)
    ids = _samples(d, n, seqlen)
    sums: dict[str, torch.Tensor] = {}
    handles = [mod.register_forward_hook(
        lambda _m, inp, _o, k=k: sums.__setitem__(k, sums.get(k, 0) + inp[0].double().square().sum((0, 1))))
        for k, mod in ref.named_modules() if isinstance(mod, nn.Linear) and ".layers." in k]
    with torch.no_grad():
        ref(input_ids=ids)
    for h in handles:
        h.remove()
    adapter = adapter_for(Checkpoint(d))
    expected = {adapter.gguf_name(k + ".weight"): s.numpy() / (n * seqlen) for k, s in sums.items()}
    assert len(expected) == 14 and set(m.names()) == set(expected)
    assert "blk.1.ffn_down.weight" in expected and "output.weight" not in m
    for name, mean in expected.items():
        assert m.counts(name).tolist() == [n * seqlen]
        np.testing.assert_allclose(m.get(name), mean, rtol=1e-5, err_msg=name)
    assert m.get("blk.0.ffn_down.weight").shape == (512,)  # intermediate size: down_proj's input
    assert m.get("nonexistent.weight") is None
    assert m.chunk_count == n and m.chunk_size == seqlen and m.arch == "llama"


# ----------------------------------------------------------------------------- files

def _ggml_read_imatrix(path) -> tuple[dict, dict]:
    """What llama.cpp's loader (common/imatrix-loader.cpp) sees in a GGUF imatrix, read
    with ggml's own GGUF parser from the libggml that llama-cpp-python ships."""
    import llama_cpp

    libdir = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
    lib = ctypes.CDLL(sorted(glob.glob(os.path.join(libdir, "libggml-base.*")))[0])

    class Params(ctypes.Structure):
        _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.POINTER(ctypes.c_void_p))]

    vp, i64 = ctypes.c_void_p, ctypes.c_int64
    s = ctypes.c_char_p
    for fn, res, args in (("gguf_init_from_file", vp, [s, Params]), ("gguf_find_key", i64, [vp, s]),
                          ("gguf_get_val_u32", ctypes.c_uint32, [vp, i64]),
                          ("gguf_get_arr_n", ctypes.c_size_t, [vp, i64]),
                          ("gguf_get_arr_str", s, [vp, i64, ctypes.c_size_t]),
                          ("gguf_get_n_tensors", i64, [vp]), ("gguf_get_tensor_name", s, [vp, i64]),
                          ("gguf_get_tensor_type", ctypes.c_int, [vp, i64]), ("ggml_get_tensor", vp, [vp, s]),
                          ("ggml_nelements", i64, [vp]), ("ggml_get_data", vp, [vp]),
                          ("gguf_free", None, [vp]), ("ggml_free", None, [vp])):
        getattr(lib, fn).restype, getattr(lib, fn).argtypes = res, args
    ctx = ctypes.c_void_p()
    g = lib.gguf_init_from_file(str(path).encode(), Params(False, ctypes.pointer(ctx)))
    assert g, "ggml cannot parse the file"
    try:
        keys = {}
        for key in ("imatrix.chunk_count", "imatrix.chunk_size"):
            k = lib.gguf_find_key(g, key.encode())
            assert k >= 0, key
            keys[key] = lib.gguf_get_val_u32(g, k)
        k = lib.gguf_find_key(g, b"imatrix.datasets")
        assert k >= 0
        keys["imatrix.datasets"] = [lib.gguf_get_arr_str(g, k, j).decode() for j in range(lib.gguf_get_arr_n(g, k))]
        tensors = {}
        for t in range(lib.gguf_get_n_tensors(g)):
            name = lib.gguf_get_tensor_name(g, t)
            assert lib.gguf_get_tensor_type(g, t) == 0  # GGML_TYPE_F32
            ptr = lib.ggml_get_tensor(ctx, name)
            n = lib.ggml_nelements(ptr)
            tensors[name.decode()] = np.ctypeslib.as_array(ctypes.cast(lib.ggml_get_data(ptr),
                                                                       ctypes.POINTER(ctypes.c_float)), (n,)).copy()
        return keys, tensors
    finally:
        lib.gguf_free(g)
        lib.ggml_free(ctx)


def test_gguf_imatrix_round_trip_and_ggml_reader(tmp_path):
    rng = np.random.default_rng(0)
    m = ImportanceMatrix(datasets=["a.txt", "b.txt"], chunk_count=12, chunk_size=256, arch="llama")
    dense = rng.random(96) * 50
    m.add("blk.0.attn_q.weight", dense, 3000)
    m.add("blk.0.attn_q.weight", dense, 72)  # sums and counts accumulate
    experts = rng.random((3, 32)) * 10
    m.add("blk.1.ffn_down_exps.weight", experts, [100, 0, 7])  # one expert never routed to
    path = tmp_path / "imatrix.gguf"
    m.save(path)

    back = ImportanceMatrix.load(path)
    assert back.names() == m.names() and back.datasets == ["a.txt", "b.txt"]
    assert (back.chunk_count, back.chunk_size, back.arch) == (12, 256, "llama")
    q = back.get("blk.0.attn_q.weight")
    np.testing.assert_allclose(q, (2 * dense / 3072).astype(np.float32), rtol=1e-6)
    e = back.get("blk.1.ffn_down_exps.weight")
    assert e.shape == (3, 32) and (e[1] == 1).all()  # no data: no weighting, as llama.cpp
    np.testing.assert_allclose(e[[0, 2]], experts[[0, 2]] / np.array([[100], [7]]), rtol=1e-6)

    keys, tensors = _ggml_read_imatrix(path)
    assert keys == {"imatrix.chunk_count": 12, "imatrix.chunk_size": 256, "imatrix.datasets": ["a.txt", "b.txt"]}
    assert set(tensors) == {f"{n}.{s}" for n in m.names() for s in ("in_sum2", "counts")}
    for name in m.names():  # llama-quantize's normalisation: sums / count per matrix
        sums, counts = tensors[name + ".in_sum2"], np.round(tensors[name + ".counts"])
        per = sums.reshape(len(counts), -1)
        want = np.where(counts[:, None] > 0, per / np.maximum(counts, 1)[:, None], 1.0).reshape(m.get(name).shape)
        np.testing.assert_allclose(back.get(name), want, rtol=1e-6)


def _legacy_entry(name: str, ncall: int, values: np.ndarray) -> bytes:
    raw = name.encode()
    return struct.pack("<i", len(raw)) + raw + struct.pack("<ii", ncall, len(values)) + values.astype("<f4").tobytes()


def test_legacy_dat(tmp_path):
    rng = np.random.default_rng(1)
    a, b = rng.random(64).astype(np.float32) * 4, rng.random(128).astype(np.float32)
    body = (struct.pack("<i", 2) + _legacy_entry("blk.0.ffn_up.weight", 10, a)
            + _legacy_entry("blk.0.ffn_down.weight", 0, b))
    trailer = struct.pack("<i", 10) + struct.pack("<i", 9) + b"wiki.test"
    for data, has_trailer in ((body + trailer, True), (body, False)):
        p = tmp_path / "old.dat"
        p.write_bytes(data)
        m = ImportanceMatrix.load(p)
        assert m.names() == ["blk.0.ffn_down.weight", "blk.0.ffn_up.weight"]
        np.testing.assert_allclose(m.get("blk.0.ffn_up.weight"), a / 10, rtol=1e-6)  # values are mean * ncall
        np.testing.assert_array_equal(m.get("blk.0.ffn_down.weight"), b)  # ncall 0: taken as they are
        assert (m.chunk_count, m.datasets) == ((10, ["wiki.test"]) if has_trailer else (0, []))

    # and our own legacy writer follows the same layout
    m = ImportanceMatrix(datasets=["x.txt"], chunk_count=3, chunk_size=100)
    m.add("blk.2.attn_v.weight", a * 250, 250)  # 250 tokens: ceil(250 / 100) = 3 calls
    out = tmp_path / "new.dat"
    m.save(out)
    data = out.read_bytes()
    expect = struct.pack("<i", 1) + _legacy_entry("blk.2.attn_v.weight", 3, a * 3) + struct.pack("<ii", 3, 5) + b"x.txt"
    assert len(data) == len(expect) and data[:32] == expect[:32] and data[-13:] == expect[-13:]
    np.testing.assert_allclose(np.frombuffer(data[35:35 + 256], "<f4"), a * 3, rtol=1e-6)

    (tmp_path / "junk.dat").write_bytes(b"\x01\x00\x00\x00\xff\xff")
    with pytest.raises(FormatError):
        ImportanceMatrix.load(tmp_path / "junk.dat")


def test_square_sums_share_one_input_and_see_in_place_changes():
    from qconvert.calib.collect import SquareSums

    g = torch.Generator().manual_seed(0)
    sums = SquareSums()
    for _ in range(3):
        x = torch.randn(2, 50, 16, generator=g)
        for name in ("q", "k", "v"):  # one input, three weights: summed once, counted for each
            sums(0, name, x)
        x.mul_(2)  # changed in place (a new version): not the sums of the old values
        sums(0, "o", x)
        sums(0, "down", torch.randn(2, 50, 8, generator=g))
    ref = {}
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = torch.randn(2, 50, 16, generator=g).double().reshape(-1, 16)
        for name in ("q", "k", "v"):
            ref[name] = ref.get(name, 0) + x.square().sum(0)
        ref["o"] = ref.get("o", 0) + (2 * x).square().sum(0)
        ref["down"] = ref.get("down", 0) + torch.randn(2, 50, 8, generator=g).double().reshape(-1, 8).square().sum(0)
    for name, want in ref.items():
        assert sums.counts[name] == 300
        torch.testing.assert_close(sums.sums[name], want, rtol=1e-6, atol=0)
    assert sums.sums["q"] is not sums.sums["k"]  # each weight accumulates on its own tensor
