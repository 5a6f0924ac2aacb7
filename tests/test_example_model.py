"""The bundled example model end to end: llama.cpp runs our GGUF and agrees with
transformers on the HF checkpoint (greedy tokens, next-token argmax, tokenization)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import qconvert
from qconvert.calib.corpus import split_text

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny-llama"
PROMPTS = [
    "The return statement",
    "A class definition defines",
    "In Python, an exception is",
]
N_NEW = 32


@pytest.fixture(scope="module")
def hf():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(EXAMPLE, torch_dtype=torch.float32)
    model.eval()
    tok = AutoTokenizer.from_pretrained(EXAMPLE)
    return model, tok


@pytest.fixture(scope="module")
def gguf_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("example")
    out = {}
    for t in ("F16", "Q8_0"):
        out[t] = qconvert.quantize(EXAMPLE, d / f"tiny-{t}.gguf", type=t).output
    return out


def _llama(path: Path, n_ctx: int = 512):
    from qconvert.eval.llama_model import open_llama

    return open_llama(path, n_ctx=n_ctx, logits_all=True, n_threads=2, seed=0)


def _hf_greedy(model, ids: list[int], n: int) -> list[int]:
    import torch

    ids = list(ids)
    out = []
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids])).logits[0, -1]
            nxt = int(torch.argmax(logits))
            out.append(nxt)
            ids.append(nxt)
    return out


def _llama_greedy(llm, ids: list[int], n: int) -> list[int]:
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(n):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(nxt)
        llm.eval([nxt])
    return out


def test_f16_greedy_continuations_match_transformers(hf, gguf_files):
    model, tok = hf
    llm = _llama(gguf_files["F16"])
    for prompt in PROMPTS:
        ids = tok(prompt).input_ids  # with BOS, as the tokenizer config says
        assert ids[0] == tok.bos_token_id
        want = _hf_greedy(model, ids, N_NEW)
        got = _llama_greedy(llm, ids, N_NEW)
        assert got == want, (prompt, tok.decode(want), tok.decode(got))


def test_q8_0_next_token_agreement_on_evaluation_text(hf, gguf_files):
    import torch

    model, tok = hf
    llm = _llama(gguf_files["Q8_0"])
    ids = tok(split_text("evaluation")).input_ids
    agree = total = 0
    for start in range(0, 4 * 256, 256):
        window = [tok.bos_token_id] + ids[start + 1: start + 256]
        with torch.no_grad():
            ref = model(torch.tensor([window])).logits[0].argmax(-1).numpy()
        llm.reset()
        llm.eval(window)
        ours = np.argmax(np.asarray(llm.scores[: len(window)]), axis=-1)
        agree += int((ref == ours).sum())
        total += len(window)
    assert agree / total >= 0.95, f"next-token agreement {agree}/{total}"


STRINGS = [
    "Hello world",
    "  leading spaces and trailing   ",
    "multiple\n\nnewlines\n\n\n and\ttabs\t\t",
    "numbers 1234567 3.14159 1,000,000",
    "unicode: café naïve Straße Ελληνικά русский",
    "CJK: 日本語のテキスト 中文字符 한국어",
    "emoji: 🙂🚀👩‍💻 🇫🇷",
    "def f(x):\n    return x ** 2  # square\n",
    "if (a && b) { return c[0]; } else { x->y = z; }",
    "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n",
    "",
    " ",
    "\n",
    "The quick brown fox jumps over the lazy dog.",
    "URL: https://example.com/path?q=1&r=2#frag",
    "mixed CASE words ALLCAPS camelCase snake_case",
    "punctuation!!! ??? ... --- ;;; ''' \"\"\"",
    "a" * 50,
    "The __init__ method's self parameter isn't special.",
    "tab\tseparated\tvalues\r\nwindows line",
]


def test_tokenization_matches_hf(hf, gguf_files):
    _, tok = hf
    from tokenizer_builders import load_vocab

    llm = load_vocab(gguf_files["F16"])
    for s in STRINGS:
        want = tok(s, add_special_tokens=False).input_ids
        got = llm.tokenize(s.encode("utf-8"), add_bos=False, special=True)
        assert got == want, repr(s)
    # BOS is added the way the HF tokenizer adds it
    assert llm.tokenize(b"Hello", add_bos=True, special=True) == tok("Hello").input_ids


def test_gguf_reader_reads_what_we_wrote(gguf_files):
    from gguf import GGUFReader

    r = GGUFReader(gguf_files["Q8_0"])
    names = {t.name for t in r.tensors}
    assert "token_embd.weight" in names and "output.weight" in names
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0"
    assert types["blk.0.attn_norm.weight"] == "F32"
    assert r.fields["general.architecture"].contents() == "llama"
    assert r.fields["tokenizer.chat_template"].contents()
