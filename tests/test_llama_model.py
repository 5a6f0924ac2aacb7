"""open_llama: every GGUF the tests and the evaluation backend run is opened with llama.cpp's
weight repacking off (it crashes batch decode of Q8_0 models on AMX Xeons; see
qconvert/eval/llama_model.py)."""

from pathlib import Path

import numpy as np

import qconvert
from qconvert.eval.llama_model import open_llama

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny-llama"


def test_repacking_off_batch_decode_runs_and_defaults_restored(tmp_path):
    import llama_cpp

    out = qconvert.quantize(EXAMPLE, tmp_path / "m.gguf", type="Q8_0").output
    llm = open_llama(out, n_ctx=64, n_batch=64, n_ubatch=64, logits_all=True, n_threads=2)
    assert llm.model_params.use_extra_bufts is False
    # the wrapper is undone: other callers of the bindings get llama.cpp's own defaults
    assert llama_cpp.llama_model_default_params().use_extra_bufts is True
    llm.eval(list(range(1, 33)))  # one batch of 32 tokens: the decode that crashed on AMX
    logits = np.asarray(llm.scores[:32])
    assert np.isfinite(logits).all() and logits.std() > 0.1
    llm.close()
