"""SentencePiece vocabularies (Llama 2, TinyLlama, Mistral v0.1, Gemma) read from tokenizer.model.

Laid out as llama.cpp's converter does: one entry per embedding row, the model's pieces
with their scores and types, then the added tokens of added_tokens.json and of
tokenizer_config.json's added_tokens_decoder (or tokenizer.json's added_tokens when the
config has none) written over their ids, and "[PAD{id}]" rows (type UNUSED) for the rest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import gguf
from sentencepiece import SentencePieceProcessor

from ..errors import FormatError, UnsupportedError
from .bpe_vocab import check_unique, looks_special
from .special_tokens import read_json
from .spm_proto import read_spm_proto

log = logging.getLogger(__name__)

_SPM_SPACE = "\u2581"
_PAD_SCORE = -10000.0   # llama.cpp's converter: rows no piece owns
_ADDED_SCORE = -1000.0  # llama.cpp's converter: added tokens never win a merge


@dataclass(frozen=True)
class SpmVocab:
    tokens: list[bytes]
    scores: list[float]
    types: list[int]
    add_space_prefix: bool
    default_ids: dict[str, int]  # bos/eos/unk/pad ids the model itself was trained with


def _piece_type(sp: SentencePieceProcessor, i: int) -> int:
    # The proto's USER_DEFINED pieces are typed NORMAL, as llama.cpp's converter types
    # them (Gemma included). Typed USER_DEFINED, llama.cpp would cut the text at them
    # and, with a space prefix, prefix the next fragment with a space; SentencePiece cuts
    # but adds no space. As NORMAL they are reached only through merges.
    if sp.IsUnknown(i):
        return gguf.TokenType.UNKNOWN
    if sp.IsControl(i):
        return gguf.TokenType.CONTROL
    if sp.IsUnused(i):
        return gguf.TokenType.UNUSED
    if sp.IsByte(i):
        return gguf.TokenType.BYTE
    return gguf.TokenType.NORMAL


def _added_tokens(model_dir: Path, tokenizer_config: dict, tokenizer_json: dict | None):
    """(id, text, special) for every added token, in the order they override."""
    added_file = model_dir / "added_tokens.json"
    for text, i in read_json(added_file).items():
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < 2**31:
            raise FormatError(f"{added_file}: token {text[:40]!r} has id {str(i)[:40]!r}; expected an integer from 0")
        yield i, text, False
    decoder = tokenizer_config.get("added_tokens_decoder")
    if decoder:
        if not isinstance(decoder, dict):
            raise FormatError(f"{model_dir / 'tokenizer_config.json'}: added_tokens_decoder should be an object")
        for i, entry in decoder.items():
            if not (i.isdigit() and len(i) < 10 and isinstance(entry, dict) and isinstance(entry.get("content"), str)):
                raise FormatError(f"{model_dir / 'tokenizer_config.json'}: added_tokens_decoder entry {i[:40]!r} "
                                  "should map a token id to an object with a string content")
            yield int(i), entry["content"], bool(entry.get("special"))
    elif tokenizer_json:
        for entry in tokenizer_json.get("added_tokens") or []:
            yield int(entry["id"]), entry["content"], bool(entry.get("special"))


def read_spm_vocab(model_dir: Path, vocab_size: int | None, tokenizer_config: dict,
                   tokenizer_json: dict | None) -> SpmVocab:
    path = model_dir / "tokenizer.model"
    data = path.read_bytes()
    sp = SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(data)
    except (RuntimeError, OSError, ValueError) as exc:  # ValueError: UnicodeDecodeError of a damaged piece
        raise FormatError(f"{path}: sentencepiece cannot load it ({type(exc).__name__}: {str(exc)[:200]})") from None
    proto = read_spm_proto(data, str(path))
    if proto.model_type != "bpe":
        # llama.cpp's SentencePiece tokenizer ("llama") merges adjacent pieces by score,
        # which is SentencePiece's BPE; a unigram model picks the best-scoring segmentation
        # instead, and llama.cpp's unigram tokenizer ("t5") has no byte fallback.
        raise UnsupportedError(
            f"{path}: a SentencePiece {proto.model_type} model; llama.cpp tokenizes only "
            f"SentencePiece BPE models (Llama 2, Mistral, Gemma) the way SentencePiece does")
    if proto.treat_whitespace_as_suffix:
        raise UnsupportedError(f"{path}: treat_whitespace_as_suffix is set; llama.cpp's "
                               f"SentencePiece tokenizer only prefixes whitespace")
    n_pieces = sp.vocab_size()
    n_rows = vocab_size if vocab_size is not None else n_pieces
    if n_pieces > n_rows:
        log.warning("%s: %d pieces but config vocab_size %d; pieces from id %d on are dropped",
                    path, n_pieces, n_rows, n_rows)
    if proto.has_charsmap or proto.remove_extra_whitespaces:
        log.warning("%s: normalizer %r (squeeze spaces: %s) is not applied by llama.cpp; "
                    "text it would change tokenizes differently there",
                    path, proto.normalizer_name, proto.remove_extra_whitespaces)

    tokens = [f"[PAD{i}]".encode() for i in range(n_rows)]
    scores = [_PAD_SCORE] * n_rows
    types = [int(gguf.TokenType.UNUSED)] * n_rows
    for i in range(min(n_pieces, n_rows)):
        try:
            tokens[i] = sp.IdToPiece(i).encode("utf-8")
        except UnicodeDecodeError:  # sentencepiece loads a piece that is not UTF-8, then fails on it
            raise FormatError(f"{path}: piece {i} is not valid UTF-8; the tokenizer.model is damaged") from None
        scores[i] = sp.GetScore(i)
        types[i] = int(_piece_type(sp, i))

    for i, text, special in _added_tokens(model_dir, tokenizer_config, tokenizer_json):
        if i >= n_rows:
            log.warning("%s: added token %r has id %d beyond vocab_size %d; skipped",
                        model_dir, text, i, n_rows)
            continue
        encoded = text.encode("utf-8")
        # An entry that only restates one of the model's own special pieces (<unk>, <s>,
        # </s>, byte pieces) keeps the piece's type and score; llama.cpp's converter would
        # retype <unk> CONTROL.
        if encoded == tokens[i] and types[i] in (gguf.TokenType.UNKNOWN, gguf.TokenType.BYTE,
                                                 gguf.TokenType.CONTROL):
            continue
        if special or looks_special(text):
            types[i] = int(gguf.TokenType.CONTROL)
        else:
            encoded = text.replace(_SPM_SPACE, " ").encode("utf-8")
            types[i] = int(gguf.TokenType.USER_DEFINED)
        tokens[i] = encoded
        scores[i] = _ADDED_SCORE

    check_unique(tokens, str(model_dir))
    add_prefix = tokenizer_config.get("add_prefix_space")
    default_ids = {name: i for name, i in (("bos", sp.bos_id()), ("eos", sp.eos_id()),
                                           ("unk", sp.unk_id()), ("pad", sp.pad_id()))
                   if 0 <= i < n_rows}
    return SpmVocab(tokens, scores, types,
                    add_prefix if isinstance(add_prefix, bool) else proto.add_dummy_prefix,
                    default_ids)
