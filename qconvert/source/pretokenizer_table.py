"""The pre-tokenizers llama.cpp knows, as data.

llama.cpp does not read a tokenizer's split regexes from the GGUF file: it reads a name
(`tokenizer.ggml.pre`) and looks the regexes up in its own table (`regex_exprs` in
src/llama-vocab.cpp, one list per LLAMA_VOCAB_PRE_TYPE). So a converter has to name the
pre-tokenizer whose llama.cpp regexes do what the Hugging Face tokenizer.json does.

Each entry of KNOWN_PRETOKENIZERS holds:
  regex   the llama.cpp `regex_exprs` list for that name, applied in order, each match and
          each gap between matches becoming a piece (HF's Split behavior "Isolated");
  also    other chains that HF tokenizer.json files spell for the same behaviour, where
          llama.cpp's list is a simplification of theirs (falcon's redundant digit run,
          bloom's nested class, deepseek-llm's single digits);
  flags   loader settings llama.cpp ties to the name: ignore_merges (a word already in the
          vocab is taken whole, HF `model.ignore_merges`) and clean_spaces (detokenizer drops
          the space before punctuation, HF `clean_up_tokenization_spaces`). They break ties
          between names that share the same regexes (qwen2/stablelm2, smollm/starcoder,
          llama-bpe/dbrx).

Entry order is the tie-break of last resort: the most common model family first.
The regex strings are llama.cpp's (facts from src/llama-vocab.cpp), written with escaped
\\r and \\n; pretokenizer.py canonicalises both sides before comparing.
"""

# The GPT-2 regex. HF's ByteLevel(use_regex=true) uses this plus a final "|\s+";
# llama.cpp drops that alternative because its splitter keeps unmatched text anyway.
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"

# Llama 3 / cl100k. llama.cpp spells HF's "(?i:'s|...)" with explicit case classes.
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
LLAMA3 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen 2 / 2.5 / 3: the Llama 3 regex with single digits.
QWEN2 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
         r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen 3.5: combining marks stay with their letters.
QWEN35 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
MINICPM5 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*"
            r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SEED_CODER = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
BAILINGMOE = (r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
              r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+")

# Upper-then-lower letter runs (Mistral Nemo's tekken, o200k). llama.cpp cannot use
# \p{Lu}-style classes in its std::regex fallback, so it spells "an upper-case-ish letter"
# as a lookahead for a letter that is not a-z; pretokenizer.py maps both spellings together.
_UPPER = r"((?=[\p{L}])([^a-z]))"
_LOWER = r"((?=[\p{L}])([^A-Z]))"
TEKKEN = (r"[^\r\n\p{L}\p{N}]?" + _UPPER + "*" + _LOWER + "+|[^\\r\\n\\p{L}\\p{N}]?" + _UPPER + "+"
          + _LOWER + r"*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
GPT4O = (r"[^\r\n\p{L}\p{N}]?" + _UPPER + "*" + _LOWER + "+" + _CONTRACTIONS
         + r"?|[^\r\n\p{L}\p{N}]?" + _UPPER + "+" + _LOWER + "*" + _CONTRACTIONS
         + r"?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
TINY_AYA_WORDS = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
                  + _CONTRACTIONS + r"?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+"
                  r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]*" + _CONTRACTIONS
                  + r"?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# HF's Punctuation pre-tokenizer: Unicode punctuation plus the ASCII symbols Rust's
# is_ascii_punctuation also counts ($ + < = > ^ ` | ~).
PUNCT_RUN = r"[\p{P}\$\+<=>\^~\|`]+"

# DeepSeek LLM / Coder classes (letters of cased scripts, ASCII + full-width punctuation, CJK).
_DS_LETTERS = (
    "\\s?[A-Za-z\xb5\xc0-\xd6\xd8-\xf6\xf8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af"
    "\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1"
    "\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5"
    "\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a"
    "\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d"
    "\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3"
    "\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115"
    "\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f"
    "\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3"
    "\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf"
    "\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f"
    "\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2"
    "\U000118a0-\U000118df\U0001e900-\U0001e943]+"
)
_DS_PUNCT = "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+"
_DS_CJK = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
_DS3_KANA = "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"
_DS3_WORDS = (r'[!"#$%&' + r"'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
              r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

KNOWN_PRETOKENIZERS: dict[str, dict] = {
    "llama-bpe": {"regex": (LLAMA3,), "ignore_merges": True, "clean_spaces": True},
    "qwen2": {"regex": (QWEN2,), "ignore_merges": False, "clean_spaces": False},
    "gpt-2": {"regex": (GPT2,), "ignore_merges": False, "clean_spaces": True},
    "smollm": {"regex": (r"\p{N}", GPT2), "ignore_merges": False, "clean_spaces": False},
    "starcoder": {"regex": (r"\p{N}", GPT2), "ignore_merges": False, "clean_spaces": True},
    "qwen35": {"regex": (QWEN35,), "ignore_merges": False, "clean_spaces": False},
    "stablelm2": {"regex": (QWEN2,), "ignore_merges": False, "clean_spaces": True},
    "dbrx": {"regex": (LLAMA3,), "ignore_merges": False, "clean_spaces": True},
    "tekken": {"regex": (TEKKEN,), "ignore_merges": True, "clean_spaces": False},
    "gpt-4o": {"regex": (GPT4O,), "ignore_merges": None, "clean_spaces": False},
    "deepseek-llm": {
        "regex": (r"[\r\n]", _DS_LETTERS, _DS_PUNCT, r"\s+$", _DS_CJK, r"\p{N}+"),
        # DeepSeek's tokenizer.json files end the chain with Digits(individual_digits=true);
        # their vocabularies hold no multi-digit tokens, so llama.cpp's \p{N}+ tokenizes alike.
        "also": ((r"[\r\n]", _DS_LETTERS, _DS_PUNCT, r"\s+$", _DS_CJK, r"\p{N}"),),
        "ignore_merges": False, "clean_spaces": False,
    },
    "deepseek-coder": {
        "regex": (r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _DS_CJK, r"\p{N}"),
        "ignore_merges": False, "clean_spaces": False,
    },
    "deepseek-v3": {
        "regex": (r"\p{N}{1,3}", _DS3_KANA, _DS3_WORDS),
        "ignore_merges": False, "clean_spaces": False,
    },
    "falcon": {
        "regex": (PUNCT_RUN, GPT2, r"[0-9][0-9][0-9]"),
        # tiiuae/falcon-7b: Punctuation(Contiguous) > ByteLevel > Digits(runs) > Split(3 digits);
        # the digit-run step only re-splits what the GPT-2 regex already isolated.
        "also": ((PUNCT_RUN, GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"),),
        "ignore_merges": False, "clean_spaces": True,
    },
    "bloom": {
        "regex": (" ?[^(\\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+",),
        # HF nests the punctuation in a second class; the set of characters is the same.
        "also": ((" ?[^(\\s|[.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c])]+",),),
        "ignore_merges": False, "clean_spaces": True,
    },
    "minicpm5": {"regex": (r"\p{N}{1,3}", MINICPM5), "ignore_merges": True, "clean_spaces": True},
    "seed-coder": {"regex": (SEED_CODER,), "ignore_merges": False, "clean_spaces": False},
    "bailingmoe": {"regex": (BAILINGMOE,), "ignore_merges": False, "clean_spaces": False},
    "tiny_aya": {
        "regex": (r"\d{1,3}(?=(?:\d{3})*\b)", TINY_AYA_WORDS),
        "ignore_merges": False, "clean_spaces": False,
    },
}

# Every name llama.cpp's vocab loader accepts for a BPE vocabulary (src/llama-vocab.cpp).
# An override (--vocab-pre) outside this set would make llama.cpp refuse the file.
LLAMA_CPP_PRE_NAMES = frozenset({
    "default", "minicpm5", "llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1",
    "pixtral", "midm-2.0", "lfm2", "jina-v5-nano", "deepseek-llm", "deepseek-coder",
    "deepseek-v3", "spark2_5", "youtu", "falcon", "mpt", "starcoder", "gpt-2", "phi-2",
    "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0", "mellum",
    "modern-bert", "jais-2", "gemma4", "granite-embed-multi-311m", "sarvam-moe",
    "jina-v1-en", "jina-v2-code", "roberta-bpe", "whitespace", "refact", "command-r",
    "qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "qwen35", "stablelm2", "olmo", "dbrx",
    "smaug-bpe", "poro-chat", "chatglm-bpe", "glm4", "glm5", "viking", "jais", "tekken",
    "smollm", "codeshell", "bloom", "gpt3-finnish", "exaone", "exaone4", "exaone-moe",
    "chameleon", "minerva-7b", "megrez", "gpt-4o", "llama4", "kanana2", "talkie",
    "granite-embed-multi-97m", "tiny_aya", "cohere2moe", "superbpe", "trillion",
    "granite-docling", "bailingmoe", "bailingmoe2", "llada-moe", "seed-coder", "hunyuan",
    "hunyuan-dense", "hy_v4", "joyai-llm", "kimi-k2", "ufakzeka", "grok-2", "afmoe",
    "laguna", "minimax-m2", "solar-open", "mellum2",
})
