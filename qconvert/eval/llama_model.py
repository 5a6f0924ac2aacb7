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


def loadable_path(path: Path | str) -> Path:
    """The file llama.cpp opens for `path`: a split set's first member whichever member is
    named (llama.cpp finds the others from the first's name and refuses a later one), once
    the headers read cleanly and the set is whole, so a damaged file or a missing member is
    a one-line error naming it, not llama.cpp's bare "Failed to load model"."""
    from ..source.gguf_input import GGUFInput

    return GGUFInput(path).files[0]


def open_llama(path: Path | str, **kwargs):
    """`llama_cpp.Llama(model_path=path, **kwargs)` with weight repacking off (see above).
    verbose defaults to False. `path` may name any member of a split set."""
    try:
        import llama_cpp
        from llama_cpp import llama as llama_module
    except ImportError:
        raise UnsupportedError("running a GGUF needs llama-cpp-python (pip install llama-cpp-python)") from None
    first = loadable_path(path)
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
            return llama_cpp.Llama(model_path=str(first), **kwargs)
        except ValueError as e:  # its only word on a file it refuses (the reason goes to its log)
            if "Failed to load model" not in str(e):
                raise
            raise UnsupportedError(f"{path}: llama.cpp cannot load this GGUF (an architecture, tensor layout or "
                                   "key this llama-cpp-python build does not accept); check it with qconvert "
                                   "inspect") from None
        finally:
            bindings.llama_model_default_params = defaults
