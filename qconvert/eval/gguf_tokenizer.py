"""A GGUF's own tokenizer, run by llama.cpp, for cutting evaluation text when no Hugging
Face directory is at hand (`qconvert eval a.gguf b.gguf --reference F16.gguf`).

It answers the two calls the window code makes of a transformers tokenizer, `encode(text,
add_special_tokens=...)`, so calib/text.py's `tokenize` and `leading_bos` work unchanged:
with special tokens, llama.cpp adds BOS exactly when the file says so
(tokenizer.ggml.add_bos_token), which is what its perplexity tool does. The model is
opened with `vocab_only`: no weights are read."""

from __future__ import annotations

import os
from pathlib import Path

from .llama_model import open_llama


class GGUFTokenizer:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        # a vocab-only model reports a training context of 0, and llama.cpp warns about it on
        # stderr while making the (unused) context, verbose=False or not: the warning is noise
        self._llm = _quiet(lambda: open_llama(self.path, vocab_only=True))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        # special=False: text that looks like a control token ("<|im_end|>") is plain text
        # here, as in the HF path, which encodes user text without parsing special tokens
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=add_special_tokens, special=False))

    def close(self) -> None:
        self._llm.close()


def _quiet(fn):
    """fn() with file descriptor 2 sent to /dev/null: llama.cpp writes from C, below
    Python's sys.stderr. Errors still surface as the exception fn raises."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        return fn()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
