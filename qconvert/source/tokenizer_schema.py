"""The shape of tokenizer.json that the vocabulary readers rely on, checked once on load.

The readers (bpe_vocab, spm_json_vocab, pretokenizer) walk the file with `.get` and
indexing, as the tokenizers library writes it. A hand-edited or damaged file whose parts
have other types (a vocab id that is a string, a pre_tokenizer that is a number, a merge
without a space) would fail deep inside them with a TypeError or AttributeError; here it
is one FormatError naming the file and the place, before anything is written."""

from __future__ import annotations

from typing import Any

from ..errors import FormatError

MAX_ID = 2**31 - 1
# pipeline parts: a JSON object (or null) with a string "type", whose nested steps sit
# under one of these list keys
_PARTS = ("pre_tokenizer", "normalizer", "decoder", "post_processor")
_STEPS = ("pretokenizers", "normalizers", "decoders", "processors")


def _token_id(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_ID


def check_tokenizer_json(data: Any, source: str) -> dict:
    """`data` itself when it has the shape the readers expect; else a FormatError."""
    def bad(where: str, expected: str) -> FormatError:
        return FormatError(f"{source}: {where} should be {expected}")

    if not isinstance(data, dict):
        raise bad("the file", "a JSON object")
    model = data.get("model")
    if model is not None:
        _check_model(model, bad)
    added = data.get("added_tokens")
    if added is not None:
        if not isinstance(added, list):
            raise bad("added_tokens", "a list")
        for i, entry in enumerate(added):
            if not (isinstance(entry, dict) and isinstance(entry.get("content"), str) and _token_id(entry.get("id"))
                    and isinstance(entry.get("special", False), bool)):
                raise bad(f"added_tokens[{i}]", "an object with a string content and a token id from 0")
    for part in _PARTS:
        _check_part(data.get(part), part, bad)
    return data


def _check_model(model: Any, bad) -> None:
    if not isinstance(model, dict):
        raise bad("model", "a JSON object")
    for key in ("type", "unk_token"):
        if model.get(key) is not None and not isinstance(model[key], str):
            raise bad(f"model.{key}", "a string")
    for key in ("byte_fallback", "ignore_merges"):
        if model.get(key) is not None and not isinstance(model[key], bool):
            raise bad(f"model.{key}", "true or false")
    vocab = model.get("vocab")
    if isinstance(vocab, dict):
        if not all(_token_id(i) for i in vocab.values()):
            raise bad("model.vocab", "an object of token texts to ids from 0")
    elif isinstance(vocab, list):  # Unigram: [text, score] pairs
        if not all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) for p in vocab):
            raise bad("model.vocab", "a list of [text, score] pairs")
    elif vocab is not None:
        raise bad("model.vocab", "an object or a list")
    merges = model.get("merges")
    if merges is not None:
        ok = isinstance(merges, list) and all(
            (isinstance(m, str) and " " in m) or
            (isinstance(m, list) and len(m) == 2 and all(isinstance(x, str) for x in m)) for m in merges)
        if not ok:
            raise bad("model.merges", "a list of \"left right\" strings or [left, right] pairs")


def _check_part(node: Any, where: str, bad) -> None:
    """A pipeline part and its nested steps, iteratively (no recursion on hostile depth)."""
    stack = [(node, where)]
    while stack:
        node, where = stack.pop()
        if node is None:
            continue
        if not isinstance(node, dict):
            raise bad(where, "a JSON object or null")
        if node.get("type") is not None and not isinstance(node["type"], str):
            raise bad(f"{where}.type", "a string")
        pattern = node.get("pattern")
        if pattern is not None and not (isinstance(pattern, dict) and
                                        all(isinstance(v, str) for v in pattern.values())):
            raise bad(f"{where}.pattern", "an object of strings (Regex or String)")
        for key in ("behavior", "prepend_scheme"):
            if node.get(key) is not None and not isinstance(node[key], str):
                raise bad(f"{where}.{key}", "a string")
        for key in _STEPS:
            steps = node.get(key)
            if steps is None:
                continue
            if not isinstance(steps, list):
                raise bad(f"{where}.{key}", "a list")
            stack.extend((s, f"{where}.{key}[{i}]") for i, s in enumerate(steps))
