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
import re
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
    from .logits import backend_for

    path = Path(model)
    try:
        kind = backend_for(path)
    except InputError:
        raise InputError(f"{path}: evaluation text is tokenized by a Hugging Face model directory or a GGUF "
                         "file; this is neither") from None
    if kind == "gguf":
        from .gguf_tokenizer import GGUFTokenizer

        return GGUFTokenizer(path)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def evaluation_windows(model: Path | str, *, n_ctx: int = 512, first: Optional[int] = None,
                       max_windows: Optional[int] = None, text: Optional[str] = None) -> Windows:
    """Windows of `text` (default: the corpus's evaluation split) tokenized by the
    tokenizer of `model`: an HF model directory, or a GGUF file (llama.cpp's tokenizer)."""
    from ..calib import corpus
    from ..calib.text import leading_bos

    tok = load_tokenizer(model)
    source = "text" if text is not None else "corpus:evaluation"
    text = corpus.split_text("evaluation") if text is None else text
    need = None if max_windows is None else max_windows * n_ctx
    try:
        ids = tokenize_prefix(tok, text, need)
        bos = leading_bos(tok)
    finally:
        if hasattr(tok, "close"):
            tok.close()
    return cut(ids, n_ctx, bos=bos, first=first, max_windows=max_windows,
               source=f"{source} / {Path(model).name} tokenizer")


# Tokenizing only the start of a text. A --text of 38.7 MB with --max-windows 1 was tokenized
# whole (27 s, 1 GB peak) for 512 tokens. The text is cut at a line boundary, a newline whose
# next character is not whitespace (so a run of newlines, which BPE pre-tokenizers keep as one
# piece, is never split), and only the part before the cut is tokenized. Its ids equal the
# whole text's as long as no token spans the cut; that is checked on the text around the cut
# (LOOKAROUND characters either side, from and to other line boundaries): the ids of the part
# before it must be a prefix of the ids with the part after it appended. Where they are not
# (a tokenizer whose merges cross newlines), the next boundaries are tried, then the whole
# text is tokenized as before.
_LINE_CUT = re.compile(r"\n(?=\S)")
LOOKAROUND = 512  # characters of context either side of a cut for the check
CUT_TRIES = 8  # boundaries tried before the whole text is tokenized
CHARS_PER_TOKEN = 6  # first guess of the characters `need` tokens take (English: about 4)


def next_cut(text: str, pos: int) -> int:
    """The first line boundary at or after `pos` (len(text) if none)."""
    m = _LINE_CUT.search(text, max(pos - 1, 0))
    return m.end() if m else len(text)


def previous_cut(text: str, pos: int) -> int:
    """The last line boundary at or before `pos` (0 if none)."""
    i = text.rfind("\n", 0, pos)
    while i >= 0 and (i + 1 >= len(text) or text[i + 1].isspace()):
        i = text.rfind("\n", 0, i)
    return i + 1 if i >= 0 else 0


def cut_is_clean(tok, text: str, cut: int) -> bool:
    """No token of `text` spans position `cut`, judged on the text around it (see above)."""
    from ..calib.text import tokenize

    start = previous_cut(text, cut - LOOKAROUND)
    end = next_cut(text, cut + LOOKAROUND)
    before = tokenize(tok, text[start:cut])
    return tokenize(tok, text[start:end])[: len(before)] == before


def tokenize_prefix(tok, text: str, need: Optional[int]) -> list[int]:
    """The ids of `text` (calib/text.py's `tokenize`), or at least their first `need`:
    then only as much of the start of the text is tokenized as that takes, cut at a line
    boundary no token spans. Fewer than `need` only when the whole text holds fewer."""
    from ..calib.text import tokenize

    chars = need * CHARS_PER_TOKEN if need is not None else len(text)
    while chars < len(text):
        cut = next_cut(text, chars)
        for _ in range(CUT_TRIES):
            if cut >= len(text) or cut_is_clean(tok, text, cut):
                break
            cut = next_cut(text, cut + 1)
        else:
            break  # no clean boundary near here: tokenize the whole text
        if cut >= len(text):
            break
        ids = tokenize(tok, text[:cut])
        if len(ids) >= need:
            return ids
        # too short: guess again from the characters per token seen, with room to spare
        chars = max(2 * cut, int(cut * need / max(len(ids), 1) * 1.25))
    return tokenize(tok, text)
