"""The tokenizer transformers 5 actually builds for a model directory, as data.

transformers 5 does not always run tokenizer.json as written. When the class it picks
(tokenizer_config.json `tokenizer_class`, weighed against config.json `model_type`) has
its own constructor, the class rebuilds the pipeline itself and takes only the vocabulary,
the merges and the post-processor from tokenizer.json: a Qwen2Tokenizer splits with the
Qwen2 regex even when its tokenizer.json says plain ByteLevel, a GPT2Tokenizer drops a
Digits step the file has, a BertTokenizer lower-cases unless tokenizer_config.json says
`do_lower_case: false`, whatever the file's BertNormalizer says. llama.cpp must tokenize
as transformers does, so the pre-tokenizer name (and the WordPiece normaliser flags) are
derived from what the class builds, not from the file. The same holds for SentencePiece
vocabularies: a LlamaTokenizer puts a "▁" before the text unless tokenizer_config.json says
`add_prefix_space: false`, whatever the file's Metaspace says; a GemmaTokenizer never does.

`REBUILT_PRE` holds the pre-tokenizer each byte-level BPE class builds (facts read from
transformers 5's tokenization_*.py; tests/test_tokenizer_class.py checks every entry
against the installed transformers). `effective_class` mirrors AutoTokenizer's choice of
class for a local directory without remote code; tests check it on a matrix of
model_type x tokenizer_class against AutoTokenizer itself.
"""

from __future__ import annotations

import copy

QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN35_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
                r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _byte_level(add_prefix_space: bool, use_regex: bool = True) -> dict:
    return {"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": True,
            "use_regex": use_regex}


def _split_then_bytes(regex: str):
    def build(add_prefix_space: bool) -> dict:
        return {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
            _byte_level(add_prefix_space, use_regex=False)]}
    return build


def _digits_then_bytes(add_prefix_space: bool) -> dict:
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, _byte_level(add_prefix_space)]}


# class -> the pre_tokenizer it builds, given tokenizer_config's add_prefix_space (each
# class's default is False). Each also builds its BPE model without ignore_merges.
REBUILT_PRE = {
    "GPT2Tokenizer": _byte_level,
    "CodeGenTokenizer": _byte_level,
    "RobertaTokenizer": _byte_level,
    "GPTNeoXTokenizer": _byte_level,
    "CohereTokenizer": _digits_then_bytes,
    "Qwen2Tokenizer": _split_then_bytes(QWEN2_SPLIT),
    "Qwen3_5Tokenizer": _split_then_bytes(QWEN35_SPLIT),
}
# WordPiece classes whose constructor builds the BertNormalizer from tokenizer_config.json
REBUILT_WORDPIECE = frozenset({"BertTokenizer", "DistilBertTokenizer"})
# Unigram classes whose constructor builds WhitespaceSplit + Metaspace (add_prefix_space from
# tokenizer_config.json) around the file's precompiled character map
REBUILT_UNIGRAM = frozenset({"XLMRobertaTokenizer"})

# transformers' registered class per config model_type (TOKENIZER_MAPPING_NAMES), for the
# model types qconvert converts; "TokenizersBackend" means tokenizer.json as written
GENERIC = "TokenizersBackend"
REGISTERED = {
    "qwen2": "Qwen2Tokenizer", "qwen3": "Qwen2Tokenizer", "qwen2_moe": "Qwen2Tokenizer",
    "qwen3_moe": "Qwen2Tokenizer", "qwen3_5": "Qwen3_5Tokenizer", "qwen3_5_moe": "Qwen3_5Tokenizer",
    "gpt2": "GPT2Tokenizer", "olmo": "GPTNeoXTokenizer", "cohere": "CohereTokenizer",
    "cohere2": "CohereTokenizer", "gemma": "GemmaTokenizer", "gemma2": "GemmaTokenizer",
    "gemma3": "GemmaTokenizer", "gemma3_text": "GemmaTokenizer",
    "bert": "BertTokenizer", "distilbert": "BertTokenizer", "roberta": "RobertaTokenizer",
    "xlm-roberta": "XLMRobertaTokenizer",
    "mistral": GENERIC, "mixtral": GENERIC, "mistral3": GENERIC, "phi3": GENERIC, "phimoe": GENERIC,
    "granite": GENERIC, "granitemoe": GENERIC, "olmo2": GENERIC, "glm": GENERIC, "glm4": GENERIC,
    "modernbert": GENERIC, "phi": "GPT2Tokenizer", "starcoder2": "GPT2Tokenizer", "olmoe": "GPTNeoXTokenizer",
    "qwen3_next": "Qwen2Tokenizer", "ernie4_5": GENERIC, "olmo3": GENERIC, "ministral": GENERIC,
    "ministral3": GENERIC, "glm4_moe": GENERIC, "granitemoehybrid": GENERIC,
}
# model types whose Hub tokenizer_class transformers overrides with the registered class
# (MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS), of those above
HUB_CLASS_OVERRIDDEN = frozenset({"qwen2", "qwen3_5", "qwen3_5_moe", "phi3", "phimoe", "modernbert", "ernie4_5"})
_NOT_SPECIALISED = frozenset({GENERIC, "PythonBackend", "PreTrainedTokenizerFast", "MistralCommonBackend"})


def _has_byte_level(tokenizer_json: dict | None) -> bool:
    from .bpe_vocab import is_byte_level

    return tokenizer_json is not None and is_byte_level(tokenizer_json)


def effective_class(config: dict, tokenizer_config: dict, tokenizer_json: dict | None) -> str:
    """The class name AutoTokenizer instantiates for this directory ("TokenizersBackend"
    when it runs tokenizer.json as written)."""
    if tokenizer_config.get("auto_map") is not None:
        return GENERIC  # remote code: not ours to guess; the file is the best account
    model_type = config.get("model_type")
    model_type = model_type if isinstance(model_type, str) else None  # a damaged config: no type
    hub = tokenizer_config.get("tokenizer_class") or config.get("tokenizer_class")
    hub = hub.removesuffix("Fast") if isinstance(hub, str) else None
    registered = REGISTERED.get(model_type)
    if hub == "LlamaTokenizer" and registered != "MistralCommonBackend" \
            and model_type not in HUB_CLASS_OVERRIDDEN and _has_byte_level(tokenizer_json):
        return GENERIC  # a Llama 3-style repo that still declares LlamaTokenizer
    if hub is not None and registered is not None and registered != hub:
        if registered in _NOT_SPECIALISED:
            return GENERIC
        chosen = registered if model_type in HUB_CLASS_OVERRIDDEN else hub
        return GENERIC if chosen in _NOT_SPECIALISED else chosen
    if hub is not None:
        return GENERIC if hub in _NOT_SPECIALISED else hub
    return registered or GENERIC


def as_transformers_runs(tokenizer_json: dict, tokenizer_config: dict, config: dict) -> tuple[dict, str | None]:
    """(tokenizer.json with the pre-tokenizer transformers 5 really runs, the rebuilding
    class's name or None when the file is run as written). Only byte-level BPE pipelines
    are replaced here; the vocabulary and merges are the file's either way."""
    cls = effective_class(config, tokenizer_config, tokenizer_json)
    build = REBUILT_PRE.get(cls)
    if build is None:
        return tokenizer_json, None
    out = copy.copy(tokenizer_json)
    out["pre_tokenizer"] = build(bool(tokenizer_config.get("add_prefix_space") or False))
    out["model"] = dict(tokenizer_json.get("model") or {}, ignore_merges=False)
    return out, cls


def space_prefix(config: dict, tokenizer_config: dict, tokenizer_json: dict | None) -> bool | None:
    """Whether transformers' tokenizer puts "▁" before a SentencePiece-style text, when the
    class decides it (None: the files decide)."""
    cls = effective_class(config, tokenizer_config, tokenizer_json)
    if cls == "LlamaTokenizer":
        flag = tokenizer_config.get("add_prefix_space")
        return flag if isinstance(flag, bool) else True
    if cls == "GemmaTokenizer":
        return False  # spaces become "▁" by a Replace normaliser; nothing is prepended
    return None
