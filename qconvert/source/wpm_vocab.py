"""WordPiece vocabularies (BERT and its kin) as llama.cpp's "bert" tokenizer reads them.

llama.cpp's WPM tokenizer marks the start of every word with SentencePiece's visible
space instead of marking continuations: HF's "hello" / "##lo" become "▁hello" / "lo"
(special tokens such as [CLS] keep their text). The list has one entry per embedding row;
rows no token owns are "[PAD{id}]".

Normalisation is not in llama.cpp's token list but in two flags,
tokenizer.ggml.normalizer.lowercase and .strip_accents, taken from what transformers runs:
the BertNormalizer a BertTokenizer builds from tokenizer_config.json (do_lower_case,
strip_accents, tokenize_chinese_chars; transformers 5 ignores the file's normalizer for
that class), else the normalizer in tokenizer.json. llama.cpp always splits CJK characters
into words of their own and drops control characters, as BertNormalizer does by default;
a tokenizer that turns either off is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf

from ..errors import FormatError, InputError, UnsupportedError
from .bpe_vocab import check_unique

WORD_START = "\u2581"
# gguf-py 0.19 has no writer methods for these two keys; llama.cpp reads them by name
KEY_LOWERCASE = "tokenizer.ggml.normalizer.lowercase"
KEY_STRIP_ACCENTS = "tokenizer.ggml.normalizer.strip_accents"


@dataclass(frozen=True)
class WordPieceVocab:
    tokens: list[str]
    types: list[int]
    lowercase: bool
    strip_accents: bool


def is_wordpiece(tokenizer_json: dict | None) -> bool:
    return tokenizer_json is not None and (tokenizer_json.get("model") or {}).get("type") == "WordPiece"


def _flags(tokenizer_json: dict, tokenizer_config: dict, rebuilt: bool, source: str) -> tuple[bool, bool]:
    """(lowercase, strip_accents) as transformers' tokenizer for this directory applies them."""
    if rebuilt:
        lower = tokenizer_config.get("do_lower_case", True)
        strip = tokenizer_config.get("strip_accents")
        chinese = tokenizer_config.get("tokenize_chinese_chars", True)
        clean = True
        where = "tokenizer_config.json"
    else:
        norm = tokenizer_json.get("normalizer") or {}
        if norm and norm.get("type") != "BertNormalizer":
            raise UnsupportedError(f"{source}: WordPiece normalizer {norm.get('type')!r} is not one llama.cpp "
                                   "applies (it implements BertNormalizer)")
        lower, strip = norm.get("lowercase", False), norm.get("strip_accents")
        chinese, clean = norm.get("handle_chinese_chars", True), norm.get("clean_text", True)
        where = source
    for key, value in (("lowercase", lower), ("strip_accents", strip), ("chinese", chinese), ("clean", clean)):
        if value is not None and not isinstance(value, bool):
            raise FormatError(f"{where}: the WordPiece normaliser's {key} setting is {value!r}; expected true or false")
    if not chinese or not clean:
        raise UnsupportedError(f"{where}: tokenize_chinese_chars / clean_text is off; llama.cpp's WordPiece "
                               "tokenizer always splits CJK characters and drops control characters")
    # BertNormalizer: strip_accents unset means "as lowercase"
    return bool(lower), bool(lower if strip is None else strip)


def read_wpm_vocab(tokenizer_json: dict, tokenizer_config: dict, vocab_size: int | None, *,
                   rebuilt: bool, source: str = "tokenizer.json") -> WordPieceVocab:
    model = tokenizer_json.get("model") or {}
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not vocab:
        raise FormatError(f"{source}: a WordPiece model without a vocab object")
    # a BertTokenizer that transformers rebuilds always continues words with "##"
    prefix = "##" if rebuilt else model.get("continuing_subword_prefix") or "##"
    if not isinstance(prefix, str):
        raise FormatError(f"{source}: model.continuing_subword_prefix should be a string")
    if prefix != "##":
        raise UnsupportedError(f"{source}: continuation prefix {prefix!r}; llama.cpp's WordPiece expects '##'")
    by_id = {i: text for text, i in vocab.items()}
    special = set()
    for entry in tokenizer_json.get("added_tokens") or []:
        by_id[entry["id"]] = entry["content"]
        if entry.get("special"):
            special.add(entry["id"])
    highest = max(by_id)
    n_rows = vocab_size if vocab_size is not None else highest + 1
    if highest >= n_rows:
        raise InputError(f"{source}: token id {highest} ({by_id[highest]!r}) does not fit config vocab_size "
                         f"{n_rows}; the embedding has no row for it")
    tokens, types = [], []
    for i in range(n_rows):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in special:
            tokens.append(text)
            types.append(gguf.TokenType.CONTROL)
        else:
            tokens.append(text[len(prefix):] if text.startswith(prefix) else WORD_START + text)
            types.append(gguf.TokenType.NORMAL)
    check_unique(tokens, source)
    lower, strip = _flags(tokenizer_json, tokenizer_config, rebuilt, source)
    return WordPieceVocab(tokens, types, lower, strip)


def read_vocab_txt(path: Path) -> dict:
    """A vocab.txt (one token a line, BERT's original format) as a WordPiece tokenizer.json
    would hold it: the bracketed special tokens become added special tokens."""
    try:
        lines = path.read_bytes().decode("utf-8").split("\n")
    except OSError as e:
        raise FormatError(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise FormatError(f"{path}: not UTF-8 text (byte {e.start})") from None
    if lines and lines[-1] == "":
        lines.pop()
    vocab = {}
    for i, line in enumerate(lines):
        vocab.setdefault(line.rstrip("\r"), i)
    specials = [{"id": vocab[t], "content": t, "special": True}
                for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if t in vocab]
    return {"model": {"type": "WordPiece", "vocab": vocab, "continuing_subword_prefix": "##",
                      "unk_token": "[UNK]"}, "added_tokens": specials}


def write_normalizer(writer: gguf.GGUFWriter, vocab: WordPieceVocab) -> None:
    writer.add_bool(KEY_LOWERCASE, vocab.lowercase)
    writer.add_bool(KEY_STRIP_ACCENTS, vocab.strip_accents)
