"""Byte-level BPE vocabularies (GPT-2, Llama 3, Qwen2, SmolLM) read from tokenizer.json.

The token list is laid out the way llama.cpp's converter lays it out, because llama.cpp
reads ids by position: one entry per embedding row (config vocab_size), the model's
vocab in byte-level spelling ("Ġthe"), added tokens in their raw text ("<|im_end|>"),
and "[PAD{id}]" for rows no token owns.
"""

from __future__ import annotations

from dataclasses import dataclass

import gguf

from ..errors import FormatError, InputError, UnsupportedError

_SPM_SPACE = "\u2581"  # "▁", SentencePiece's visible space


@dataclass(frozen=True)
class BpeVocab:
    tokens: list[str]
    types: list[int]


def looks_special(text: str) -> bool:
    """Added tokens that some models forget to flag special yet are control tokens.

    The same patterns llama.cpp's converter uses, so both tools type them alike:
    '<|...|>', DeepSeek's full-width '<｜...｜>', Gemma's '<unusedN>', and a few names."""
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<\uff5c") and text.endswith("\uff5c>"))
            or (text.startswith("<unused") and text.endswith(">")))


def is_byte_level(tokenizer_json: dict) -> bool:
    """A BPE model whose text is mapped to bytes-as-characters (the GPT-2 scheme)."""
    def has_byte_level(node) -> bool:
        if not isinstance(node, dict):
            return False
        if node.get("type") == "ByteLevel":
            return True
        children = node.get("pretokenizers") or node.get("decoders") or []
        return any(has_byte_level(child) for child in children)

    return (tokenizer_json.get("model", {}).get("type", "BPE") == "BPE"
            and (has_byte_level(tokenizer_json.get("pre_tokenizer"))
                 or has_byte_level(tokenizer_json.get("decoder"))))


def read_bpe_vocab(tokenizer_json: dict, vocab_size: int | None,
                   source: str = "tokenizer.json") -> BpeVocab:
    model = tokenizer_json.get("model") or {}
    if model.get("type", "BPE") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise UnsupportedError(f"{source}: model type {model.get('type')!r} is not a BPE "
                               f"vocabulary; qconvert converts byte-level BPE and SentencePiece")
    # text -> id, added tokens last so they win, as transformers' get_vocab() builds it.
    # A text listed under two ids therefore keeps one; the other row becomes padding,
    # which also keeps llama.cpp's one-id-per-text invariant (it aborts otherwise).
    by_text: dict[str, int] = dict(model["vocab"])
    added: dict[int, dict] = {}
    for entry in tokenizer_json.get("added_tokens") or []:
        by_text[entry["content"]] = entry["id"]
        added[entry["id"]] = entry
    by_id = {i: text for text, i in by_text.items()}
    highest = max(by_id, default=-1)
    n_rows = vocab_size if vocab_size is not None else highest + 1
    if highest >= n_rows:
        raise InputError(f"{source}: token id {highest} ({by_id[highest]!r}) does not fit "
                         f"config vocab_size {n_rows}; the embedding has no row for it")

    tokens: list[str] = []
    types: list[int] = []
    for i in range(n_rows):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            if added[i].get("special") or looks_special(text):
                types.append(gguf.TokenType.CONTROL)
            else:
                # llama.cpp matches user-defined tokens against raw text, so a
                # SentencePiece-style visible space must be a real one.
                text = text.replace(_SPM_SPACE, " ")
                types.append(gguf.TokenType.USER_DEFINED)
            tokens.append(text)
        else:
            tokens.append(text)
            types.append(gguf.TokenType.NORMAL)
    check_unique(tokens, source)
    return BpeVocab(tokens, types)


def check_unique(tokens: list, source: str) -> None:
    """llama.cpp maps text to id with one entry per text and aborts when two ids share one."""
    if len(set(tokens)) != len(tokens):
        seen: set = set()
        twice = next(t for t in tokens if t in seen or seen.add(t))
        raise FormatError(f"{source}: token text {twice!r} appears under two ids; "
                          f"llama.cpp needs each token text once")
