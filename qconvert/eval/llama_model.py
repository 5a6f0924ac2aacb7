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

import ctypes
import re
import threading
from collections import deque
from pathlib import Path

from ..errors import InputError, UnsupportedError
from ..terminal_text import printable

_LOCK = threading.Lock()

# llama.cpp's log. llama-cpp-python prints it on stderr through a callback whose level table
# predates ggml's current numbering (DEBUG=1 INFO=2 WARN=3 ERROR=4 CONT=5), so with
# verbose=False every WARN line still reached the terminal raw ("n_ctx_seq (4096) >
# n_ctx_train (512) -- possible training context overflow") and the ERROR lines that say
# why a file was refused did not. Here the log is kept, never printed: its last warnings
# and errors go into qconvert's own one-line messages, and what a user should know
# (a --ctx past the training length) is said by qconvert itself.
WARN, ERROR, CONT = 3, 4, 5
_LOG: deque = deque(maxlen=64)  # [seq, level, text] of recent warnings and errors
_SEQ = [0]
_CALLBACK = None  # the ctypes callback must outlive every call into llama.cpp


def _keep_log(level: int, text: bytes, user_data) -> None:
    try:
        line = text.decode("utf-8", "replace")
        if level == CONT and _LOG:
            _LOG[-1][2] += line
        elif level in (WARN, ERROR):
            _SEQ[0] += 1
            _LOG.append([_SEQ[0], level, line])
    except BaseException:  # nothing may unwind into C
        pass


def _install_log(llama_cpp) -> None:
    global _CALLBACK
    if _CALLBACK is None:
        _CALLBACK = llama_cpp.llama_log_callback(_keep_log)
        llama_cpp.llama_log_set(_CALLBACK, ctypes.c_void_p(0))


def log_mark() -> int:
    """A position in llama.cpp's log: `log_reason` reports only what came after it."""
    return _SEQ[0]


def log_reason(mark: int = 0) -> str:
    """llama.cpp's first error (else last warning) since `mark`, as one printable line
    without the C function's name, or ''. The first error is the cause ("error loading
    model: unknown model architecture: 'x'"); the ones after it say that loading failed."""
    lines = [(level, text) for seq, level, text in list(_LOG) if seq > mark]
    errors = [text for level, text in lines if level == ERROR and text.strip()]
    warnings = [text for level, text in lines if level == WARN and text.strip()]
    if not errors and not warnings:
        return ""
    line = " ".join((errors[0] if errors else warnings[-1]).split())
    return printable(re.sub(r"^[A-Za-z_]\w*: ", "", line))[:300]


def with_reason(message: str, mark: int = 0) -> str:
    """`message`, with llama.cpp's own last word since `mark` when it logged one."""
    reason = log_reason(mark)
    return f"{message} (llama.cpp: {reason})" if reason else message


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
    _install_log(llama_cpp)
    mark = log_mark()
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
            if "Failed to create llama_context" in str(e):  # most often: no memory for n_ctx tokens
                raise InputError(with_reason(f"{path}: llama.cpp could not make a context of {kwargs.get('n_ctx')} "
                                             "tokens; give a smaller --ctx", mark)) from None
            if "Failed to load model" not in str(e):
                raise
            raise UnsupportedError(with_reason(
                f"{path}: llama.cpp cannot load this GGUF (an architecture, tensor layout or key this "
                "llama-cpp-python build does not accept); check it with qconvert inspect", mark)) from None
        finally:
            bindings.llama_model_default_params = defaults
