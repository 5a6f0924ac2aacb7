"""Whole files against llama.cpp: for every preset, qconvert's one-pass GGUF (from the HF
checkpoint) holds the same tensor types and the same bytes as llama.cpp's own quantizer
(llama_model_quantize through llama-cpp-python) run on a qconvert F32 GGUF of the model."""

from __future__ import annotations

import ctypes
from pathlib import Path

import gguf
import numpy as np
import pytest

import qconvert

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny-llama"
PRESETS = ["Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K",
           "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]


def llama_quantize(src: Path, dst: Path, preset: str) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{preset}")
    params.nthread = 2
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) == 0


@pytest.fixture(scope="module", params=["example", "qwen3", "gemma3"])
def model(request, tiny, tmp_path_factory):
    d = EXAMPLE if request.param == "example" else tiny(request.param)
    work = tmp_path_factory.mktemp(f"bytes-{request.param}")
    f32 = qconvert.quantize(d, work / "f32.gguf", type="F32").output
    return d, f32, work


@pytest.mark.parametrize("preset", PRESETS)
def test_same_types_and_bytes_as_llama_cpp(model, preset):
    d, f32, work = model
    theirs = work / f"llama-{preset}.gguf"
    llama_quantize(f32, theirs, preset)
    ours = qconvert.quantize(d, work / f"ours-{preset}.gguf", type=preset).output
    rt = {t.name: t for t in gguf.GGUFReader(theirs).tensors}
    ro = {t.name: t for t in gguf.GGUFReader(ours).tensors}
    assert set(rt) == set(ro)
    differ = []
    for name, t in rt.items():
        o = ro[name]
        assert o.tensor_type == t.tensor_type, (name, o.tensor_type.name, t.tensor_type.name)
        if not np.array_equal(np.asarray(o.data).view(np.uint8), np.asarray(t.data).view(np.uint8)):
            differ.append(name)
    assert not differ, f"{len(differ)}/{len(rt)} tensors differ from llama.cpp: {differ[:5]}"
