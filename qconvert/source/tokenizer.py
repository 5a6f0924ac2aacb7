"""Write a model directory's tokenizer as the tokenizer.ggml.* keys llama.cpp reads.

Two vocabularies are handled:
  bpe  byte-level BPE from tokenizer.json (GPT-2, Llama 3, Qwen2, SmolLM): model "gpt2",
       tokens, types, merges and the pre-tokenizer name (pretokenizer.py);
  spm  SentencePiece from tokenizer.model (Llama 2, TinyLlama, Mistral v0.1, Gemma):
       model "llama", tokens, scores, types and whether a space is prefixed; or the same
       from a SentencePiece-style tokenizer.json when no tokenizer.model is there
       (transformers 5 saves only that; spm_json_vocab.py).
Both then get special ids, add-BOS/EOS flags and the chat template (special_tokens.py).
Nothing here needs transformers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import gguf

from ..errors import InputError, UnsupportedError
from .bpe_vocab import is_byte_level, read_bpe_vocab
from .pretokenizer import choose_pre
from .special_tokens import read_json, special_vocab
from .spm_json_vocab import is_spm_style, read_spm_json_vocab
from .spm_vocab import read_spm_vocab
from .tokenizer_schema import check_tokenizer_json

log = logging.getLogger(__name__)

# Architectures whose llama.cpp converter reads tokenizer.model before tokenizer.json
# (LlamaModel and its subclasses, Qwen2/Qwen3, the Gemmas, Phi-3...). Everything else
# starts from tokenizer.json, like llama.cpp's base converter.
SPM_FIRST_ARCHES = frozenset({
    "llama", "mistral", "smollm3", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3",
    "baichuan", "minicpm", "internlm2", "deepseek",
})


@dataclass(frozen=True)
class TokenizerInfo:
    kind: Literal["bpe", "spm"]
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

    if kind == "bpe":
        _warn_normalizer(tokenizer_json, json_path)
        vocab = read_bpe_vocab(tokenizer_json, vocab_size, str(json_path))
        pre = choose_pre(tokenizer_json, tokenizer_config, vocab_pre, str(json_path))
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
    sv.add_to_gguf(writer, quiet=True)
    return TokenizerInfo(kind="bpe" if kind == "bpe" else "spm", n_tokens=len(tokens), pre=pre,
                         special=dict(sv.special_token_ids),
                         add_bos=sv.add_special_token.get("bos"), source=source)
