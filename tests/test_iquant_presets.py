"""llama-quantize's i-quant file types (IQ1_S … IQ4_XS) and Q2_K_S: plans equal to the
types in the file llama.cpp's `llama_model_quantize` writes from the same F32 GGUF, with
and without importance statistics (several mixes depend on whether there are any), and
whole files byte-identical to llama.cpp's for the same statistics."""

from __future__ import annotations

import ctypes
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import pytest

import qconvert
from qconvert.calib.imatrix import ImportanceMatrix
from qconvert.errors import InputError
from qconvert.plan.iquant_presets import BASE, missing_importance
from test_presets import SYNTH, diff, plan_from_gguf, types_of, write_gguf

IQ = sorted(BASE)  # the 13 new file types
NEED = {"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "Q2_K_S"}
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny-llama"


def importance_for(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Positive per-column statistics for every matrix of a GGUF (one row per expert)."""
    rng = np.random.default_rng(seed)
    out = {}
    for t in gguf.GGUFReader(path).tensors:
        shape = [int(d) for d in t.shape]  # ne order: columns first
        if len(shape) >= 2 and t.name.endswith(".weight") and "norm" not in t.name:
            n_rows = shape[2] if len(shape) == 3 else 1
            out[t.name] = rng.gamma(2.0, 1.0, size=n_rows * shape[0]).astype(np.float32)
    return out


def llama_quantize(src: Path, out: Path, preset: str, imatrix: dict[str, np.ndarray] | None) -> dict[str, str]:
    """llama.cpp's quantizer on 2 threads, with statistics when given; name -> type."""
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{preset}")
    p.nthread = 2
    keep = []
    if imatrix is not None:
        arr = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, v) in enumerate(imatrix.items()):
            v = np.ascontiguousarray(v, dtype=np.float32)
            keep += [name.encode(), v]
            arr[i].name = keep[-2]
            arr[i].data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            arr[i].size = v.size
        arr[len(imatrix)].name = None
        p.imatrix = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(p))
    assert rc == 0, f"llama_model_quantize failed on {src} ({preset})"
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(out).tensors}


MODELS = {
    "gqa1-8l": dict(n_layers=8, n_head=4, n_head_kv=4),
    "gqa4-8l": dict(n_layers=8, n_head=4, n_head_kv=1),
    "ffn320": dict(n_layers=8, ff=320, n_head_kv=2, tied=True),  # i-quants fall back to IQ4_NL
    "moe-8x": SYNTH["moe-8x"], "moe-4x": SYNTH["moe-4x"], "falcon-16l": SYNTH["falcon-16l"],
    "llama-80l-gqa": SYNTH["llama-80l-gqa"],
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("iq")


@pytest.fixture(scope="module")
def synth(workdir):
    made = {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = write_gguf(workdir / f"{name}.gguf", **MODELS[name])
        return made[name]

    return get


# what each model tells apart: GQA and layer position everywhere; the 4-expert rule of the
# 1-2 bit mixes; the 8-expert bumps; the 70B attn_v rule of the 3-bit mixes; falcon's exceptions
ONLY = {"moe-4x": {"IQ1_S", "IQ2_M", "IQ2_XXS", "IQ3_XS"},
        "llama-80l-gqa": {"Q2_K_S", "IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M"},
        "falcon-16l": {"IQ2_S", "IQ3_XXS", "IQ3_M", "IQ4_XS"}}
CASES = [(m, p) for m in MODELS for p in IQ if p in ONLY.get(m, IQ)]


@pytest.mark.parametrize("model,preset", CASES)
def test_plan_matches_llama_quantize_with_importance(synth, workdir, model, preset):
    src = synth(model)
    theirs = llama_quantize(src, workdir / "out.gguf", preset, importance_for(src))
    assert diff(types_of(plan_from_gguf(src, preset, has_imatrix=True)), theirs) == {}


@pytest.mark.parametrize("preset", sorted(set(IQ) - NEED) + ["Q4_0", "Q5_0"])
@pytest.mark.parametrize("model", ["gqa1-8l", "gqa4-8l", "ffn320", "moe-8x"])
def test_plan_matches_llama_quantize_without_importance(synth, workdir, model, preset):
    src = synth(model)
    theirs = llama_quantize(src, workdir / "out.gguf", preset, None)
    plan = plan_from_gguf(src, preset)
    assert diff(types_of(plan), theirs) == {} and missing_importance(plan) is None


@pytest.mark.parametrize("preset", ["Q4_0", "Q5_0"])
def test_legacy_importance_rule(synth, workdir, preset):
    """With statistics llama.cpp moves the first ffn_down layers of Q4_0/Q5_0 to the _1 type."""
    src = synth("gqa1-8l")
    theirs = llama_quantize(src, workdir / "out.gguf", preset, importance_for(src))
    assert theirs["blk.0.ffn_down.weight"] == preset.replace("_0", "_1")
    assert diff(types_of(plan_from_gguf(src, preset, has_imatrix=True)), theirs) == {}


@pytest.mark.parametrize("preset", sorted(NEED))
def test_presets_needing_importance_are_refused_without(synth, preset):
    plan = plan_from_gguf(synth("gqa1-8l"), preset)
    assert missing_importance(plan) is not None
    with pytest.raises(InputError, match="importance statistics"):
        qconvert.quantize(EXAMPLE, type=preset, dry_run=True)


@pytest.fixture(scope="module")
def example(workdir):
    """The example model as an F32 GGUF, and importance statistics for it in llama.cpp's
    imatrix format (from a short calibration pass)."""
    from qconvert.calib.collect import collect_importance

    f32 = qconvert.quantize(EXAMPLE, workdir / "ex-F32.gguf", type="F32").output
    imx = workdir / "ex.imatrix.gguf"
    collect_importance(EXAMPLE, n_samples=4, seqlen=128, device="cpu", show_progress=False).save(imx)
    return f32, imx


@pytest.mark.parametrize("preset", IQ)
def test_files_byte_identical_to_llama_cpp(example, workdir, preset):
    f32, imx_path = example
    imx = ImportanceMatrix.load(imx_path)
    stats = {name: imx.get(name) for name in importance_for(f32) if imx.get(name) is not None}
    llama_quantize(f32, workdir / "theirs.gguf", preset, stats)
    ours = qconvert.quantize(EXAMPLE, workdir / "ours.gguf", type=preset, imatrix=imx_path, force=True).output
    a = {t.name: t for t in gguf.GGUFReader(ours).tensors}
    b = {t.name: t for t in gguf.GGUFReader(workdir / "theirs.gguf").tensors}
    assert set(a) == set(b)
    for name, t in b.items():
        assert a[name].tensor_type == t.tensor_type, name
        assert np.array_equal(np.asarray(a[name].data).reshape(-1).view(np.uint8),
                              np.asarray(t.data).reshape(-1).view(np.uint8)), f"{preset}: {name}"
    # gguf-py decodes what we wrote to the floats our own decoders give
    from gguf.quants import dequantize

    from qconvert import kernels

    for name, t in a.items():
        if t.tensor_type.name in kernels.KERNELS.names() or t.tensor_type.name.startswith("IQ"):
            raw = np.asarray(t.data).reshape(-1).view(np.uint8)
            want = dequantize(raw, t.tensor_type).reshape(-1)
            got = kernels.decode(t.tensor_type.name, raw).reshape(-1)
            assert np.array_equal(got, want), name
