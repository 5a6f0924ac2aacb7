"""The one place that opens a GGUF in llama.cpp (llama-cpp-python): the evaluation backend
and every test that runs a model go through `open_llama`.

Why not `llama_cpp.Llama(...)` directly: llama.cpp's CPU backend repacks weights into
"extra buffer types" for faster matrix products (`use_extra_bufts`, on by default). On Intel
Xeons with AMX (Sapphire Rapids and later) the build vendored by llama-cpp-python 0.3.x
crashes (segfault) in batch decode of a Q8_0 model with repacking on, also with a Q8_0 file
that llama.cpp's own quantizer wrote; with repacking off it runs. Repacking changes speed,
not results, so every model is opened with it off and runs on any x86 machine.
`Llama.__init__` takes its model parameters from `llama_model_default_params()` and offers
no argument for this field, so the defaults are wrapped for the duration of the call.
"""

from __future__ import annotations

import threading
from pathlib import Path

from ..errors import UnsupportedError

_LOCK = threading.Lock()


def open_llama(path: Path | str, **kwargs):
    """`llama_cpp.Llama(model_path=path, **kwargs)` with weight repacking off (see above).
    verbose defaults to False."""
    try:
        import llama_cpp
        from llama_cpp import llama as llama_module
    except ImportError:
        raise UnsupportedError("running a GGUF needs llama-cpp-python (pip install llama-cpp-python)") from None
    kwargs.setdefault("verbose", False)
    bindings = llama_module.llama_cpp  # the module object Llama.__init__ reads the defaults from
    defaults = bindings.llama_model_default_params

    def no_repacking():
        params = defaults()
        params.use_extra_bufts = False
        return params

    with _LOCK:
        bindings.llama_model_default_params = no_repacking
        try:
            return llama_cpp.Llama(model_path=str(path), **kwargs)
        finally:
            bindings.llama_model_default_params = defaults
