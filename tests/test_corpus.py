"""The text splits, and the shape of the bundled example model that was trained on them."""

import hashlib
import json
from pathlib import Path

import pytest

from qconvert.calib import corpus
from qconvert.errors import QConvertError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny-llama"


def test_documents_are_sorted_and_cover_the_stdlib_topics():
    from pydoc_data.topics import topics

    docs = corpus.documents()
    keys = [k for k, _ in docs]
    assert keys == sorted(topics)
    assert all(text == topics[k] for k, text in docs)


def test_splits_partition_the_topics():
    per_split = {name: {k for k, _ in corpus.split_documents(name) if not k.startswith("stdlib:")}
                 for name in corpus.SPLITS}
    all_keys = {k for k, _ in corpus.documents()}
    assert set().union(*per_split.values()) == all_keys
    names = list(per_split)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not per_split[a] & per_split[b], (a, b)


def test_split_rule_is_the_documented_hash():
    # Recomputed here from the rule as written in the module docstring.
    for key, _ in corpus.documents():
        bucket = int.from_bytes(hashlib.sha256(b"qconvert:" + key.encode()).digest()[:8], "big") % 10
        expected = {0: "evaluation", 1: "calibration"}.get(bucket, "train")
        assert corpus.split_of(key) == expected


def test_splits_are_large_enough_and_text_is_disjoint():
    texts = {name: corpus.split_text(name) for name in corpus.SPLITS}
    assert len(texts["evaluation"]) >= 30_000
    assert len(texts["calibration"]) >= 30_000
    train = "\n\n".join(t for _, t in corpus.training_documents())
    assert len(train) > 5 * len(texts["evaluation"])
    # pydoc topics quote one another, docstrings repeat; no held-out paragraph of 40+
    # characters may appear anywhere in the training text, even inside a longer paragraph
    for name in ("evaluation", "calibration"):
        paragraphs = [p.strip() for p in texts[name].split("\n\n") if len(p.strip()) >= 40]
        assert len(paragraphs) > 50
        leaked = [p[:60] for p in paragraphs if p in train]
        assert not leaked, (name, leaked)


def test_train_documents_only_lose_shared_paragraphs():
    from pydoc_data.topics import topics

    train = corpus.split_documents("train")
    assert len(train) > 50
    kept = lost = 0
    for key, text in train:
        original = topics[key].split("\n\n")
        mine = text.split("\n\n")
        # an order-preserving subsequence of the topic's paragraphs
        it = iter(original)
        assert all(any(p == q for q in it) for p in mine), key
        kept += len(text)
        lost += len(topics[key]) - len(text)
    assert 0 < lost < 0.1 * kept


def test_split_text_is_deterministic_and_rejects_unknown_names():
    assert corpus.split_text("calibration") == corpus.split_text("calibration")
    with pytest.raises(QConvertError, match="calibration"):
        corpus.split_text("validation")


def test_example_model_is_a_gqa_llama_with_block_friendly_widths():
    cfg = json.loads((EXAMPLE / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["num_key_value_heads"] < cfg["num_attention_heads"]
    assert cfg["num_attention_heads"] % cfg["num_key_value_heads"] == 0
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    assert head_dim * cfg["num_attention_heads"] == cfg["hidden_size"]
    # The row width (ggml's ne0, the HF in_features) of every 2-D weight is one of these;
    # each must be a multiple of the 256-wide k-quant super-block.
    in_widths = {
        "q/k/v/gate/up/lm_head": cfg["hidden_size"],
        "o_proj": head_dim * cfg["num_attention_heads"],
        "down_proj": cfg["intermediate_size"],
    }
    assert all(w % 256 == 0 for w in in_widths.values()), in_widths
    assert cfg["tie_word_embeddings"] is False


def test_example_model_tokenizer_files():
    tok = json.loads((EXAMPLE / "tokenizer.json").read_text())
    assert tok["model"]["type"] == "BPE"
    cfg = json.loads((EXAMPLE / "config.json").read_text())
    assert len(tok["model"]["vocab"]) == cfg["vocab_size"]
    special = {t["content"]: t["id"] for t in tok["added_tokens"] if t["special"]}
    assert special["<|begin_of_text|>"] == cfg["bos_token_id"]
    assert special["<|end_of_text|>"] == cfg["eos_token_id"]
    assert {"<|im_start|>", "<|im_end|>"} <= set(special)
    tcfg = json.loads((EXAMPLE / "tokenizer_config.json").read_text())
    assert tcfg["add_bos_token"] is True and "chat_template" in tcfg
    with open(EXAMPLE / "model.safetensors", "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"BF16"}


def test_calibration_text_is_tokenized_in_pieces_cut_after_newlines():
    from qconvert.calib.text import pieces

    text = "first line\n  second, longer line\n" * 40 + "no newline " * 30 + "x" * 70
    for size in (8, 33, 200, 10_000):
        ps = pieces(text, size)
        assert "".join(ps) == text and all(ps)
        assert all(len(p) <= size for p in ps)
        # a piece ends after a newline wherever its window held one
        for p, nxt in zip(ps, ps[1:]):
            if "\n" in p:
                assert p.endswith("\n"), (size, p)
    assert pieces(corpus.split_text("calibration")) == [corpus.split_text("calibration")]


def test_bundled_text_tokenizes_as_one_call(tmp_path):
    """The bundled text is shorter than a piece: its ids are those of one encode call."""
    from tokenizers import Tokenizer

    from qconvert.calib.text import tokenize

    tok = Tokenizer.from_file(str(Path(__file__).resolve().parents[1] / "examples" / "tiny-llama" / "tokenizer.json"))
    text = corpus.split_text("calibration")
    assert tokenize(tok, text) == tok.encode(text, add_special_tokens=False).ids


def test_calibration_text_over_the_bound_is_refused_before_reading(tmp_path):
    from qconvert.calib.text import MAX_TEXT_BYTES, read_text
    from qconvert.errors import InputError

    big = tmp_path / "big.txt"
    with open(big, "wb") as f:  # sparse: costs no disk
        f.truncate(MAX_TEXT_BYTES + 1)
    with pytest.raises(InputError, match="big.txt: calibration text is"):
        read_text(big)


def test_training_documents_add_stdlib_docstrings_and_keep_held_out_text_out():
    docs = corpus.training_documents()
    train = corpus.split_documents("train")
    assert docs[: len(train)] == train
    extra = docs[len(train):]
    keys = [k for k, _ in extra]
    assert keys == sorted(keys) and all(k.startswith("stdlib:") for k in keys)
    assert "stdlib:json/__init__.py" in keys and not any(k.startswith("stdlib:test/") for k in keys)
    text = "\n\n".join(t for _, t in extra)
    assert len(text) > 2 * len(corpus.split_text("train"))
    for name in ("evaluation", "calibration"):
        paragraphs = [p.strip() for p in corpus.split_text(name).split("\n\n") if len(p.strip()) >= 40]
        assert not [p[:60] for p in paragraphs if p in text], name


def test_held_out_splits_add_their_own_docstring_files_which_never_train():
    """Evaluation text of the kind the model trains on: each held-out split is its topics then
    the stdlib module files the same hash rule gives it; those files are not in training."""
    trained = {k for k, _ in corpus.training_documents()}
    seen = set()
    for name in ("evaluation", "calibration"):
        docs = corpus.split_documents(name)
        keys = [k for k, _ in docs]
        files = [k for k in keys if k.startswith("stdlib:")]
        assert len(files) >= 20, name
        assert keys == sorted(k for k in keys if not k.startswith("stdlib:")) + sorted(files)
        assert all(corpus.split_of(k) == name for k in keys)
        assert not set(files) & trained and not set(files) & seen
        seen |= set(files)
        # docstrings dominate the held-out text as they dominate the training text
        assert sum(len(t) for k, t in docs if k in files) > sum(len(t) for k, t in docs if k not in files)
