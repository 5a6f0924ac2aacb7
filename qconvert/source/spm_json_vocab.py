"""SentencePiece-style BPE read from tokenizer.json alone (no tokenizer.model).

transformers 5 saves Llama/Mistral-style tokenizers as tokenizer.json only: a BPE model
over "▁"-spaced pieces with byte fallback (tokens "<0x0A>"), spaces turned into "▁" by a
Metaspace pre-tokenizer or a Replace normalizer. llama.cpp runs such a vocabulary with its
SentencePiece tokenizer ("llama"), which merges the adjacent pair whose joined text is the
best-scoring token. HF merges the pair of lowest merge rank instead, so each token gets
score -rank of the first merge that makes it: the best score is then the lowest rank, and
both tokenizers merge in the same order. (llama.cpp's converter reads this case through
transformers and writes -1000 for every score, which makes its merge order positional.)
"""

from __future__ import annotations

import re

import gguf

from ..errors import InputError
from .bpe_vocab import check_unique, looks_special
from .spm_vocab import SpmVocab

_SPACE = "\u2581"
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")
_UNREACHABLE = -1e9  # tokens no merge makes: HF never produces them by merging
_PAD_SCORE = -10000.0


def _steps(node: dict | None) -> list[dict]:
    if not node:
        return []
    children = node.get("pretokenizers") or node.get("normalizers")
    return [s for child in children for s in _steps(child)] if children else [node]


def _prefixes_space(tokenizer_json: dict) -> bool | None:
    """Whether a "▁" is put before the text; None when the file does not spell spaces as "▁"."""
    for step in _steps(tokenizer_json.get("pre_tokenizer")):
        if step.get("type") == "Metaspace" and step.get("replacement", _SPACE) == _SPACE:
            scheme = step.get("prepend_scheme")
            if scheme is None:  # tokenizers < 0.14 spelled it as a bool
                return bool(step.get("add_prefix_space", True))
            return scheme != "never"
    normalizers = _steps(tokenizer_json.get("normalizer"))
    if any(n.get("type") == "Replace" and n.get("content") == _SPACE for n in normalizers):
        return any(n.get("type") == "Prepend" and n.get("prepend") == _SPACE for n in normalizers)
    return None


def is_spm_style(tokenizer_json: dict) -> bool:
    model = tokenizer_json.get("model") or {}
    return (model.get("type", "BPE") == "BPE" and bool(model.get("byte_fallback"))
            and _prefixes_space(tokenizer_json) is not None)


def read_spm_json_vocab(tokenizer_json: dict, vocab_size: int | None,
                        source: str = "tokenizer.json") -> SpmVocab:
    model = tokenizer_json["model"]
    by_id = {i: text for text, i in model["vocab"].items()}
    added = {entry["id"]: entry for entry in tokenizer_json.get("added_tokens") or []}
    highest = max([*by_id, *added], default=-1)
    n_rows = vocab_size if vocab_size is not None else highest + 1
    if highest >= n_rows:
        raise InputError(f"{source}: token id {highest} does not fit config vocab_size {n_rows}")

    rank_of: dict[str, int] = {}
    for rank, merge in enumerate(model.get("merges") or []):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        rank_of.setdefault(left + right, rank)

    tokens = [f"[PAD{i}]".encode() for i in range(n_rows)]
    scores = [_PAD_SCORE] * n_rows
    types = [int(gguf.TokenType.UNUSED)] * n_rows
    for i, text in by_id.items():
        tokens[i] = text.encode("utf-8")
        scores[i] = float(-rank_of[text]) if text in rank_of else (
            0.0 if len(text) == 1 else _UNREACHABLE)
        if text == model.get("unk_token"):
            types[i] = int(gguf.TokenType.UNKNOWN)
        elif _BYTE_TOKEN.fullmatch(text):
            types[i] = int(gguf.TokenType.BYTE)
        else:
            types[i] = int(gguf.TokenType.NORMAL)
    for i, entry in added.items():
        text = entry["content"]
        if i in by_id and by_id[i] == text and types[i] == gguf.TokenType.UNKNOWN:
            continue
        if entry.get("special") or looks_special(text):
            types[i] = int(gguf.TokenType.CONTROL)
        else:
            text = text.replace(_SPACE, " ")
            types[i] = int(gguf.TokenType.USER_DEFINED)
        tokens[i] = text.encode("utf-8")
        scores[i] = 0.0 if i in by_id else -1000.0
    check_unique(tokens, source)
    return SpmVocab(tokens, scores, types, bool(_prefixes_space(tokenizer_json)), {})
