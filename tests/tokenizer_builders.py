"""Small tokenizers made inside the tests, and the vocab-only GGUF files built from them.

The tokenizers are trained here (tokenizers' BpeTrainer, SentencePieceTrainer) on Python's
own help text plus a few lines of other scripts, digits and code, so the tests need no
download; llama.cpp (llama-cpp-python) then loads the GGUF with vocab_only=True and its
token ids are compared with the ids of the library that trained the tokenizer.
"""

from __future__ import annotations

import ctypes
import io
import json
from pathlib import Path

import gguf
from pydoc_data.topics import topics

from qconvert.source.tokenizer import TokenizerInfo, add_tokenizer

EXTRA_LINES = [
    "我想在apple工作1314151天 日本語のテキストと한국어 텍스트 Привет, мир! Ελληνικά",
    "café naïve résumé Ångström émoji 🚀🦙😀 ✅",
    "1234567890 2024 3.14159 1,000,000 42 007 99.5% 12345 678",
    "def f(x):\n    return x ** 2  # square\n\tfor (int i = 0; i < n; ++i) { sum += a[i]; }",
    "I'm sure he's here, they'll go; WE'VE done it. You'd THINK so.",
    "MixedCASE camelCaseWord HTTPServer XMLHttpRequest",
]
CORPUS = list(topics.values())[:40] + EXTRA_LINES * 20

# Twenty strings: scripts, accents, emoji, space/newline/tab runs, digit runs, code,
# contractions, special tokens inside text, the empty string.
STRINGS = [
    "Hello world",
    "",
    "  leading spaces and   runs of   spaces  ",
    "line one\nline two\n\n\nthree newlines\r\nCRLF",
    "tabs\tand\t\ttabs\n\t indented",
    "1234567 and 3.14159 and 1,000,000",
    "café naïve résumé Ångström",
    "我想在apple工作1314151天",
    "日本語のテキストと한국어 텍스트",
    "emoji 🚀🦙😀 ✅ flags 🇫🇷",
    "def f(x):\n    return x ** 2  # square\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "I'm sure he's, they'll WE'VE you'd",
    "Привет, мир! Ελληνικά",
    "   ",
    "\n\n",
    "MixedCASE camelCaseWord HTTPServer XMLHttpRequest",
    "math: a+b=c, x^2 >= y; 50% off $9.99",
    "<think>plan</think> done",
]

# Twenty-eight hostile strings: the twenty above plus digit runs in every shape, non-ASCII
# digits, odd spaces and upper-case contractions, where pre-tokenizer regexes part ways.
# All are NFC already (a Qwen2-class tokenizer normalises to NFC; llama.cpp does not).
HOSTILE = STRINGS + [
    "2024年12月31日 v1.2.3-rc4 +1-800-555-0199",
    "12345678901234567890 and 0.000001",
    "⅕ ①② ½ ²³ ٣٤٥ २३",
    "𝟙𝟚𝟛 math digits １２３",
    " nbsp thin　ideographic 42 42",
    "'S 'LL 'D 'Re 'vE SHOUTING'S",
    "x\n\n\n  \t\r\n y\r\r\n\n z  \n",
    "a1b22c333d4444e55555 007 0x1F 1e-9",
]

BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
BYTE_LEVEL_REGEX = dict(BYTE_LEVEL, use_regex=True)


def split(regex: str, behavior: str = "Isolated", invert: bool = False) -> dict:
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": behavior, "invert": invert}


def digits(individual: bool) -> dict:
    return {"type": "Digits", "individual_digits": individual}


def train_bpe(directory: Path, pre_tokenizer: list[dict], *, ignore_merges: bool,
              specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>"), user_tokens=("<think>",),
              normalizer: dict | None = None, vocab_size: int = 1200):
    """Train a byte-level BPE with the given pre-tokenizer chain; save tokenizer.json."""
    from tokenizers import AddedToken, Tokenizer, pre_tokenizers, trainers

    spec = {
        "version": "1.0", "added_tokens": [], "normalizer": normalizer,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": pre_tokenizer},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": ignore_merges, "vocab": {}, "merges": []},
    }
    tok = Tokenizer.from_str(json.dumps(spec))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=list(specials))
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in user_tokens])
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    return tok


def train_spm(directory: Path, *, model_type: str = "bpe", add_dummy_prefix: bool = True,
              vocab_size: int = 1500) -> Path:
    """Train a SentencePiece model shaped like Llama 2's (identity normalizer, byte fallback)."""
    import sentencepiece as spm

    buf = io.BytesIO()
    lines = [line for text in CORPUS for line in text.split("\n") if line.strip()]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, model_type=model_type,
        vocab_size=vocab_size, byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, split_digits=True, add_dummy_prefix=add_dummy_prefix,
        allow_whitespace_only_pieces=True, character_coverage=0.9995, minloglevel=2)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "tokenizer.model"
    path.write_bytes(buf.getvalue())
    return path


def spm_style_tokenizer_json(model_dir: Path, sp, *, prefix: bool, controls=()):
    """The tokenizer.json transformers makes from a SentencePiece BPE model: merges from the
    piece scores (transformers' own generate_merges), Metaspace spaces, byte fallback."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers.tokenization_utils_base import generate_merges

    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    merges = generate_merges(vocab, {piece: sp.get_score(i) for i, piece in enumerate(pieces)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True,
                               byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="\u2581", prepend_scheme="first" if prefix else "never", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                     decoders.Fuse()])
    tok.add_special_tokens([AddedToken(t, special=True) for t in ("<unk>", "<s>", "</s>")])
    tok.add_special_tokens([AddedToken(t, special=True) for t in controls])
    tok.save(str(model_dir / "tokenizer.json"))
    return tok


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value), encoding="utf-8")


def write_vocab_gguf(model_dir: Path, out: Path, **kwargs) -> TokenizerInfo:
    """A GGUF holding minimal llama hyper-parameters and the tokenizer keys, no tensors."""
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_context_length(256)
    writer.add_embedding_length(64)
    writer.add_block_count(1)
    writer.add_feed_forward_length(128)
    writer.add_head_count(2)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(32)
    kwargs.setdefault("config", {})
    info = add_tokenizer(writer, model_dir, **kwargs)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return info


def load_vocab(path: Path):
    from qconvert.eval.llama_model import open_llama

    return open_llama(path, vocab_only=True)


def detokenize(llm, ids: list[int]) -> bytes:
    """llama.cpp's own detokenizer (leading-space removal, clean-up), special tokens as text."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    arr = (llama_cpp.llama_token * max(len(ids), 1))(*ids)
    buf = ctypes.create_string_buffer(8192)
    n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, len(buf), False, True)
    assert n >= 0
    return buf.raw[:n]


def read_fields(path: Path) -> dict:
    reader = gguf.GGUFReader(str(path))
    return {name: field.contents() for name, field in reader.fields.items()}
