"""Sentence-embedding models: llama.cpp's embeddings of our GGUF equal sentence-transformers'.

Fixtures (fixtures/embedding_models.py) are tiny seeded BERT, DistilBERT, RoBERTa,
XLM-RoBERTa and ModernBERT checkpoints, bf16 and sharded, with the sentence-transformers
files (modules.json, the Pooling config, Normalize). The reference is sentence-transformers
itself loading the directory in float32 (`SentenceTransformer.encode`, pooling as the config
says, unnormalised); llama.cpp pools by the GGUF's pooling type. Measured minimum cosines
over the eight texts (minilm / bge / msmarco / e5multi / roberta / modernbert): F32 and F16
1.000000 (to six places) for all six; Q8_0 0.999888 / 0.999945 / 0.999952 / 0.999952 /
0.999942 / 0.999452 (Q4_K_M, not tested: 0.99598 / 0.99817 / 0.99872 / 0.99723 / 0.99868 /
0.99271). The threshold 0.999 is far above what a conversion mistake scores: the right GGUF
pooled the wrong way (CLS instead of the configured mean) scores below 0.95 (test below);
ModernBERT with its window ignored, 0.767-0.916.
"""

from __future__ import annotations

import json
import os
import shutil

import gguf
import numpy as np
import pytest

import qconvert
from qconvert.errors import UnsupportedError
from qconvert.eval.llama_model import open_llama
from fixtures.embedding_models import SPECS, build
from tokenizer_builders import STRINGS

TEXTS = [
    "Hello world",
    "The return statement leaves the current function call with the expression list.",
    "Café naïve résumé Ångström façade",
    "我想在apple工作1314151天",
    "e-mail: someone@example.com; (see §3.2) 42 3.14159",
    "unknownwordzzqx blorfington xylophonist",
    "Привет, мир! Ελληνικά — «quotes»",
    "A longer passage: " + " ".join(f"word{i} and, more; text" for i in range(8)),  # < 128 tokens
]
MIN_COSINE = 0.999
TYPES = ("F32", "F16", "Q8_0")
# more strings for tokenization agreement: accents, cases, CJK, punctuation and symbols,
# unknown words, control and zero-width characters, full-width forms, special tokens in text
TOKEN_STRINGS = STRINGS + [
    "Café naïve résumé Ångström façade", "ÉCOLE Über STRASSE straße", "我想在apple工作1314151天，你好！",
    "don't stop—it's 3.14 (approx.) [sic] {x} <y> a/b\\c", "unknownwordzzqx blorfington xylophonist",
    "tab\there\x00null\x07bell\u200bzero-width", "ﬁ ligature ² superscript ① circled", "$100 + 50% = ~^`|",
    "the [MASK] token [SEP] inside", "naïve ñ ç ø æ œ ß", "a\u0301 e\u0300 combining", "\u00a0nbsp\u2003emspace",
    "ＡＢＣ full-width １２３", "e-mail: someone@example.com", "日本語のテキスト",
]
# where llama.cpp's WordPiece tokenizer itself differs from transformers (not the conversion):
# - a word over 100 characters: HF's WordPiece gives [UNK] (max_input_chars_per_word), llama.cpp
#   splits it into pieces;
# - Hangul with accent stripping (uncased BERT): llama.cpp's NFD keeps only the leading jamo of
#   each syllable, HF keeps all three.
LONG_WORD = "supercalifragilistic" * 6


def known_different(name: str, strings: list[str]) -> set[str]:
    if SPECS[name].config_cls not in ("BertConfig", "DistilBertConfig"):  # WordPiece models only
        return set()
    hangul = SPECS[name].lowercase  # accents stripped with lower-casing
    return {t for t in strings if LONG_WORD in t or (hangul and any("\uac00" <= c <= "\ud7a3" for c in t))}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("embedding_models")
    made: dict[str, object] = {}

    def get(name: str):
        if name not in made:
            made[name] = build(name, root / name)
        return made[name]

    return get


@pytest.fixture(scope="module")
def reference(models):
    """name -> sentence-transformers' embeddings of TEXTS (float32 compute, unnormalised)."""
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(2)
    done: dict[str, np.ndarray] = {}

    def get(name: str) -> np.ndarray:
        if name not in done:
            st = SentenceTransformer(str(models(name)), device="cpu", model_kwargs={"dtype": torch.float32})
            done[name] = st.encode(TEXTS, normalize_embeddings=False, convert_to_numpy=True).astype(np.float64)
        return done[name]

    return get


@pytest.fixture(scope="module")
def converted(models, tmp_path_factory):
    out = tmp_path_factory.mktemp("embedding_gguf")
    done: dict[tuple[str, str], object] = {}

    def get(name: str, type_name: str):
        if (name, type_name) not in done:
            path = out / f"{name}-{type_name}.gguf"
            qconvert.quantize(models(name), path, type=type_name)
            done[name, type_name] = path
        return done[name, type_name]

    return get


def llama_embeddings(path, **kwargs) -> np.ndarray:
    llm = open_llama(path, embedding=True, n_ctx=256, n_batch=256, n_ubatch=256, n_threads=2, **kwargs)
    try:
        return np.array([llm.embed(text, normalize=False) for text in TEXTS], dtype=np.float64)
    finally:
        llm.close()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("name", list(SPECS))
def test_llama_cpp_embeddings_match_sentence_transformers(name, type_name, converted, reference):
    ours = llama_embeddings(converted(name, type_name))
    ref = reference(name)
    assert ours.shape == ref.shape
    cos = cosines(ours, ref)
    assert cos.min() >= MIN_COSINE, f"{name} {type_name}: cosines {np.round(cos, 6)}"
    # the texts' embeddings differ from each other (mean pooling leaves a large common part:
    # 0.91-0.97 between texts), so an embedding that ignored the text would fail
    assert cosines(ref, np.roll(ref, 1, axis=0)).max() < 0.99


def test_wrong_pooling_is_caught(converted, reference):
    """The same GGUF pooled by CLS instead of the configured mean: the test above would fail."""
    import llama_cpp

    ours = llama_embeddings(converted("minilm", "F32"), pooling_type=llama_cpp.LLAMA_POOLING_TYPE_CLS)
    assert cosines(ours, reference("minilm")).min() < 0.95


def read(path) -> dict:
    r = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in r.fields.items()}


@pytest.mark.parametrize("name,arch,pooling,lower", [
    ("minilm", "bert", gguf.PoolingType.MEAN, True),
    ("bge", "bert", gguf.PoolingType.CLS, False),
    ("msmarco", "bert", gguf.PoolingType.MEAN, True),
    ("modernbert", "modern-bert", gguf.PoolingType.LAST, None),
    ("e5multi", "bert", gguf.PoolingType.MEAN, None),
    ("roberta", "bert", gguf.PoolingType.CLS, None),
])
def test_metadata(name, arch, pooling, lower, converted):
    kv = read(converted(name, "F32"))
    assert kv["general.architecture"] == arch
    assert kv[f"{arch}.pooling_type"] == pooling.value
    assert kv[f"{arch}.attention.causal"] is False
    if name == "e5multi":
        assert kv["tokenizer.ggml.model"] == "t5"
        assert kv["tokenizer.ggml.add_space_prefix"] is True
        assert kv["tokenizer.ggml.remove_extra_whitespaces"] is True
        assert len(kv["tokenizer.ggml.precompiled_charsmap"]) > 100_000  # SentencePiece's NFKC map
        # positions from pad_token_id + 1 = 2: two of the 130 rows dropped
        assert kv["bert.context_length"] == 128
        tokens = kv["tokenizer.ggml.tokens"]
        assert tokens[kv["tokenizer.ggml.bos_token_id"]] == "<s>" and tokens[kv["tokenizer.ggml.eos_token_id"]] == "</s>"
    elif name == "roberta":
        assert kv["tokenizer.ggml.model"] == "gpt2" and kv["tokenizer.ggml.pre"] == "gpt-2"
        assert kv["bert.context_length"] == 128
        assert kv["tokenizer.ggml.add_bos_token"] is True and kv["tokenizer.ggml.add_eos_token"] is True
    elif arch == "bert":
        assert kv["tokenizer.ggml.model"] == "bert"
        assert kv["tokenizer.ggml.normalizer.lowercase"] is lower
        assert kv["tokenizer.ggml.normalizer.strip_accents"] is lower  # BertNormalizer: follows lowercase
        assert kv["tokenizer.ggml.token_type_count"] == (1 if name == "msmarco" else 2)  # DistilBERT: none
        tokens = kv["tokenizer.ggml.tokens"]
        assert tokens[kv["tokenizer.ggml.bos_token_id"]] == "[CLS]"
        assert tokens[kv["tokenizer.ggml.seperator_token_id"]] == "[SEP]"
        assert any(t.startswith("\u2581") for t in tokens) and not any(t.startswith("##") for t in tokens)
    else:
        assert kv["tokenizer.ggml.pre"] == "modern-bert"  # llama.cpp's name for its GPT-2 split
        assert kv["modern-bert.attention.sliding_window"] == 8
        assert kv["modern-bert.rope.freq_base"] == 160000.0
        assert kv["modern-bert.rope.freq_base_swa"] == 10000.0
        # layers 0 and 3 global: llama.cpp's default period of 3, so no per-layer array
        assert "modern-bert.attention.sliding_window_pattern" not in kv


@pytest.mark.parametrize("name", list(SPECS))
def test_tokenization_matches_transformers(name, models, converted):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(models(name))
    llm = open_llama(converted(name, "F32"), vocab_only=True)
    strings = TOKEN_STRINGS + [LONG_WORD, "한국어 텍스트"]
    differ = {text for text in strings
              if llm.tokenize(text.encode(), add_bos=True, special=True) != tok(text)["input_ids"]}
    assert differ == known_different(name, strings)


def _copy(models, name, tmp_path):
    d = tmp_path / name
    shutil.copytree(models(name), d)
    return d


def test_int64_position_ids_buffer_is_ignored(models, tmp_path, converted):
    """all-MiniLM-era safetensors carry embeddings.position_ids (int64 0..n-1) beside the
    weights; it is an index buffer, not a weight: same GGUF tensors as without it."""
    import torch
    from safetensors.torch import load_file, save_file

    d = _copy(models, "minilm", tmp_path)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    shard = index["weight_map"]["embeddings.word_embeddings.weight"]
    tensors = load_file(d / shard)
    tensors["embeddings.position_ids"] = torch.arange(128, dtype=torch.int64)[None]
    save_file(tensors, d / shard, metadata={"format": "pt"})
    index["weight_map"]["embeddings.position_ids"] = shard
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    out = tmp_path / "with_buffer.gguf"
    qconvert.quantize(d, out, type="F32")
    ours = {t.name: np.array(t.data) for t in gguf.GGUFReader(str(out)).tensors}
    plain = {t.name: np.array(t.data) for t in gguf.GGUFReader(str(converted("minilm", "F32"))).tensors}
    assert ours.keys() == plain.keys() and all(np.array_equal(ours[n], plain[n]) for n in ours)


@pytest.mark.parametrize("tokenizer_config,lower", [
    # BertTokenizer rebuilds its normaliser from tokenizer_config.json: do_lower_case defaults
    # to true there, whatever the file's BertNormalizer (lowercase: false) says
    ({"tokenizer_class": "BertTokenizer"}, True),
    # a generic class runs tokenizer.json as written; do_lower_case is then not read
    ({"tokenizer_class": "PreTrainedTokenizerFast", "do_lower_case": True}, False),
])
def test_wordpiece_case_follows_what_transformers_runs(tokenizer_config, lower, models, tmp_path):
    from transformers import AutoTokenizer

    d = _copy(models, "bge", tmp_path)  # cased: tokenizer.json lowercase false
    (d / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    out = tmp_path / "case.gguf"
    qconvert.quantize(d, out, type="F32", dry_run=False)
    assert read(out)["tokenizer.ggml.normalizer.lowercase"] is lower
    tok, llm = AutoTokenizer.from_pretrained(d), open_llama(out, vocab_only=True)
    texts = ["Hello World", "ÉCOLE Über STRASSE", "Café naïve résumé Ångström"]
    assert [llm.tokenize(t.encode(), add_bos=True, special=True) for t in texts] == \
        [tok(t)["input_ids"] for t in texts]


def test_vocab_txt_only_directory(models, tmp_path):
    """BERT's original layout: vocab.txt and no tokenizer.json (transformers builds the
    BertTokenizer from vocab.txt and tokenizer_config.json)."""
    from transformers import AutoTokenizer

    d = _copy(models, "minilm", tmp_path)
    vocab = json.loads((d / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    (d / "vocab.txt").write_text("".join(t + "\n" for t in sorted(vocab, key=vocab.get)), encoding="utf-8")
    (d / "tokenizer.json").unlink()
    out = tmp_path / "vocab_txt.gguf"
    qconvert.quantize(d, out, type="F32")
    kv = read(out)
    assert kv["tokenizer.ggml.model"] == "bert" and kv["tokenizer.ggml.normalizer.lowercase"] is True
    tok = AutoTokenizer.from_pretrained(d)
    llm = open_llama(out, vocab_only=True)
    texts = [t for t in TOKEN_STRINGS if not any("\uac00" <= c <= "\ud7a3" for c in t)]
    assert [llm.tokenize(t.encode(), add_bos=True, special=True) for t in texts] == \
        [tok(t)["input_ids"] for t in texts]


def test_pooling_llama_cpp_cannot_apply_is_refused(models, tmp_path):
    d = _copy(models, "minilm", tmp_path)
    (d / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "max"}))
    with pytest.raises(UnsupportedError, match="1_Pooling.*'max'"):
        qconvert.quantize(d, tmp_path / "a.gguf", type="F32", dry_run=True)
    modules = json.loads((d / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"})
    (d / "modules.json").write_text(json.dumps(modules))
    (d / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "mean"}))
    with pytest.raises(UnsupportedError, match="modules.json.*Dense"):
        qconvert.quantize(d, tmp_path / "b.gguf", type="F32", dry_run=True)


@pytest.mark.parametrize("file,text,message", [
    ("modules.json", '{"0": "Pooling"}', "modules.json: should list modules"),
    ("modules.json", '[{"type": "sentence_transformers.models.Pooling", "path": "../x"}]', "a folder inside"),
    ("1_Pooling/config.json", "[1, 2]", "1_Pooling/config.json: should hold a JSON object"),
    ("1_Pooling/config.json", '{"pooling_mode": {"mean": true}}', "pooling mode"),
    ("1_Pooling/config.json", "fifo", "1_Pooling/config.json: missing or not a regular file"),  # was "mode []"
    ("1_Pooling", "gone", "1_Pooling/config.json: missing or not a regular file"),
    ("config.json", None, "max_position_embeddings is 512, but tensor embeddings.position_embeddings"),
])
def test_damaged_embedding_files_are_one_clean_error(file, text, message, models, tmp_path):
    from qconvert.errors import InputError

    d = _copy(models, "minilm", tmp_path)
    if text is None:  # a config that disagrees with the weights
        config = json.loads((d / file).read_text())
        text = json.dumps(dict(config, max_position_embeddings=512))
    if text in ("fifo", "gone"):
        shutil.rmtree(d / file) if (d / file).is_dir() else (d / file).unlink()
        if text == "fifo":
            os.mkfifo(d / file)
    else:
        (d / file).write_text(text)
    with pytest.raises((InputError, UnsupportedError), match=message):
        qconvert.quantize(d, tmp_path / "a.gguf", type="F32", dry_run=True)


def test_without_sentence_transformers_files_no_pooling_is_written(models, tmp_path):
    d = _copy(models, "bge", tmp_path)
    (d / "modules.json").unlink()
    out = tmp_path / "plain.gguf"
    qconvert.quantize(d, out, type="F32")
    assert "bert.pooling_type" not in read(out)


def test_activation_llama_cpp_does_not_run_is_refused(models, tmp_path):
    d = _copy(models, "bge", tmp_path)
    config = json.loads((d / "config.json").read_text())
    config["hidden_act"] = "relu"
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedError, match="hidden_act 'relu'"):
        qconvert.quantize(d, tmp_path / "a.gguf", type="F32", dry_run=True)


# -- llama.cpp's own converter -----------------------------------------------------------------
# keys where our file and convert_hf_to_gguf.py's differ, and why:
#   normalizer.strip_accents: we write it; llama.cpp defaults it to the lower-case flag (same value)
#   modern-bert: the converter writes norm_eps as layer_norm_rms_epsilon, which llama.cpp's
#   modern-bert loader does not read (it requires layer_norm_epsilon: the converter's file
#   fails to load); it also writes llama.cpp's defaults (pattern 3, rope scaling none) and a
#   classifier pooling type that only a classification head uses
KEY_DIFFERENCES = {
    "minilm": {"tokenizer.ggml.normalizer.strip_accents"},
    "bge": {"tokenizer.ggml.normalizer.strip_accents"},
    "msmarco": {"tokenizer.ggml.normalizer.strip_accents"},
    "e5multi": set(),
    "roberta": set(),
    "modernbert": {"modern-bert.attention.layer_norm_epsilon", "modern-bert.attention.layer_norm_rms_epsilon",
                   "modern-bert.attention.sliding_window_pattern", "modern-bert.classifier.pooling_type",
                   "modern-bert.rope.scaling.type"},
}


@pytest.mark.parametrize("name", list(SPECS))
def test_equal_to_llama_cpp_converter(name, models, converted, tmp_path):
    """convert_hf_to_gguf.py --outtype f16 and `qconvert -t F16`: every tensor the same name,
    type, shape and bytes (F16 matrices, F32 vectors, norms and position / token-type tables);
    every metadata value the same but the differences listed above. (F32 was checked alike.)"""
    type_name = "F16"
    from llama_cpp_converter import convert, has_protobuf, llama_cpp_source

    src = llama_cpp_source()
    if src is None:
        pytest.skip("no llama.cpp source tree (set LLAMA_CPP_SRC)")
    # what we derive; its table lacks our tokenizers
    pre = {"modernbert": "modern-bert", "roberta": "gpt-2"}.get(name, "default")
    theirs = convert(src, models(name), tmp_path / "theirs.gguf", type_name, pre)
    ours = converted(name, type_name)
    a, b = gguf.GGUFReader(str(ours)), gguf.GGUFReader(str(theirs))
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    assert sorted(ta) == sorted(tb)
    for n, t in ta.items():
        u = tb[n]
        assert (t.tensor_type, list(t.shape)) == (u.tensor_type, list(u.shape)), n
        assert np.array_equal(np.asarray(t.data).view(np.uint8), np.asarray(u.data).view(np.uint8)), n
    fa, fb = read(ours), read(theirs)
    skip_tokenizer = name == "e5multi" and not has_protobuf()
    keys = {k for k in fa.keys() | fb.keys()
            if (not k.startswith("general.") or k in ("general.architecture", "general.file_type"))
            and k != "GGUF.kv_count" and not (skip_tokenizer and k.startswith("tokenizer.ggml.")
                                              and k != "tokenizer.ggml.token_type_count")}
    differ = {k for k in keys if fa.get(k) != fb.get(k)}
    assert differ == KEY_DIFFERENCES[name]


def test_vocab_pre_is_refused_for_a_vocabulary_that_has_none(models, tmp_path):
    from qconvert.errors import InputError

    with pytest.raises(InputError, match="--vocab-pre.*WordPiece"):
        qconvert.quantize(models("minilm"), tmp_path / "a.gguf", type="F32", vocab_pre="gpt-2")
    assert list(tmp_path.iterdir()) == []  # nothing left behind
