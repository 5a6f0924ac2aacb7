"""Write a model directory's tokenizer as the tokenizer.ggml.* keys llama.cpp reads.

Three vocabularies are handled:
  bpe  byte-level BPE from tokenizer.json (GPT-2, Llama 3, Qwen2, SmolLM): model "gpt2",
       tokens, types, merges and the pre-tokenizer name (pretokenizer.py), derived from
       the pipeline transformers 5 really runs (tokenizer_class.py: some classes rebuild
       it and ignore the file's pre_tokenizer);
  spm  SentencePiece from tokenizer.model (Llama 2, TinyLlama, Mistral v0.1, Gemma):
       model "llama", tokens, scores, types and whether a space is prefixed; or the same
       from a SentencePiece-style tokenizer.json when no tokenizer.model is there
       (transformers 5 saves only that; spm_json_vocab.py);
  wpm  WordPiece (BERT) from tokenizer.json or vocab.txt: model "bert", word-start
       tokens, types and the normaliser flags (wpm_vocab.py);
  ugm  Unigram (XLM-RoBERTa) from tokenizer.json: model "t5", pieces, scores, the
       precompiled character map and spacing flags (ugm_vocab.py).
All then get special ids, add-BOS/EOS flags and the chat template (special_tokens.py).
Nothing here needs transformers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import gguf

from ..errors import InputError, UnsupportedError
from .bpe_vocab import is_byte_level, read_bpe_vocab
from .pretokenizer import choose_pre
from .special_tokens import _token_text, read_json, special_vocab
from .spm_json_vocab import is_spm_style, read_spm_json_vocab
from .spm_vocab import read_spm_vocab
from .tokenizer_class import (
    REBUILT_UNIGRAM, REBUILT_WORDPIECE, as_transformers_runs, effective_class, space_prefix,
)
from .tokenizer_schema import check_tokenizer_json
from .ugm_vocab import is_unigram, read_ugm_vocab, write_ugm
from .wpm_vocab import is_wordpiece, read_vocab_txt, read_wpm_vocab, write_normalizer

log = logging.getLogger(__name__)

# Architectures whose llama.cpp converter reads tokenizer.model before tokenizer.json
# (LlamaModel and its subclasses, Qwen2/Qwen3, the Gemmas, Phi-3...). Everything else
# starts from tokenizer.json, like llama.cpp's base converter.
# Names llama.cpp's converter gives a family's tokenizer where llama.cpp runs them exactly as
# the derived name (ModernBERT's GPT-2 regex is "modern-bert" there)
ARCH_PRE_NAMES = {("modern-bert", "gpt-2"): "modern-bert"}
KIND_NAMES = {"bpe": "byte-level BPE", "spm": "SentencePiece", "spm-json": "SentencePiece-style BPE",
              "wpm": "WordPiece", "ugm": "Unigram"}
# Encoders whose Unigram vocabulary llama.cpp runs with its "t5" (UGM) tokenizer (XLM-RoBERTa)
UGM_ARCHES = frozenset({"bert"})
SPM_FIRST_ARCHES = frozenset({
    "llama", "mistral", "smollm3", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3",
    "baichuan", "minicpm", "internlm2", "deepseek",
})


@dataclass(frozen=True)
class TokenizerInfo:
    kind: Literal["bpe", "spm", "wpm", "ugm"]
    n_tokens: int
    pre: str | None  # tokenizer.ggml.pre; "default" for SentencePiece
    special: dict[str, int] = field(default_factory=dict)
    add_bos: bool | None = None
    source: str = ""


def _is_sentencepiece(path: Path) -> bool:
    # A serialized ModelProto opens with field 1 (pieces), length-delimited: byte 0x0A.
    # Llama 3 style repos may hold a tiktoken "tokenizer.model" (base64 text) instead.
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(1) == b"\n"


def _choose_kind(model_dir: Path, arch: str, tokenizer_json: dict | None) -> str:
    if is_unigram(tokenizer_json) and arch in UGM_ARCHES:
        return "ugm"
    if is_wordpiece(tokenizer_json) or (tokenizer_json is None and (model_dir / "vocab.txt").is_file()):
        return "wpm"
    has_model = _is_sentencepiece(model_dir / "tokenizer.model")
    byte_level = tokenizer_json is not None and is_byte_level(tokenizer_json)
    if has_model and (arch in SPM_FIRST_ARCHES or not byte_level):
        return "spm"
    if byte_level:
        return "bpe"
    if tokenizer_json is not None:
        if is_spm_style(tokenizer_json):
            return "spm-json"
        model = tokenizer_json.get("model", {})
        raise UnsupportedError(
            f"{model_dir / 'tokenizer.json'}: a {model.get('type', 'BPE')} tokenizer that is "
            f"neither byte-level BPE nor SentencePiece-style BPE (byte_fallback="
            f"{model.get('byte_fallback', False)}); add the model's tokenizer.model if it has one")
    raise InputError(f"{model_dir}: no tokenizer.json or tokenizer.model; copy the tokenizer "
                     f"files of the base model into the directory")


def _warn_normalizer(tokenizer_json: dict, path: Path) -> None:
    # llama.cpp applies no normalizer to BPE text. NFC (Qwen) changes nothing for text
    # that is already composed, which is nearly all text; anything else is worth a word.
    normalizer = tokenizer_json.get("normalizer")
    if normalizer and normalizer.get("type") != "NFC":
        log.warning("%s: normalizer %s is not applied by llama.cpp; text it would change "
                    "tokenizes differently there", path, normalizer.get("type"))


def add_tokenizer(writer: gguf.GGUFWriter, model_dir: Path, *, config: dict,
                  vocab_size: int | None = None, vocab_pre: str | None = None,
                  arch: str = "llama") -> TokenizerInfo:
    """Write every tokenizer.ggml.* key for the tokenizer in `model_dir`.

    vocab_size is the number of embedding rows (config vocab_size); the token list is
    padded up to it. vocab_pre overrides the derived pre-tokenizer name (BPE only)."""
    model_dir = Path(model_dir)
    if vocab_size is None:
        vocab_size = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")
    json_path = model_dir / "tokenizer.json"
    tokenizer_json = check_tokenizer_json(read_json(json_path), str(json_path)) if json_path.is_file() else None
    tokenizer_config = read_json(model_dir / "tokenizer_config.json")
    kind = _choose_kind(model_dir, arch, tokenizer_json)
    if vocab_pre is not None and kind != "bpe":
        # llama.cpp reads the pre-tokenizer name for byte-level BPE only
        raise InputError(f"--vocab-pre names a byte-level BPE pre-tokenizer; {model_dir}'s tokenizer is "
                         f"{KIND_NAMES[kind]}, which llama.cpp splits its own way: leave the option out")

    if kind == "wpm":
        return _add_wordpiece(writer, model_dir, tokenizer_json, tokenizer_config, config, vocab_size)
    if kind == "ugm":
        return _add_unigram(writer, model_dir, tokenizer_json, tokenizer_config, config, vocab_size)
    if kind == "bpe":
        _warn_normalizer(tokenizer_json, json_path)
        vocab = read_bpe_vocab(tokenizer_json, vocab_size, str(json_path))
        runs, cls = as_transformers_runs(tokenizer_json, tokenizer_config, config)
        pre = choose_pre(runs, tokenizer_config, vocab_pre, str(json_path))
        if vocab_pre is None:
            pre = ARCH_PRE_NAMES.get((arch, pre), pre)
        if cls is not None:
            log.info("%s: transformers builds this tokenizer as %s, which replaces the file's "
                     "pre-tokenizer; tokenizer.ggml.pre %s follows the class", json_path, cls, pre)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(vocab.tokens)
        writer.add_token_types(vocab.types)
        tokens, default_ids, source = vocab.tokens, None, str(json_path)
    else:
        if kind == "spm":
            spm = read_spm_vocab(model_dir, vocab_size, tokenizer_config, tokenizer_json)
            source = str(model_dir / "tokenizer.model")
        else:
            spm = read_spm_json_vocab(tokenizer_json, vocab_size, str(json_path))
            source = str(json_path)
        prefix = space_prefix(config, tokenizer_config, tokenizer_json)
        if prefix is not None and prefix != spm.add_space_prefix:
            log.info("%s: transformers builds this tokenizer as a class that %s a space before the "
                     "text; tokenizer.ggml.add_space_prefix follows it", source, "puts" if prefix else "puts no")
            spm = replace(spm, add_space_prefix=prefix)
        pre = "default"
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(spm.tokens)
        writer.add_token_scores(spm.scores)
        writer.add_token_types(spm.types)
        writer.add_add_space_prefix(spm.add_space_prefix)
        tokens, default_ids = spm.tokens, spm.default_ids

    sv = special_vocab(model_dir, tokens, merges=kind == "bpe", tokenizer_config=tokenizer_config,
                       default_ids=default_ids)
    if kind == "bpe":
        # Without a post-processor template or add_bos_token, HF adds no BOS; say so, since
        # llama.cpp otherwise adds one for some names (llama-bpe, tekken).
        sv.add_special_token.setdefault("bos", False)
    sv.special_token_ids.pop("cls", None)  # no GGUF key for it (only BERT's tokenizer uses one, as BOS)
    sv.add_to_gguf(writer, quiet=True)
    return TokenizerInfo(kind="bpe" if kind == "bpe" else "spm", n_tokens=len(tokens), pre=pre,
                         special=dict(sv.special_token_ids),
                         add_bos=sv.add_special_token.get("bos"), source=source)


def _add_wordpiece(writer: gguf.GGUFWriter, model_dir: Path, tokenizer_json: dict | None,
                   tokenizer_config: dict, config: dict, vocab_size: int | None) -> TokenizerInfo:
    """The "bert" vocabulary: word-start tokens, normaliser flags, special ids; BERT adds
    [CLS] ... [SEP] around every text (llama.cpp: BOS = CLS, then SEP)."""
    source = model_dir / ("tokenizer.json" if tokenizer_json is not None else "vocab.txt")
    spec = tokenizer_json if tokenizer_json is not None else read_vocab_txt(source)
    rebuilt = effective_class(config, tokenizer_config, spec) in REBUILT_WORDPIECE
    vocab = read_wpm_vocab(spec, tokenizer_config, vocab_size, rebuilt=rebuilt, source=str(source))
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    write_normalizer(writer, vocab)
    sv = special_vocab(model_dir, vocab.tokens, merges=False, tokenizer_config=tokenizer_config)
    # llama.cpp's BOS is BERT's CLS. Its own defaults (101, 102...) fit only the original
    # English vocabulary, so every id is named: by the template, tokenizer_config.json, or
    # else BertTokenizer's default texts, as transformers does
    by_text = {t: i for i, t in enumerate(vocab.tokens)}
    for typ, key, default in (("cls", "cls_token", "[CLS]"), ("sep", "sep_token", "[SEP]"),
                              ("unk", "unk_token", "[UNK]"), ("pad", "pad_token", "[PAD]"),
                              ("mask", "mask_token", "[MASK]")):
        text = _token_text(tokenizer_config.get(key, default))
        if typ not in sv.special_token_ids and isinstance(text, str) and text in by_text:
            sv.special_token_ids[typ] = by_text[text]
    if "bos" not in sv.special_token_ids and "cls" in sv.special_token_ids:
        sv.special_token_ids["bos"] = sv.special_token_ids["cls"]
    sv.special_token_ids.pop("cls", None)  # no GGUF key
    sv.add_to_gguf(writer, quiet=True)
    return TokenizerInfo(kind="wpm", n_tokens=len(vocab.tokens), pre="default",
                         special=dict(sv.special_token_ids), add_bos=sv.add_special_token.get("bos"),
                         source=str(source))


def _add_unigram(writer: gguf.GGUFWriter, model_dir: Path, tokenizer_json: dict, tokenizer_config: dict,
                 config: dict, vocab_size: int | None) -> TokenizerInfo:
    """The "t5" vocabulary of an XLM-RoBERTa encoder; <s> ... </s> come from the template."""
    source = model_dir / "tokenizer.json"
    rebuilt = effective_class(config, tokenizer_config, tokenizer_json) in REBUILT_UNIGRAM
    vocab = read_ugm_vocab(tokenizer_json, tokenizer_config, vocab_size, rebuilt=rebuilt, source=str(source))
    write_ugm(writer, vocab)
    sv = special_vocab(model_dir, vocab.tokens, merges=False, tokenizer_config=tokenizer_config)
    sv.special_token_ids.pop("cls", None)  # no GGUF key; the template's first token is BOS
    sv.add_to_gguf(writer, quiet=True)
    return TokenizerInfo(kind="ugm", n_tokens=len(vocab.tokens), pre="default",
                         special=dict(sv.special_token_ids), add_bos=sv.add_special_token.get("bos"),
                         source=str(source))
