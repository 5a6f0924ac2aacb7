"""Evaluation windows from a long text: only as much of its start is tokenized as the
windows need (a 38.7 MB --text with --max-windows 1 was tokenized whole: 27 s, 1 GB), and
the ids are those the whole text's tokenization gives, for BPE (the example model's
byte-level tokenizer), SentencePiece-style (Metaspace with a space prefix, no
pre-tokenizer: merges are limited by nothing but the vocabulary) and llama.cpp's tokenizer
of a GGUF."""

from __future__ import annotations

from pathlib import Path

import pytest

from qconvert.calib.corpus import split_text
from qconvert.calib.text import tokenize
from qconvert.eval.windows import evaluation_windows, load_tokenizer, next_cut, previous_cut, tokenize_prefix

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny-llama"


def _text() -> str:
    """The evaluation split four times over, with blank-line runs, indented and
    whitespace-led lines, CRLF and a few non-Latin lines between the copies."""
    base = split_text("evaluation")
    glue = ["\n\n\n", "\n    indented line\n\tand a tab\n", "\r\n\r\n日本語のテキスト Привет\n \n", "\n\n"]
    return "".join(base + g for g in glue)


class Counting:
    """A tokenizer that counts the characters it was asked to encode."""

    def __init__(self, tok) -> None:
        self.tok, self.chars = tok, 0

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        self.chars += len(text)
        backend = getattr(self.tok, "backend_tokenizer", self.tok)
        if hasattr(backend, "encode_batch"):  # a tokenizers.Tokenizer
            return backend.encode(text, add_special_tokens=add_special_tokens).ids
        return list(self.tok.encode(text, add_special_tokens=add_special_tokens))


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory):
    """A Llama 2-shaped SentencePiece tokenizer as tokenizer.json and as a vocab-only GGUF."""
    import sentencepiece as spm
    from tokenizer_builders import spm_style_tokenizer_json, train_spm, write_vocab_gguf

    d = tmp_path_factory.mktemp("spm_windows")
    sp = spm.SentencePieceProcessor(model_file=str(train_spm(d, add_dummy_prefix=True)))
    spm_style_tokenizer_json(d, sp, prefix=True)
    write_vocab_gguf(d, d / "vocab.gguf", config={}, arch="llama")
    return d


@pytest.fixture(scope="module", params=["bpe", "spm", "gguf"])
def tokenizer(request, spm_dir):
    if request.param == "bpe":
        tok = load_tokenizer(EXAMPLE)
    elif request.param == "spm":
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(spm_dir / "tokenizer.json"))
    else:
        tok = load_tokenizer(spm_dir / "vocab.gguf")
    yield tok
    if hasattr(tok, "close"):
        tok.close()


@pytest.fixture(scope="module")
def whole(tokenizer):
    text = _text()
    return text, tokenize(tokenizer, text)


@pytest.mark.parametrize("need", [4, 300, 2048, 9000])
def test_prefix_ids_equal_the_whole_texts(tokenizer, whole, need):
    text, ids = whole
    assert len(ids) > need * 2  # the text is long enough that a prefix is what gets tokenized
    counting = Counting(tokenizer)
    got = tokenize_prefix(counting, text, need)
    assert len(got) >= need
    assert got[:need] == ids[:need]
    assert counting.chars < len(text) // 2  # prefix plus the checks around the cut, not the text


def test_more_than_the_text_holds_is_the_whole_text(tokenizer, whole):
    text, ids = whole
    assert tokenize_prefix(tokenizer, text, len(ids) + 1) == ids
    assert tokenize_prefix(tokenizer, text, None) == ids


def test_one_window_of_a_big_text_reads_a_little_of_it(monkeypatch):
    """--max-windows 1 on 30 MB: thousands of characters are tokenized, not millions, and the
    window is the one the whole text gives."""
    text = (split_text("evaluation") + "\n") * 600
    tok = Counting(load_tokenizer(EXAMPLE))
    monkeypatch.setattr("qconvert.eval.windows.load_tokenizer", lambda model: tok)
    w = evaluation_windows(EXAMPLE, n_ctx=512, max_windows=1, text=text)
    assert w.n_windows == 1 and tok.chars < 20_000
    first = tokenize(load_tokenizer(EXAMPLE), split_text("evaluation"))[1:512]
    assert w.tokens[0, 1:].tolist() == first


class NewlineMerging:
    """A character tokenizer that makes "\\nX" one token: the token spans any cut made after
    a newline followed by X, so such cuts must be passed over."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        out, i = [], 0
        while i < len(text):
            if text.startswith("\nX", i):
                out.append(100_000)
                i += 2
            else:
                out.append(ord(text[i]))
                i += 1
        return out


@pytest.mark.parametrize("every", [1, 3])
def test_a_token_across_the_cut_moves_the_cut(every):
    """every=1: every line starts with X, no cut is clean: the whole text is tokenized.
    every=3: two lines in three do, the clean ones are found."""
    lines = [("X" if i % every == 0 else "a") + "bc " * 20 for i in range(3000)]
    text = "\n".join(lines)
    tok = NewlineMerging()
    whole = tok.encode(text)
    for need in (10, 700, 5000):
        counting = Counting(tok)
        assert tokenize_prefix(counting, text, need)[:need] == whole[:need]
        if every == 3:
            assert counting.chars < len(text) // 2


def test_cut_positions_are_line_starts_not_inside_newline_runs():
    text = "ab\n\n\ncd\n  ef\ngh"
    assert next_cut(text, 1) == 5 and next_cut(text, 5) == 5 and next_cut(text, 6) == 13
    assert next_cut(text, 14) == len(text)
    assert previous_cut(text, 12) == 5 and previous_cut(text, 4) == 0 and previous_cut(text, 13) == 13
