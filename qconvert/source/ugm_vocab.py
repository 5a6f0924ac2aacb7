"""Unigram vocabularies (XLM-RoBERTa and the multilingual encoders built on it) as
llama.cpp's "t5" (UGM) tokenizer reads them.

llama.cpp's UGM tokenizer runs the whole SentencePiece pipeline itself: the normaliser's
precompiled character map (NFKC-like folding, written as `tokenizer.ggml.precompiled_charsmap`),
collapsing whitespace runs (`remove_extra_whitespaces`), "▁" before the text
(`add_space_prefix`), then Viterbi over the piece scores. So the keys are what the pipeline
transformers runs says:
- an XLMRobertaTokenizer (transformers 5 rebuilds it from its class) splits on whitespace
  (runs collapse), puts "▁" before each word unless tokenizer_config.json says
  `add_prefix_space: false`, and keeps only the file's precompiled character map;
- a generic class runs tokenizer.json as written: a WhitespaceSplit step or a
  Replace(" {2,}", " ") collapses runs, Metaspace's prepend_scheme says whether "▁" leads.

Token types: the unknown piece UNKNOWN, added special tokens CONTROL, other added tokens
USER_DEFINED; one entry per embedding row, unowned rows "[PAD{id}]" (UNUSED).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import gguf

from ..errors import FormatError, InputError, UnsupportedError
from .bpe_vocab import check_unique

# llama.cpp reads the unknown piece's score like any other; -10000 is what its own
# converter gives rows no piece owns
_UNUSED_SCORE = -10000.0


@dataclass(frozen=True)
class UgmVocab:
    tokens: list[str]
    scores: list[float]
    types: list[int]
    charsmap: bytes
    add_space_prefix: bool
    remove_extra_whitespaces: bool


def is_unigram(tokenizer_json: dict | None) -> bool:
    return tokenizer_json is not None and (tokenizer_json.get("model") or {}).get("type") == "Unigram"


def _steps(node) -> list[dict]:
    if not isinstance(node, dict):
        return []
    if node.get("type") == "Sequence":
        children = node.get("normalizers") or node.get("pretokenizers") or []
        return [s for c in children for s in _steps(c)]
    return [node]


def _charsmap(normalizer, source: str) -> bytes:
    for step in _steps(normalizer):
        if step.get("type") == "Precompiled":
            text = step.get("precompiled_charsmap")
            if not text:
                return b""
            try:
                data = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError, TypeError):
                raise FormatError(f"{source}: the Precompiled normaliser's charsmap is not base64") from None
            if len(data) < 4:
                raise FormatError(f"{source}: the Precompiled normaliser's charsmap is {len(data)} bytes; "
                                  "too short to hold its header")
            return data
    return b""


def _spacing(tokenizer_json: dict, tokenizer_config: dict, rebuilt: bool) -> tuple[bool, bool]:
    """(add_space_prefix, remove_extra_whitespaces)."""
    if rebuilt:
        flag = tokenizer_config.get("add_prefix_space")
        return (flag if isinstance(flag, bool) else True), True
    pre = _steps(tokenizer_json.get("pre_tokenizer"))
    norm = _steps(tokenizer_json.get("normalizer"))
    prefix = any(s.get("type") == "Metaspace" and s.get("prepend_scheme", "always") != "never" for s in pre)
    collapse = any(s.get("type") == "WhitespaceSplit" for s in pre) or any(
        s.get("type") == "Replace" and (s.get("pattern") or {}).get("Regex") == " {2,}" for s in norm)
    return prefix, collapse


def read_ugm_vocab(tokenizer_json: dict, tokenizer_config: dict, vocab_size: int | None, *,
                   rebuilt: bool, source: str = "tokenizer.json") -> UgmVocab:
    model = tokenizer_json.get("model") or {}
    pieces = model.get("vocab")
    if not isinstance(pieces, list) or not pieces:
        raise FormatError(f"{source}: a Unigram model without a vocab list")
    if model.get("byte_fallback"):
        raise UnsupportedError(f"{source}: a Unigram model with byte fallback; llama.cpp's UGM tokenizer has none")
    unk = model.get("unk_id")
    if unk is not None and (not isinstance(unk, int) or isinstance(unk, bool) or not 0 <= unk < len(pieces)):
        raise FormatError(f"{source}: model.unk_id {unk!r} is not a piece's id")
    added = {e["id"]: e for e in tokenizer_json.get("added_tokens") or []}
    highest = max(len(pieces) - 1, *added) if added else len(pieces) - 1
    n_rows = vocab_size if vocab_size is not None else highest + 1
    if highest >= n_rows:
        raise InputError(f"{source}: token id {highest} does not fit config vocab_size {n_rows}; "
                         "the embedding has no row for it")
    tokens, scores, types = [], [], []
    for i in range(n_rows):
        if i < len(pieces):
            text, score = pieces[i]
            if not isinstance(score, (int, float)) or isinstance(score, bool):
                raise FormatError(f"{source}: model.vocab[{i}] has score {score!r}; expected a number")
        elif i in added:
            text, score = added[i]["content"], 0.0
        else:
            tokens.append(f"[PAD{i}]")
            scores.append(_UNUSED_SCORE)
            types.append(gguf.TokenType.UNUSED)
            continue
        entry = added.get(i)
        if i == unk:
            kind = gguf.TokenType.UNKNOWN
        elif entry is not None:
            kind = gguf.TokenType.CONTROL if entry.get("special") else gguf.TokenType.USER_DEFINED
            text = entry["content"]
        else:
            kind = gguf.TokenType.NORMAL
        tokens.append(text)
        scores.append(float(score))
        types.append(kind)
    check_unique(tokens, source)
    prefix, collapse = _spacing(tokenizer_json, tokenizer_config, rebuilt)
    return UgmVocab(tokens, scores, types, _charsmap(tokenizer_json.get("normalizer"), source), prefix, collapse)


def write_ugm(writer: gguf.GGUFWriter, vocab: UgmVocab) -> None:
    writer.add_tokenizer_model("t5")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    writer.add_add_space_prefix(vocab.add_space_prefix)
    writer.add_remove_extra_whitespaces(vocab.remove_extra_whitespaces)
    if vocab.charsmap:
        writer.add_precompiled_charsmap(vocab.charsmap)
