"""Special token ids, add-BOS/EOS flags, merges and the chat template, via gguf's SpecialVocab.

SpecialVocab reads tokenizer.json (merges, added tokens, the post-processor template that
says whether BOS/EOS are added), tokenizer_config.json and config.json. What it misses is
filled in here, each only where SpecialVocab found nothing:
  - chat_template.jinja (transformers 5 writes the template there): it wins over a
    template left in tokenizer_config.json, as it does when transformers loads the
    directory, and it is read even when there is no tokenizer_config.json;
  - special tokens named in tokenizer_config.json but absent from tokenizer.json's
    added_tokens (SentencePiece-only directories): found by text in the written vocab;
  - generation_config.json ids (eos may be a list: the first is the EOS);
  - the ids a SentencePiece model was trained with.
"""

from __future__ import annotations

import logging

import json
from pathlib import Path

import gguf

from ..errors import FormatError


ID_TYPES = ("bos", "eos", "unk", "sep", "pad")


def read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise FormatError(f"{path}: not valid JSON ({exc})") from exc


def chat_template(model_dir: Path, from_special_vocab):
    """The template transformers would load: chat_template.jinja first, then the config's."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        if isinstance(from_special_vocab, list):
            return from_special_vocab  # SpecialVocab already paired it with additional templates
        return jinja.read_text(encoding="utf-8")
    if from_special_vocab is None:
        return read_json(model_dir / "chat_template.json").get("chat_template")
    return from_special_vocab


def _token_text(entry) -> str | None:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and isinstance(entry.get("content"), str):
        return entry["content"]
    return None


def special_vocab(model_dir: Path, tokens: list, *, merges: bool, tokenizer_config: dict,
                  default_ids: dict[str, int] | None = None) -> gguf.SpecialVocab:
    """A SpecialVocab for `tokens` (the written list), its gaps filled as described above."""
    # gguf-py warns about template pieces it does not need (e.g. a pair template's second
    # BOS); those are not the user's problem, so only errors get through
    vocab_log = logging.getLogger("gguf.vocab")
    level = vocab_log.level
    vocab_log.setLevel(logging.ERROR)
    try:
        sv = gguf.SpecialVocab(model_dir, load_merges=merges, n_vocab=len(tokens))
    finally:
        vocab_log.setLevel(level)
    sv.chat_template = chat_template(model_dir, sv.chat_template)

    texts = {(t.decode("utf-8", "replace") if isinstance(t, bytes) else t): i
             for i, t in enumerate(tokens)}
    generation = read_json(model_dir / "generation_config.json")
    for typ in ID_TYPES:
        if typ in sv.special_token_ids:
            continue
        text = _token_text(tokenizer_config.get(f"{typ}_token"))
        candidates = [texts.get(text) if text is not None else None,
                      generation.get(f"{typ}_token_id"),
                      (default_ids or {}).get(typ)]
        for value in candidates:
            if isinstance(value, list) and value:
                value = value[0]
            if isinstance(value, int) and 0 <= value < len(tokens):
                sv.special_token_ids[typ] = value
                break
    return sv
