"""Tokenizer -> GGUF: llama.cpp must tokenize like the library that made the tokenizer.

Each tokenizer is trained here, converted by add_tokenizer into a vocab-only GGUF, loaded
by llama.cpp (llama-cpp-python, vocab_only=True) and compared, id for id, on twenty strings
with the Hugging Face `tokenizers` library (BPE) or SentencePiece (SPM).
"""

from __future__ import annotations

import json
import re

import pytest
import sentencepiece as spm
from tokenizers import Tokenizer

from qconvert.errors import InputError, UnsupportedError
from tokenizer_builders import (
    BYTE_LEVEL, BYTE_LEVEL_REGEX, STRINGS, detokenize, digits, load_vocab, read_fields, split,
    spm_style_tokenizer_json, train_bpe, train_spm, write_json, write_vocab_gguf,
)

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = LLAMA3_REGEX.replace(r"\p{N}{1,3}", r"\p{N}")

# name: (pre-tokenizer chain, ignore_merges, clean_up_tokenization_spaces, expected pre,
#        extra padding rows, normalizer)
BPE_CASES = {
    "llama3": ([split(LLAMA3_REGEX), BYTE_LEVEL], True, True, "llama-bpe", 0, None),
    "gpt2": ([BYTE_LEVEL_REGEX], False, True, "gpt-2", 0, None),
    "qwen2": ([split(QWEN2_REGEX), BYTE_LEVEL], False, False, "qwen2", 37, {"type": "NFC"}),
    "smollm": ([digits(True), BYTE_LEVEL_REGEX], False, False, "smollm", 3, None),
}


def hf_clean_up(text: str) -> str:
    """transformers' clean_up_tokenization, what clean_up_tokenization_spaces=True applies."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
                          (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"),
                          (" 're", "'re")):
        text = text.replace(before, after)
    return text


@pytest.fixture(scope="module", params=list(BPE_CASES))
def bpe_case(request, tmp_path_factory):
    name = request.param
    chain, ignore_merges, clean, pre, padding, normalizer = BPE_CASES[name]
    model_dir = tmp_path_factory.mktemp(name)
    specials = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
    if name == "llama3":
        specials = ("<|begin_of_text|>", "<|end_of_text|>") + specials[1:]
    tok = train_bpe(model_dir, chain, ignore_merges=ignore_merges, specials=specials,
                    normalizer=normalizer)
    config = {"clean_up_tokenization_spaces": clean, "eos_token": specials[-1 if name != "llama3" else 1]}
    spec = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    if name == "llama3":
        # Llama 3's post-processor prepends <|begin_of_text|>: add_bos must come from it.
        spec["post_processor"] = {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [0],
                                                     "tokens": ["<|begin_of_text|>"]}},
        }
        config["bos_token"] = "<|begin_of_text|>"
    if name == "gpt2":
        # The pre-4.45 merges spelling, "a b", next to the list form the others use.
        spec["model"]["merges"] = [" ".join(pair) for pair in spec["model"]["merges"]]
    write_json(model_dir / "tokenizer.json", spec)
    write_json(model_dir / "tokenizer_config.json", config)
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    vocab_size = tok.get_vocab_size() + padding
    out = model_dir / "vocab.gguf"
    info = write_vocab_gguf(model_dir, out, config={"vocab_size": vocab_size}, arch="qwen2"
                            if name == "qwen2" else "llama")
    return {"name": name, "tok": tok, "info": info, "gguf": out, "llm": load_vocab(out),
            "pre": pre, "clean": clean, "vocab_size": vocab_size, "spec": spec}


def test_bpe_pre_name_is_derived(bpe_case):
    assert bpe_case["info"].kind == "bpe"
    assert bpe_case["info"].pre == bpe_case["pre"]
    assert read_fields(bpe_case["gguf"])["tokenizer.ggml.pre"] == bpe_case["pre"]


@pytest.mark.parametrize("index", range(len(STRINGS)))
def test_bpe_llama_cpp_ids_equal_hf(bpe_case, index):
    text = STRINGS[index]
    ours = bpe_case["llm"].tokenize(text.encode(), add_bos=False, special=True)
    assert ours == bpe_case["tok"].encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize("index", range(len(STRINGS)))
def test_bpe_detokenize_round_trip(bpe_case, index):
    text = STRINGS[index]
    ids = bpe_case["tok"].encode(text, add_special_tokens=False).ids
    expected = bpe_case["tok"].decode(ids, skip_special_tokens=False)
    assert expected == text  # byte-level BPE loses nothing
    if bpe_case["clean"]:
        expected = hf_clean_up(expected)
    assert detokenize(bpe_case["llm"], ids) == expected.encode()


def test_bpe_add_bos_follows_the_post_processor(bpe_case):
    tok, llm = bpe_case["tok"], bpe_case["llm"]
    for text in ("Hello world", "1234567 and 3.14159"):
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == tok.encode(text).ids
    assert bpe_case["info"].add_bos is (bpe_case["name"] == "llama3")


def test_bpe_token_layout(bpe_case):
    fields = read_fields(bpe_case["gguf"])
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    tok, spec = bpe_case["tok"], bpe_case["spec"]
    assert len(tokens) == len(types) == bpe_case["vocab_size"]
    n_real = tok.get_vocab_size()
    for i in range(n_real, bpe_case["vocab_size"]):
        assert tokens[i] == f"[PAD{i}]" and types[i] == 5  # UNUSED
    added = {entry["content"]: entry for entry in spec["added_tokens"]}
    for i in range(n_real):
        text = tok.id_to_token(i)
        assert tokens[i] == text
        if text in added:
            assert types[i] == (3 if added[text]["special"] else 4)  # CONTROL / USER_DEFINED
        else:
            assert types[i] == 1  # NORMAL
    merges = spec["model"]["merges"]
    assert fields["tokenizer.ggml.merges"] == [m if isinstance(m, str) else " ".join(m) for m in merges]
    assert fields["tokenizer.ggml.model"] == "gpt2"


def test_bpe_rejects_ids_beyond_vocab_size(bpe_case, tmp_path):
    with pytest.raises(InputError, match="vocab_size"):
        write_vocab_gguf(bpe_case["gguf"].parent, tmp_path / "x.gguf",
                         config={"vocab_size": bpe_case["tok"].get_vocab_size() - 1})


# --- SentencePiece ---------------------------------------------------------------------

SPM_CONTROLS = {"<|im_start|>": 1500, "<|im_end|>": 1501}


def spm_reference(sp, text: str, controls: dict[str, int]) -> list[int]:
    """SentencePiece ids with control tokens cut out of the text first, each piece of text
    encoded on its own (so with its own dummy prefix): transformers' legacy Llama behaviour
    and llama.cpp's, which prefixes a space after every special token."""
    if not controls:
        return sp.encode(text)
    ids: list[int] = []
    pattern = "(" + "|".join(re.escape(c) for c in sorted(controls, key=len, reverse=True)) + ")"
    for part in re.split(pattern, text):
        if part in controls:
            ids.append(controls[part])
        elif part:
            ids.extend(sp.encode(part))
    return ids


@pytest.fixture(scope="module", params=["llama", "gemma"])
def spm_case(request, tmp_path_factory):
    """llama: Llama 2 shape (dummy prefix, added chat tokens past the pieces, padding rows).
    gemma: no dummy prefix and no config files, as a Gemma-style model would be read."""
    model_dir = tmp_path_factory.mktemp(f"spm_{request.param}")
    prefix = request.param == "llama"
    path = train_spm(model_dir, add_dummy_prefix=prefix)
    sp = spm.SentencePieceProcessor(model_file=str(path))
    controls, config = {}, {}
    if prefix:
        controls = SPM_CONTROLS
        decoder = {str(i): {"content": sp.id_to_piece(i), "special": True} for i in (0, 1, 2)}
        decoder.update({str(i): {"content": text, "special": True} for text, i in controls.items()})
        write_json(model_dir / "tokenizer_config.json", {
            "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
            "unk_token": "<unk>", "added_tokens_decoder": decoder})
        config = {"vocab_size": 1504}
    out = model_dir / "vocab.gguf"
    info = write_vocab_gguf(model_dir, out, config=config, arch="llama")
    return {"sp": sp, "controls": controls, "info": info, "gguf": out, "llm": load_vocab(out),
            "prefix": prefix, "config": config}


@pytest.mark.parametrize("index", range(len(STRINGS)))
def test_spm_llama_cpp_ids_equal_sentencepiece(spm_case, index):
    text = STRINGS[index]
    ours = spm_case["llm"].tokenize(text.encode(), add_bos=False, special=True)
    assert ours == spm_reference(spm_case["sp"], text, spm_case["controls"])


# Special tokens are left out: llama.cpp's SentencePiece input puts a space after each one.
PLAIN_STRINGS = [s for s in STRINGS if "<|im_" not in s]


@pytest.mark.parametrize("index", range(len(PLAIN_STRINGS)))
def test_spm_detokenize_round_trip(spm_case, index):
    text = PLAIN_STRINGS[index]
    ids = spm_case["sp"].encode(text)
    assert spm_case["sp"].decode(ids) == text
    assert detokenize(spm_case["llm"], ids) == text.encode()


def test_spm_bos_is_added_like_the_config_says(spm_case):
    sp, llm = spm_case["sp"], spm_case["llm"]
    ids = llm.tokenize(b"Hello world", add_bos=True, special=True)
    assert ids == [sp.bos_id()] + sp.encode("Hello world")


def test_spm_token_layout(spm_case):
    fields = read_fields(spm_case["gguf"])
    sp = spm_case["sp"]
    tokens, scores = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.scores"]
    types = fields["tokenizer.ggml.token_type"]
    n_rows = spm_case["config"].get("vocab_size", sp.get_piece_size())
    assert len(tokens) == len(scores) == len(types) == n_rows == spm_case["info"].n_tokens
    assert fields["tokenizer.ggml.model"] == "llama"
    assert bool(fields["tokenizer.ggml.add_space_prefix"]) is spm_case["prefix"]
    for i in range(sp.get_piece_size()):
        if sp.id_to_piece(i) in spm_case["controls"]:
            continue
        assert tokens[i] == sp.id_to_piece(i)
        assert scores[i] == pytest.approx(sp.get_score(i))
        expected = (2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1)
        assert types[i] == expected
    for text, i in spm_case["controls"].items():
        assert (tokens[i], types[i], scores[i]) == (text, 3, -1000.0)
    for i in range(sp.get_piece_size() + len(spm_case["controls"]), n_rows):
        assert (tokens[i], types[i]) == (f"[PAD{i}]", 5)
    assert spm_case["info"].special["bos"] == sp.bos_id() == fields["tokenizer.ggml.bos_token_id"]
    assert spm_case["info"].special["eos"] == sp.eos_id() == fields["tokenizer.ggml.eos_token_id"]
    assert spm_case["info"].special["unk"] == sp.unk_id()


def test_spm_unigram_is_refused(tmp_path):
    train_spm(tmp_path, model_type="unigram", vocab_size=800)
    with pytest.raises(UnsupportedError, match="unigram"):
        write_vocab_gguf(tmp_path, tmp_path / "x.gguf")


# --- SentencePiece-style tokenizer.json without tokenizer.model (transformers 5) ----------

@pytest.fixture(scope="module", params=[True, False], ids=["prefix", "no-prefix"])
def spm_json_case(request, tmp_path_factory):
    source = tmp_path_factory.mktemp("spm_source")
    sp = spm.SentencePieceProcessor(model_file=str(train_spm(source, add_dummy_prefix=request.param)))
    model_dir = tmp_path_factory.mktemp("spm_json")
    tok = spm_style_tokenizer_json(model_dir, sp, prefix=request.param, controls=SPM_CONTROLS)
    info = write_vocab_gguf(model_dir, model_dir / "v.gguf", config={"vocab_size": 1504})
    return {"sp": sp, "tok": tok, "info": info, "llm": load_vocab(model_dir / "v.gguf"),
            "prefix": request.param, "gguf": model_dir / "v.gguf"}


def hf_metaspace_differs(text: str, prefix: bool) -> bool:
    """Where HF's Metaspace(prepend_scheme="first") departs from SentencePiece: it adds no
    "▁" before text that already starts with a space, nor after a special token; llama.cpp
    (like SentencePiece) adds one in both places."""
    return prefix and (text.startswith(" ") or any(c in text for c in SPM_CONTROLS))


@pytest.mark.parametrize("index", range(len(STRINGS)))
def test_spm_json_llama_cpp_ids(spm_json_case, index):
    text, case = STRINGS[index], spm_json_case
    ours = case["llm"].tokenize(text.encode(), add_bos=False, special=True)
    # Always what SentencePiece itself gives (special tokens cut out first) ...
    assert ours == spm_reference(case["sp"], text, SPM_CONTROLS)
    # ... and what the tokenizer.json gives, except where HF's Metaspace departs from it.
    hf = case["tok"].encode(text, add_special_tokens=False).ids
    assert (ours == hf) is not hf_metaspace_differs(text, case["prefix"])


def test_spm_json_layout(spm_json_case):
    fields = read_fields(spm_json_case["gguf"])
    sp = spm_json_case["sp"]
    assert spm_json_case["info"].kind == "spm"
    assert fields["tokenizer.ggml.model"] == "llama"
    assert bool(fields["tokenizer.ggml.add_space_prefix"]) is spm_json_case["prefix"]
    types = fields["tokenizer.ggml.token_type"]
    assert [i for i, t in enumerate(types) if t == 6] == [i for i in range(sp.get_piece_size())
                                                         if sp.is_byte(i)]
    assert (types[0], types[1], types[1500], types[1503]) == (2, 3, 3, 5)


# --- special tokens and the chat template ------------------------------------------------

@pytest.fixture
def small_bpe_dir(tmp_path):
    train_bpe(tmp_path, [BYTE_LEVEL_REGEX], ignore_merges=False, vocab_size=400)
    return tmp_path


def test_tokenizer_model_wins_for_llama_and_json_for_gpt2_arch(small_bpe_dir):
    """Both files present: llama.cpp's Llama converter reads tokenizer.model first,
    its base converter (e.g. StarCoder2, GPT-2) tokenizer.json."""
    train_spm(small_bpe_dir, vocab_size=800)
    assert write_vocab_gguf(small_bpe_dir, small_bpe_dir / "a.gguf", arch="llama").kind == "spm"
    assert write_vocab_gguf(small_bpe_dir, small_bpe_dir / "b.gguf", arch="starcoder2").kind == "bpe"


def test_tiktoken_tokenizer_model_is_not_taken_for_sentencepiece(small_bpe_dir):
    # Some Llama 3 repos keep Meta's tiktoken ranks file under the name tokenizer.model.
    (small_bpe_dir / "tokenizer.model").write_text("IQ== 0\nIg== 1\n", encoding="utf-8")
    assert write_vocab_gguf(small_bpe_dir, small_bpe_dir / "a.gguf", arch="llama").kind == "bpe"


def chat_template_of(model_dir):
    write_vocab_gguf(model_dir, model_dir / "t.gguf")
    return read_fields(model_dir / "t.gguf").get("tokenizer.chat_template")


def test_chat_template_from_tokenizer_config(small_bpe_dir):
    write_json(small_bpe_dir / "tokenizer_config.json", {"chat_template": "{{ 'config' }}"})
    assert chat_template_of(small_bpe_dir) == "{{ 'config' }}"


def test_chat_template_from_jinja_file(small_bpe_dir):
    write_json(small_bpe_dir / "tokenizer_config.json", {"eos_token": "<|im_end|>"})
    (small_bpe_dir / "chat_template.jinja").write_text("{{ 'jinja' }}\n", encoding="utf-8")
    assert chat_template_of(small_bpe_dir) == "{{ 'jinja' }}\n"


def test_chat_template_jinja_without_tokenizer_config(small_bpe_dir):
    (small_bpe_dir / "chat_template.jinja").write_text("{{ 'alone' }}", encoding="utf-8")
    assert chat_template_of(small_bpe_dir) == "{{ 'alone' }}"


def test_chat_template_jinja_wins_over_config(small_bpe_dir):
    """transformers loads chat_template.jinja over a template left in the config."""
    write_json(small_bpe_dir / "tokenizer_config.json", {"chat_template": "{{ 'config' }}"})
    (small_bpe_dir / "chat_template.jinja").write_text("{{ 'jinja' }}", encoding="utf-8")
    assert chat_template_of(small_bpe_dir) == "{{ 'jinja' }}"


def test_special_ids_from_configs(small_bpe_dir):
    tok = Tokenizer.from_file(str(small_bpe_dir / "tokenizer.json"))
    im_end = tok.token_to_id("<|im_end|>")
    write_json(small_bpe_dir / "tokenizer_config.json", {"eos_token": "<|im_end|>"})
    write_json(small_bpe_dir / "config.json", {"bos_token_id": 0})
    write_json(small_bpe_dir / "generation_config.json", {"pad_token_id": [im_end - 1, 5]})
    info = write_vocab_gguf(small_bpe_dir, small_bpe_dir / "t.gguf")
    fields = read_fields(small_bpe_dir / "t.gguf")
    assert info.special == {"eos": im_end, "bos": 0, "pad": im_end - 1}
    assert fields["tokenizer.ggml.eos_token_id"] == im_end
    assert fields["tokenizer.ggml.padding_token_id"] == im_end - 1
    assert bool(fields["tokenizer.ggml.add_bos_token"]) is False


def test_missing_tokenizer_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no tokenizer.json or tokenizer.model"):
        write_vocab_gguf(tmp_path, tmp_path / "x.gguf")
