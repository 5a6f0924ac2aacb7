"""Pre-tokenizer names derived from tokenizer.json structure.

REAL_CHAINS are pre_tokenizer chains as published tokenizer.json files spell them (the
model named beside each), with the name llama.cpp's own converter gives that model (its
hash table in convert_hf_to_gguf.py). Each chain must derive to that name, and a BPE
trained with the chain must tokenize the same in llama.cpp as in HF tokenizers.
"""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer

from qconvert.errors import InputError, UnsupportedError
from qconvert.source import pretokenizer_table as table
from qconvert.source.pretokenizer import canonical, chain_of, choose_pre, derive_pre
from tokenizer_builders import (
    BYTE_LEVEL, BYTE_LEVEL_REGEX, STRINGS, digits, load_vocab, split, train_bpe, write_json,
    write_vocab_gguf,
)

C = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
LLAMA3 = C + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2 = C + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN35 = (C + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+"
          r"|\s+(?!\S)|\s+")
UP, LO = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]", r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"
O200K = (rf"[^\r\n\p{{L}}\p{{N}}]?{UP}*{LO}+{C}?|[^\r\n\p{{L}}\p{{N}}]?{UP}+{LO}*{C}?|\p{{N}}{{1,3}}"
         r"| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
TEKKEN = (rf"[^\r\n\p{{L}}\p{{N}}]?{UP}*{LO}+|[^\r\n\p{{L}}\p{{N}}]?{UP}+{LO}*|\p{{N}}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# DeepSeek's files carry literal CR/LF characters inside some regexes.
DS_CJK = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
DS_KANA = "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"
DS3_WORDS = ("[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?"
             "[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+")
DS_PUNCT = "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+"

# name: (chain, model.ignore_merges, clean_up_tokenization_spaces, example model)
REAL_CHAINS = {
    "llama-bpe": ([split(LLAMA3), BYTE_LEVEL], True, True, "meta-llama/Llama-3.2-1B-Instruct"),
    "dbrx": ([split(LLAMA3, "Removed", True), BYTE_LEVEL], False, True, "ibm-granite/granite-4.1-3b"),
    "qwen2": ([split(QWEN2), BYTE_LEVEL], False, False, "Qwen/Qwen3-0.6B"),
    "stablelm2": ([split(QWEN2), BYTE_LEVEL], False, True, "stabilityai/stablelm-2-1_6b"),
    "qwen35": ([split(QWEN35), BYTE_LEVEL], False, False, "Qwen/Qwen3.5-9B"),
    "gpt-2": ([BYTE_LEVEL_REGEX], False, True, "openai-community/gpt2"),
    "smollm": ([digits(True), BYTE_LEVEL_REGEX], False, False, "HuggingFaceTB/SmolLM2-135M"),
    "starcoder": ([digits(True), BYTE_LEVEL_REGEX], False, True, "bigcode/starcoder2-3b"),
    "deepseek-llm": ([split("[\r\n]"), split(table._DS_LETTERS), split(DS_PUNCT), split(r"\s+$"),
                      split(DS_CJK), digits(True), BYTE_LEVEL], False, False,
                     "deepseek-ai/DeepSeek-Coder-V2-Lite-Instruct"),
    "deepseek-coder": ([split("[\r\n]"), split(r"\s?\p{L}+"), split(r"\s?\p{P}+"), split(DS_CJK),
                        digits(True), BYTE_LEVEL], False, False,
                       "deepseek-ai/deepseek-coder-6.7b-instruct"),
    "deepseek-v3": ([split(r"\p{N}{1,3}"), split(DS_KANA), split(DS3_WORDS), BYTE_LEVEL], False,
                    False, "deepseek-ai/DeepSeek-V3"),
    "falcon": ([{"type": "Punctuation", "behavior": "Contiguous"}, BYTE_LEVEL_REGEX, digits(False),
                split("[0-9][0-9][0-9]")], False, True, "tiiuae/falcon-7b"),
    "tekken": ([split(TEKKEN), BYTE_LEVEL], True, False, "mistralai/Mistral-Nemo-Base-2407"),
    "gpt-4o": ([split(O200K, "Removed", True), BYTE_LEVEL], False, False, "openai/gpt-oss-20b"),
    "minicpm5": ([split(r"\p{N}{1,3}"), split(QWEN2.replace(r"|\p{N}|", r"|\p{N}+|")), BYTE_LEVEL],
                 True, True, "openbmb/MiniCPM5-1B"),
    "bloom": ([split(" ?[^(\\s|[.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c])]+"), BYTE_LEVEL],
              False, True, "bigscience/bloom-560m"),
    "bailingmoe": ([split(r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++"
                          r"[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"), BYTE_LEVEL], False, False,
                   "inclusionAI/Ling-lite"),
    "seed-coder": ([split(C + "|[^\r\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1}| ?[^\\s\\p{L}\\p{N}\r\n]+"
                              "|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"), BYTE_LEVEL], False, False,
                   "ByteDance-Seed/Seed-Coder-8B-Base"),
    "tiny_aya": ([split(r"\d{1,3}(?=(?:\d{3})*\b)"), split(O200K), BYTE_LEVEL], False, False,
                 "CohereLabs/tiny-aya-base"),
}


def tokenizer_json(chain, ignore_merges=False) -> dict:
    return {"pre_tokenizer": {"type": "Sequence", "pretokenizers": chain},
            "model": {"type": "BPE", "ignore_merges": ignore_merges, "vocab": {}, "merges": []}}


@pytest.mark.parametrize("name", list(REAL_CHAINS))
def test_real_chain_derives_llama_cpp_name(name):
    chain, ignore_merges, clean, _model = REAL_CHAINS[name]
    spec = tokenizer_json(chain, ignore_merges)
    assert derive_pre(spec, {"clean_up_tokenization_spaces": clean}) == name


def test_bare_byte_level_is_gpt2():
    spec = {"pre_tokenizer": BYTE_LEVEL_REGEX, "model": {"type": "BPE"}}
    assert derive_pre(spec, {}) == "gpt-2"


def test_flags_break_ties_and_table_order_decides_without_them():
    same = tokenizer_json([digits(True), BYTE_LEVEL_REGEX])
    assert derive_pre(same, {"clean_up_tokenization_spaces": False}) == "smollm"
    assert derive_pre(same, {"clean_up_tokenization_spaces": True}) == "starcoder"
    assert derive_pre(same, {}) == "smollm"  # first in the table
    llama3 = tokenizer_json([split(LLAMA3), BYTE_LEVEL], ignore_merges=False)
    assert derive_pre(llama3, {"clean_up_tokenization_spaces": True}) == "dbrx"


def test_every_table_entry_is_reachable_from_its_own_regexes():
    for name, entry in table.KNOWN_PRETOKENIZERS.items():
        spec = tokenizer_json([split(r) for r in entry["regex"]], bool(entry["ignore_merges"]))
        config = {"clean_up_tokenization_spaces": entry["clean_spaces"]}
        assert derive_pre(spec, config) == name


def test_canonical_spellings():
    # (?i:...) groups become llama.cpp's explicit case classes, inside classes too.
    assert canonical("(?i:'s|'ll)x") == "(?:'[sS]|'[lL][lL])x"
    assert canonical("'(?i:[sdmt]|ve)") == "'(?:[sSdDmMtT]|[vV][eE])"
    # \p{..} names are not letters to expand.
    assert canonical(r"(?i:\p{L}a)") == r"(?:\p{L}[aA])"
    # Possessive quantifiers run as greedy ones; a '+' inside a class is a character.
    assert canonical(r"a?+b++[*+]+") == r"a?b+[*+]+"
    # Literal control characters and their escapes are the same regex.
    assert canonical("[\r\n]") == canonical(r"[\r\n]")
    # llama.cpp's lookahead letters equal HF's \p{Lu}-style classes.
    assert canonical(table.TEKKEN) == canonical(TEKKEN)
    # A trailing catch-all whitespace run after \s+(?!\S) is dropped on both sides.
    assert canonical(table.GPT2 + r"|\s+") == canonical(table.GPT2)


def test_removed_inverted_split_of_a_partial_regex_is_not_equated():
    # Without the final \s+ some text falls between matches and would be dropped by HF.
    chain = chain_of(split(r"\p{N}{1,3}", "Removed", True))
    assert chain[0].startswith("<Split Removed")


def test_unknown_regex_names_the_override():
    spec = tokenizer_json([split(r"[a-z]+|\d"), BYTE_LEVEL])
    with pytest.raises(UnsupportedError) as err:
        derive_pre(spec, {}, source="model/tokenizer.json")
    message = str(err.value)
    assert "--vocab-pre" in message and r"[a-z]+|\d" in message
    assert "model/tokenizer.json" in message and "llama-bpe" in message


def test_other_pre_tokenizer_steps_are_named_in_the_error():
    spec = tokenizer_json([{"type": "Metaspace", "replacement": "\u2581"}])
    with pytest.raises(UnsupportedError, match="Metaspace"):
        derive_pre(spec, {})
    spec = tokenizer_json([dict(BYTE_LEVEL_REGEX, add_prefix_space=True)])
    with pytest.raises(UnsupportedError, match="add_prefix_space"):
        derive_pre(spec, {})


def test_override_wins_and_is_checked():
    unknown = tokenizer_json([split(r"[a-z]+")])
    assert choose_pre(unknown, {}, "qwen2") == "qwen2"
    known = tokenizer_json([split(LLAMA3), BYTE_LEVEL], ignore_merges=True)
    assert choose_pre(known, {}, "smaug-bpe") == "smaug-bpe"
    with pytest.raises(InputError, match="not a pre-tokenizer llama.cpp knows"):
        choose_pre(known, {}, "llama-3")


def test_override_reaches_the_gguf(tmp_path):
    train_bpe(tmp_path, [split(r"[a-z]+"), BYTE_LEVEL], ignore_merges=False, vocab_size=300)
    with pytest.raises(UnsupportedError):
        write_vocab_gguf(tmp_path, tmp_path / "a.gguf")
    info = write_vocab_gguf(tmp_path, tmp_path / "b.gguf", vocab_pre="gpt-2")
    assert info.pre == "gpt-2"


# Strings llama.cpp and HF are known to split differently for one chain (see the test).
KNOWN_DISAGREEMENTS = {
    # tiny_aya's "\d{1,3}(?=(?:\d{3})*\b)": llama.cpp's \b is ASCII-only, so it finds a word
    # boundary between "1" and "天" where Unicode-aware HF regexes see none.
    "tiny_aya": {"我想在apple工作1314151天"},
}


@pytest.mark.parametrize("name", list(REAL_CHAINS))
def test_trained_chain_tokenizes_alike_in_llama_cpp(name, tmp_path):
    chain, ignore_merges, clean, _model = REAL_CHAINS[name]
    tok = train_bpe(tmp_path, chain, ignore_merges=ignore_merges, vocab_size=1000)
    write_json(tmp_path / "tokenizer_config.json", {"clean_up_tokenization_spaces": clean})
    info = write_vocab_gguf(tmp_path, tmp_path / "v.gguf", config={"vocab_size": tok.get_vocab_size() + 5},
                            arch="gpt2")
    assert info.pre == name
    llm = load_vocab(tmp_path / "v.gguf")
    tok = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    differ = [text for text in STRINGS
              if llm.tokenize(text.encode(), add_bos=False, special=True)
              != tok.encode(text, add_special_tokens=False).ids]
    assert set(differ) == KNOWN_DISAGREEMENTS.get(name, set())


def test_real_chain_json_round_trips_through_tokenizers():
    """The chains above are valid tokenizer.json (HF tokenizers accepts each of them)."""
    for chain, *_ in REAL_CHAINS.values():
        spec = {"version": "1.0", "added_tokens": [], "normalizer": None, "post_processor": None,
                "decoder": None, "pre_tokenizer": {"type": "Sequence", "pretokenizers": chain},
                "model": {"type": "BPE", "vocab": {}, "merges": []}}
        Tokenizer.from_str(json.dumps(spec))
