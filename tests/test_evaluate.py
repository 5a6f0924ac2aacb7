"""qconvert.eval: windows, the reference store, perplexity/KL/top-1 against it,
on the tiny random Llama fixture (vocab 512) and a handful of windows."""

from __future__ import annotations

import json

import numpy as np
import pytest

import qconvert
from qconvert.calib.corpus import split_text
from qconvert.errors import InputError
from qconvert.eval import Reference, compare, cut, evaluation_windows, reference_from, score

N_CTX, N_WINDOWS = 256, 3


@pytest.fixture(scope="module")
def setup(tiny, tmp_path_factory):
    model = tiny("llama")
    d = tmp_path_factory.mktemp("eval")
    ggufs = {t: qconvert.quantize(model, d / f"tiny-{t}.gguf", type=t).output for t in ("F16", "Q8_0", "Q2_K")}
    windows = evaluation_windows(model, n_ctx=N_CTX, max_windows=N_WINDOWS)
    ref = reference_from(ggufs["F16"], windows, d / "ref")
    return model, ggufs, windows, ref


def test_windows_are_the_tokenized_evaluation_text_cut_in_order(setup):
    from tokenizers import Tokenizer

    model, _, w, _ = setup
    # tokenized independently of qconvert: the tokenizers library on tokenizer.json
    ids = Tokenizer.from_file(str(model / "tokenizer.json")).encode(
        split_text("evaluation"), add_special_tokens=False).ids
    bos = json.loads((model / "config.json").read_text())["bos_token_id"]
    assert w.tokens.shape == (N_WINDOWS, N_CTX)
    assert (w.tokens[:, 0] == bos).all()  # the tokenizer adds BOS, so every window starts with it
    for i in range(N_WINDOWS):
        assert w.tokens[i, 1:].tolist() == ids[i * N_CTX + 1: (i + 1) * N_CTX]
    assert w.first == N_CTX // 2 and w.n_scored == N_CTX // 2 - 1
    assert (w.targets() == w.tokens[:, N_CTX // 2 + 1:]).all()


def test_cut_refuses_text_shorter_than_a_window():
    with pytest.raises(InputError):
        cut(list(range(100)), 128)
    with pytest.raises(InputError):
        cut(list(range(1000)), 128, first=127)


def test_a_model_against_itself(setup):
    _, ggufs, w, ref = setup
    m = compare(ggufs["F16"], ref)
    assert m.n_positions == N_WINDOWS * w.n_scored
    assert m.ppl == pytest.approx(ref.metrics.ppl, rel=1e-12)
    # only the float32 storage of the reference's log-probs separates the two
    assert 0 <= m.mean_kl < 1e-9 and m.max_kl < 1e-9
    assert m.top1 == 1.0 and m.delta_nll_se == 0.0


def test_float16_reference_store_keeps_kl_non_negative_and_tiny(setup, tmp_path):
    _, ggufs, w, ref = setup
    half = reference_from(ggufs["F16"], w, tmp_path / "ref16", dtype=np.float16)
    assert np.load(half.path / "logprobs.npy", mmap_mode="r").dtype == np.float16
    m = compare(ggufs["F16"], half)
    # near-uniform logits over 512 tokens are float16's worst case; 2.5e-7 measured
    assert 0 <= m.mean_kl < 2e-6 and m.top1 == 1.0
    q8_32, q8_16 = compare(ggufs["Q8_0"], ref), compare(ggufs["Q8_0"], half)
    assert q8_16.mean_kl == pytest.approx(q8_32.mean_kl, rel=1e-3)


def test_f16_gguf_in_llama_cpp_matches_transformers_on_the_checkpoint(setup):
    model, _, _, ref = setup
    m = compare(model, ref)
    assert m.backend.startswith("hf")
    assert m.mean_kl < 1e-3, m
    assert abs(m.ppl / ref.metrics.ppl - 1) < 0.005, (m.ppl, ref.metrics.ppl)
    assert m.top1 > 0.98


def test_metrics_match_a_direct_computation(setup):
    """Same numbers from torch's own cross_entropy and kl_div, llama.cpp called directly,
    and the scored positions picked by hand: the second half of each window."""
    import torch
    from qconvert.eval.llama_model import open_llama
    from transformers import AutoModelForCausalLM

    model, ggufs, w, ref = setup
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    llm = open_llama(ggufs["F16"], n_ctx=N_CTX, logits_all=True, n_threads=1)
    nll, kl = [], []
    for toks in w.tokens:
        llm.reset()
        llm.eval(toks.tolist())
        p_log = torch.log_softmax(torch.tensor(np.array(llm.scores[:N_CTX]), dtype=torch.float64), -1)
        with torch.no_grad():
            q_log = torch.log_softmax(hf(torch.tensor(toks[None], dtype=torch.long)).logits[0].double(), -1)
        pos = torch.arange(N_CTX // 2, N_CTX - 1)
        target = torch.tensor(toks[N_CTX // 2 + 1:], dtype=torch.long)
        nll.append(torch.nn.functional.nll_loss(q_log[pos], target, reduction="none"))
        kl.append(torch.nn.functional.kl_div(q_log[pos], p_log[pos], log_target=True, reduction="none").sum(-1))
    llm.close()
    m = compare(model, ref)
    assert m.nll == pytest.approx(torch.cat(nll).mean().item(), rel=1e-6)
    assert m.mean_kl == pytest.approx(torch.cat(kl).mean().item(), rel=1e-4)


def test_q2_k_is_further_from_f16_than_q8_0(setup):
    _, ggufs, _, ref = setup
    q8, q2 = compare(ggufs["Q8_0"], ref), compare(ggufs["Q2_K"], ref)
    assert q8.mean_kl > 1e-5  # Q8_0 rounding is visible...
    assert q2.mean_kl > 10 * q8.mean_kl  # ...and 2-bit weights far more so
    assert q2.p99_kl > q8.p99_kl and q2.top1 < q8.top1
    # paired with the reference token by token, the NLL difference is known more precisely
    # than the NLL itself
    assert 0 < q8.delta_nll_se < q8.nll_se / 10


def test_metrics_and_reference_are_deterministic(setup, tmp_path):
    _, ggufs, w, ref = setup
    a, b = compare(ggufs["Q2_K"], ref), compare(ggufs["Q2_K"], ref)
    da, db = a.to_dict(), b.to_dict()
    da.pop("seconds"), db.pop("seconds")
    assert da == db
    again = reference_from(ggufs["F16"], w, tmp_path / "ref2")
    assert np.array_equal(np.load(again.path / "logprobs.npy"), np.load(ref.path / "logprobs.npy"))
    assert np.array_equal(again.top, ref.top)


def test_reference_reopens_and_scoring_alone_gives_its_perplexity(setup):
    _, ggufs, w, ref = setup
    back = Reference.open(ref.path)
    assert back.windows.digest() == w.digest() and back.vocab == 512
    assert back.metrics.ppl == ref.metrics.ppl
    alone = score(ggufs["F16"], w)
    assert alone.ppl == ref.metrics.ppl and np.isnan(alone.mean_kl)


def test_temporary_reference_is_removed_on_close(setup):
    _, ggufs, w, _ = setup
    with reference_from(ggufs["Q8_0"], cut(w.tokens[0], 64, bos=int(w.tokens[0, 0]))) as ref:
        path = ref.path
        assert (path / "logprobs.npy").exists()
    assert not path.exists()


def test_kl_against_nan_probabilities_is_nan_not_zero():
    from qconvert.eval.statistics import Accumulator, log_softmax

    logq = log_softmax(np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]))
    logp = logq.copy()
    logp[1] = np.nan
    acc = Accumulator()
    acc.add(logq, np.array([2, 0]), logp, np.array([2, 0]), -logq[[0, 1], [2, 0]])
    kl = acc.kl[0]
    assert kl[0] == 0.0 and np.isnan(kl[1])
    acc.add(np.full((1, 3), np.nan), np.array([0]))
    assert acc.nonfinite == 1
