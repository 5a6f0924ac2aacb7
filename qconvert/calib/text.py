"""Calibration samples: fixed-length windows of token ids cut from one text.

The default text is the "calibration" split of the bundled corpus (CPython's pydoc
topics, see corpus.py), which shares no topic with the example model's training or
evaluation text. A user file replaces it for models that should be calibrated on their
own domain or language.

Windows (deterministic for a given seed):
- enough text for n disjoint windows: the seed picks n of the floor(N / seqlen)
  non-overlapping slots, kept in text order;
- less: the seed draws n start offsets in [0, N - seqlen], so windows overlap. This is
  the GPTQ paper's sampling; with a short corpus it still shows the model n different
  contexts for every token position.
When the tokenizer itself starts an encoded text with BOS and `add_bos` is set, the first
id of every window is replaced by BOS, as llama.cpp's imatrix tool does with each chunk:
models trained with BOS put an attention sink on the first position, and calibrating
without it would measure activations the model never produces in use. (Qwen2's
tokenizer adds no BOS, so none is forced on it.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import InputError
from ..source.input_file import checked_input_file
from . import corpus

MAX_TEXT_BYTES = 256 * 2**20  # read whole into memory: a bound, far above what calibration uses
PIECE_CHARS = 1 << 20  # characters per tokenizer call (see tokenize)


def read_text(text_file: Optional[Path | str], what: str = "calibration text") -> str:
    """The calibration text: the bundled split, or a user's UTF-8 file (`what` names it
    in errors: the evaluation text is read the same way)."""
    if text_file is None:
        return corpus.split_text("calibration")
    path = checked_input_file(text_file, what)
    size = path.stat().st_size
    if size > MAX_TEXT_BYTES:
        raise InputError(f"{path}: {what} is {size:,} bytes; give at most {MAX_TEXT_BYTES:,} "
                         "(a few MB is plenty: 128 windows of 512 tokens are about 250 kB of text)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: {what} is not UTF-8 (byte {e.start}); re-encode it") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read {what} ({e.strerror})") from None
    if not text.strip():
        raise InputError(f"{path}: {what} file is empty")
    return text


def _is_bare(tokenizer) -> bool:
    """A `tokenizers.Tokenizer` rather than a transformers tokenizer."""
    return hasattr(tokenizer, "encode_batch") and not hasattr(tokenizer, "backend_tokenizer")


def tokenize(tokenizer, text: str) -> list[int]:
    """Token ids of `text` without special tokens, from a transformers tokenizer or a
    `tokenizers.Tokenizer`. A fast tokenizer's backend is used directly: the front end
    warns about texts longer than the model's context, which is the point here.

    A long text is encoded in pieces cut after a newline (see `pieces`): one encode call of
    a 21 MB line took 3.9 GB and 22 s, and Ctrl-C waits until the call returns."""
    backend = tokenizer if _is_bare(tokenizer) else getattr(tokenizer, "backend_tokenizer", None)
    ids: list[int] = []
    for piece in pieces(text):
        if backend is not None:
            ids += backend.encode(piece, add_special_tokens=False).ids
        else:
            ids += list(tokenizer.encode(piece, add_special_tokens=False))
    return ids


def pieces(text: str, size: int = PIECE_CHARS) -> list[str]:
    """`text` cut into pieces of at most about `size` characters, each ending after a
    newline where there is one (else after a space, else anywhere), so a text shorter than
    `size` (the bundled one: 37 kB) is encoded whole, exactly as before."""
    out, start = [], 0
    while len(text) - start > size:
        end = start + size
        cut = text.rfind("\n", start, end) + 1 or text.rfind(" ", start, end) + 1 or end
        out.append(text[start:cut])
        start = cut
    out.append(text[start:])
    return out


def leading_bos(tokenizer) -> Optional[int]:
    """The id the tokenizer puts in front of every text it encodes with special tokens
    (its BOS), or None when it adds nothing in front."""
    if _is_bare(tokenizer):
        plain, full = tokenizer.encode("a", add_special_tokens=False).ids, tokenizer.encode("a").ids
    else:
        plain, full = list(tokenizer.encode("a", add_special_tokens=False)), list(tokenizer.encode("a"))
    if len(full) > len(plain) and full[:1] != plain[:1]:
        return int(full[0])
    return None


def window_starts(n_tokens: int, n_samples: int, seqlen: int, seed: int) -> np.ndarray:
    """Start offsets of the windows (see the module docstring)."""
    rng = np.random.default_rng(seed)
    slots = n_tokens // seqlen
    if slots >= n_samples:
        return np.sort(rng.choice(slots, size=n_samples, replace=False)) * seqlen
    return rng.integers(0, n_tokens - seqlen + 1, size=n_samples)


def calibration_samples(tokenizer, *, text_file: Optional[Path | str] = None, n_samples: int = 128,
                        seqlen: int = 512, seed: int = 0, add_bos: bool = True) -> torch.LongTensor:
    """(n_samples, seqlen) int64 token ids of calibration windows."""
    if n_samples < 1 or seqlen < 2:
        raise InputError(f"calibration needs n_samples >= 1 and seqlen >= 2 (got {n_samples}, {seqlen})")
    where = text_file if text_file is not None else "the bundled calibration text"
    ids = tokenize(tokenizer, read_text(text_file))
    if len(ids) < seqlen:
        raise InputError(
            f"{where}: {len(ids)} tokens found, fewer than one calibration sample of {seqlen}; "
            "give a longer text or a shorter sequence length"
        )
    tokens = np.asarray(ids, dtype=np.int64)
    starts = window_starts(len(tokens), n_samples, seqlen, seed)
    out = np.stack([tokens[s:s + seqlen] for s in starts])
    bos = leading_bos(tokenizer) if add_bos else None
    if bos is not None:
        out[:, 0] = bos
    return torch.from_numpy(out)
