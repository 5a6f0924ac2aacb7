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
from pathlib import Path

import gguf

from ..errors import FormatError
from .json_text import parse_json


ID_TYPES = ("bos", "eos", "unk", "sep", "pad")


def read_json(path: Path) -> dict:
    """A JSON object file, {} when absent; anything else is one FormatError naming it."""
    if not path.is_file():
        return {}
    try:
        text = path.read_bytes()
    except OSError as e:
        raise FormatError(f"{path}: cannot read ({e.strerror})") from None
    data = parse_json(text, str(path))
    if not isinstance(data, dict):
        raise FormatError(f"{path}: should hold a JSON object")
    return data


def chat_template(model_dir: Path, from_special_vocab):
    """The template transformers would load: chat_template.jinja first, then the config's."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        if isinstance(from_special_vocab, list):
            return from_special_vocab  # SpecialVocab already paired it with additional templates
        try:
            return jinja.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise FormatError(f"{jinja}: not UTF-8 text (byte {e.start})") from None
    if from_special_vocab is None:
        path = model_dir / "chat_template.json"
        template = read_json(path).get("chat_template")
        if template is not None and not isinstance(template, str):
            raise FormatError(f"{path}: chat_template should be a string")
        return template
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
    except (ValueError, TypeError, AttributeError, KeyError, IndexError, RecursionError) as e:
        # gguf-py reads tokenizer.json / tokenizer_config.json itself, without our checks
        # (a UTF-8 BOM, a mistyped field); transformers would refuse those files too
        raise FormatError(f"{model_dir}: the tokenizer files' special tokens cannot be read "
                          f"({type(e).__name__}: {str(e)[:80]})") from None
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
