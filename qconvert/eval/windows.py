"""The evaluation windows: one token stream cut into fixed windows, the same for every model.

The text (by default the corpus's "evaluation" split, which neither the example model nor
calibration ever saw) is tokenized once, with the model's Hugging Face tokenizer, and cut
the way llama.cpp's perplexity tool cuts it:

    stream   t0 t1 t2 ... t(n-1) | t(n) ... t(2n-1) | ...     consecutive, non-overlapping,
    window   B  t1 t2 ... t(n-1) | B  t(n+1) ...    |         a trailing partial chunk dropped
                        ^first                               B = BOS replaces the first id when
    scored   logits at positions first .. n-2 predict         the tokenizer adds BOS itself
             tokens first+1 .. n-1

Only the second half of each window is scored (first = n_ctx // 2): every scored token then
has at least n_ctx/2 tokens of context, so the numbers measure the model rather than
how little it knows at the start of a window. Every model compared must be scored on the
same Windows value (its digest is stored with a reference and checked).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import InputError


@dataclass(frozen=True)
class Windows:
    tokens: np.ndarray  # (n_windows, n_ctx) int32
    first: int  # first scored position (its logits predict tokens[:, first + 1])
    source: str = ""  # where the text and tokenizer came from, for reports

    @property
    def n_windows(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def n_ctx(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def n_scored(self) -> int:
        """Scored positions per window."""
        return self.n_ctx - 1 - self.first

    def targets(self) -> np.ndarray:
        """(n_windows, n_scored) the token each scored position should predict."""
        return self.tokens[:, self.first + 1:]

    def digest(self) -> str:
        h = hashlib.sha256(np.ascontiguousarray(self.tokens, dtype="<i4").tobytes())
        h.update(f"|{self.n_ctx}|{self.first}".encode())
        return h.hexdigest()[:16]


def cut(ids, n_ctx: int, *, bos: Optional[int] = None, first: Optional[int] = None,
        max_windows: Optional[int] = None, source: str = "") -> Windows:
    """Cut a token stream into windows (see the module docstring)."""
    if n_ctx < 4:
        raise InputError(f"evaluation windows need n_ctx >= 4 (got {n_ctx})")
    first = n_ctx // 2 if first is None else first
    if not 0 <= first <= n_ctx - 2:
        raise InputError(f"first scored position {first} must lie in 0..{n_ctx - 2} for n_ctx {n_ctx}")
    ids = np.asarray(ids, dtype=np.int32)
    n = len(ids) // n_ctx
    if max_windows is not None:
        n = min(n, max_windows)
    if n < 1:
        raise InputError(f"{source or 'text'}: {len(ids)} tokens, fewer than one window of {n_ctx}")
    tokens = ids[: n * n_ctx].reshape(n, n_ctx).copy()
    if bos is not None:
        tokens[:, 0] = bos
    return Windows(tokens, first, source)


def load_tokenizer(model: Path | str):
    """The tokenizer of a Hugging Face model directory (transformers), or of a GGUF file
    (llama.cpp's, from the file's own vocabulary)."""
    path = Path(model)
    if path.is_file() and path.suffix.lower() == ".gguf":
        from .gguf_tokenizer import GGUFTokenizer

        return GGUFTokenizer(path)
    if not path.is_dir():
        raise InputError(f"{path}: evaluation text is tokenized by a Hugging Face model directory or a .gguf "
                         "file; this is neither")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def evaluation_windows(model: Path | str, *, n_ctx: int = 512, first: Optional[int] = None,
                       max_windows: Optional[int] = None, text: Optional[str] = None) -> Windows:
    """Windows of `text` (default: the corpus's evaluation split) tokenized by the
    tokenizer of `model`: an HF model directory, or a GGUF file (llama.cpp's tokenizer)."""
    from ..calib import corpus
    from ..calib.text import leading_bos, tokenize

    tok = load_tokenizer(model)
    source = "text" if text is not None else "corpus:evaluation"
    text = corpus.split_text("evaluation") if text is None else text
    try:
        ids = tokenize(tok, text)
        bos = leading_bos(tok)
    finally:
        if hasattr(tok, "close"):
            tok.close()
    return cut(ids, n_ctx, bos=bos, first=first, max_windows=max_windows,
               source=f"{source} / {Path(model).name} tokenizer")
