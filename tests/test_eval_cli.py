"""`qconvert eval` through the installed console script, on the bundled example model:
the figures it prints are checked against llama.cpp run directly by the test (its own
log-softmax, not qconvert's), the GGUF tokenizer path against the HF tokenizer, and the
error contract and --plot output like every other command's."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

import qconvert
from qconvert.eval import evaluation_windows
from qconvert.eval.llama_model import open_llama
from test_cli_contract import EXAMPLE, one_error_line, run

N_CTX, N_WIN = 128, 3


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("evalcli")
    return {t: qconvert.quantize(EXAMPLE, d / f"ex-{t}.gguf", type=t).output for t in ("F16", "Q8_0", "Q2_K")}


def _eval(*args, **kw):
    r = run("eval", *args, "--ctx", N_CTX, "--max-windows", N_WIN, "--threads", 1, "--json", **kw)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _nll_by_llama_cpp(path, tokens: np.ndarray, first: int) -> np.ndarray:
    """Per-position NLL computed here from llama.cpp's logits, float64."""
    llm = open_llama(path, n_ctx=N_CTX, n_batch=N_CTX, n_ubatch=N_CTX, logits_all=True, n_threads=1)
    out = []
    try:
        for w in tokens:
            llm.reset()
            llm.eval([int(t) for t in w])
            logits = np.array(llm.scores[first: len(w) - 1], dtype=np.float64)
            z = logits - logits.max(axis=1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
            out.append(-logp[np.arange(len(logp)), w[first + 1:]])
    finally:
        llm.close()
    return np.concatenate(out)


def test_figures_match_llama_cpp_run_directly(files):
    res = _eval(files["Q2_K"], files["Q8_0"], "--reference", EXAMPLE)
    w = evaluation_windows(EXAMPLE, n_ctx=N_CTX, max_windows=N_WIN)
    by_label = {r["label"]: r for r in res["results"]}
    for label in ("Q2_K", "Q8_0"):
        nll = _nll_by_llama_cpp(files[label], w.tokens, w.first)
        got = by_label[label]
        assert got["n_positions"] == len(nll) == N_WIN * (N_CTX // 2 - 1)
        assert got["ppl"] == pytest.approx(float(np.exp(nll.mean())), rel=1e-6)
        assert got["file_bytes"] == os.path.getsize(files[label])
    # a coarser grid loses more, on every measure the command reports
    q2, q8 = by_label["Q2_K"], by_label["Q8_0"]
    assert q8["mean_kl"] < q2["mean_kl"] and q8["p99_kl"] < q2["p99_kl"] and q8["top1"] > q2["top1"]
    assert 0 < q8["mean_kl"] < 0.01 and q2["bits_per_weight"] < q8["bits_per_weight"]
    assert res["reference"]["kind"] == "hf" and res["reference"]["mean_kl"] is None


def test_gguf_only_run_tokenizes_like_the_hf_tokenizer(files):
    hf = evaluation_windows(EXAMPLE, n_ctx=N_CTX, max_windows=N_WIN)
    gg = evaluation_windows(files["F16"], n_ctx=N_CTX, max_windows=N_WIN)
    assert (gg.tokens == hf.tokens).all()
    res = _eval(files["Q8_0"], "-r", files["F16"])
    assert res["results"][0]["label"] == "Q8_0" and res["reference"]["label"] == "F16"
    assert "ex-F16.gguf tokenizer" in res["text"]


def test_without_reference_only_perplexity(files):
    res = _eval(files["Q8_0"])
    assert res["reference"] is None and res["results"][0]["mean_kl"] is None and res["results"][0]["ppl"] > 1


def test_own_text(files, tmp_path):
    text = tmp_path / "mine.txt"
    from qconvert.calib.corpus import split_text

    text.write_text(split_text("train"))
    res = _eval(files["Q8_0"], "-r", files["F16"], "--text", text)
    assert res["text"].startswith("text /")
    # the example model saw its training text: far lower perplexity there than on held-out text
    assert res["results"][0]["ppl"] < 0.5 * _eval(files["Q8_0"], "-r", files["F16"])["results"][0]["ppl"]


def test_plot_is_a_png_and_obeys_output_rules(files, tmp_path):
    out = tmp_path / "kl.png"
    r = run("eval", files["Q2_K"], files["Q8_0"], "-r", files["F16"], "--ctx", N_CTX, "--max-windows", 2,
            "--threads", 1, "--plot", out)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(str(out)).shape[0] > 100
    assert [p.name for p in tmp_path.iterdir()] == ["kl.png"]  # no temporary left beside it
    again = run("eval", files["Q8_0"], "-r", files["F16"], "--plot", out)
    assert again.returncode == 2 and "--force" in one_error_line(again)
    for bad in ("/dev/null", files["Q8_0"]):
        r = run("eval", files["Q8_0"], "-r", files["F16"], "--plot", bad, "--force")
        assert r.returncode == 2, r.stderr
        one_error_line(r)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    no_ref = run("eval", files["Q8_0"], "--plot", tmp_path / "x.png")
    assert no_ref.returncode == 2 and "--reference" in one_error_line(no_ref)


@pytest.mark.parametrize("args, code, words", [
    (["nope.gguf"], 2, "nope.gguf"),
    (["{readme}"], 2, "README.md"),
    (["{q8}", "--ctx", "2"], 2, "--ctx"),
    (["{q8}", "--threads", "0"], 2, "--threads"),
    (["{q8}", "--max-windows", "0"], 2, "--max-windows"),
    (["{q8}", "--text", "{empty}"], 2, "empty"),
    (["{q8}", "{q8}"], 2, "given twice"),
    (["{q8}", "-r", "{q8}"], 2, "given twice"),
])
def test_bad_input_is_one_line(files, tmp_path, args, code, words):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    sub = {"{q8}": str(files["Q8_0"]), "{readme}": str(EXAMPLE.parent.parent / "README.md"), "{empty}": str(empty)}
    r = run("eval", *[sub.get(a, a) for a in args])
    assert r.returncode == code, r.stderr
    assert words in one_error_line(r)


def test_other_vocabulary_is_refused(files, tiny, tmp_path):
    other = qconvert.quantize(tiny("llama"), tmp_path / "other.gguf", type="Q8_0").output
    r = run("eval", other, "-r", files["F16"], "--ctx", N_CTX, "--max-windows", 1, "--threads", 1)
    assert r.returncode == 3 and "vocabulary" in one_error_line(r)


def test_split_sets_and_files_llama_cpp_refuses(files, tmp_path):
    """A split set is one model whichever member is named (llama.cpp opens only the first);
    a missing member, a truncated file or an architecture llama.cpp does not run is one line,
    not the internal error llama-cpp-python's bare "Failed to load model" gave (exit 70)."""
    import gguf

    parts = qconvert.quantize(EXAMPLE, tmp_path / "s.gguf", type="Q8_0", split_max_tensors=12).files
    assert len(parts) == 4
    whole = _eval(files["Q8_0"], "-r", files["F16"])["results"][0]
    by_second = _eval(parts[1], "-r", files["F16"])["results"][0]
    assert by_second["mean_kl"] == whole["mean_kl"] and by_second["ppl"] == whole["ppl"]
    twice = run("eval", parts[0], parts[2])
    assert twice.returncode == 2 and "given twice" in one_error_line(twice)
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(files["Q8_0"].read_bytes()[:1_000_000])
    alien = tmp_path / "alien.gguf"
    w = gguf.GGUFWriter(alien, "nosucharch")
    w.add_tensor("x", np.ones(32, np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    parts[1].unlink()
    for path, code, words in ((parts[0], 2, "member 2 of the 4-file GGUF set"), (truncated, 2, "past the end"),
                              (alien, 3, "(llama.cpp: error loading model: unknown model architecture: 'nosucharch')")):
        for args in ([path, "-r", files["F16"]], [files["Q8_0"], "-r", path], [files["Q8_0"], "--tokenizer", path]):
            r = run("eval", *args, "--ctx", N_CTX, "--max-windows", 1)
            assert r.returncode == code and words in one_error_line(r), (args, r.stderr)


def test_ctx_past_the_training_length_is_one_warning_of_ours(files):
    """llama.cpp's "n_ctx_seq (1024) > n_ctx_train (512) -- possible training context
    overflow" reached stderr raw (llama-cpp-python's log printer reads ggml's levels one
    off); now its log is kept and qconvert says it once, for every model it concerns."""
    r = run("eval", files["Q8_0"], "-r", EXAMPLE, "--ctx", 1024, "--max-windows", 1, "--threads", 1, "--json")
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [f"warning: --ctx 1024 is longer than the training context, in tokens, of "
                                     f"{files['Q8_0']} (512), {EXAMPLE} (512): positions past it are scored too"]
    assert json.loads(r.stdout)["n_ctx"] == 1024
    quiet = run("eval", files["Q8_0"], "--ctx", 512, "--max-windows", 1, "--threads", 1, "--json")
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_a_failed_decode_is_one_line_with_llama_cpps_reason(files):
    from qconvert.errors import UnsupportedError
    from qconvert.eval.logits import LlamaCppLogits

    src = LlamaCppLogits(files["Q8_0"], n_ctx=16, threads=1)
    try:
        with pytest.raises(UnsupportedError, match=r"could not run a window of 16 tokens .*"
                                                   r"\(llama.cpp: .*invalid token\[8\] = 99999\)$"):
            src(np.array([0] * 8 + [99999] + [1] * 7), 8)
        assert src(np.arange(16), 8).shape == (7, 2048)  # the model still runs afterwards
    finally:
        src.close()


def _with_nan_weights(src, out):
    """A copy of `src` whose blk.1.attn_q.weight (F16) is all NaN."""
    from qconvert.gguf_header import read_gguf_header

    t = next(t for t in read_gguf_header(src).tensors if t.name == "blk.1.attn_q.weight")
    data = bytearray(src.read_bytes())
    data[t.offset: t.offset + t.n_bytes] = b"\xff\x7f" * (t.n_bytes // 2)
    out.write_bytes(bytes(data))
    return out


def test_nan_logits(files, tmp_path):
    """A reference whose logits are NaN is refused (its NaN probabilities were dropped from the
    KL sum: Q8_0 scored mean KL 0 against it); a candidate's NaN is a warning line and null
    figures in the JSON."""
    nan = _with_nan_weights(files["F16"], tmp_path / "nan-F16.gguf")
    plot = tmp_path / "kl.png"
    r = run("eval", files["Q8_0"], "-r", nan, "--ctx", N_CTX, "--max-windows", 1, "--plot", plot)
    assert r.returncode == 2 and "the reference gave NaN or Inf logits" in one_error_line(r)
    assert not plot.exists()
    r = run("eval", nan, "-r", files["F16"], "--ctx", N_CTX, "--max-windows", 1, "--threads", 1, "--json")
    assert r.returncode == 0
    n = N_CTX // 2 - 1
    assert r.stderr.splitlines() == [f"warning: {nan}: NaN or Inf logits at {n} of {n} scored positions (its weights "
                                     "may hold NaN or Inf); its figures are NaN"]
    got = json.loads(r.stdout)["results"][0]
    assert got["nonfinite"] == n and got["ppl"] is None and got["mean_kl"] is None


def test_a_gguf_is_known_by_its_magic_whatever_its_name(files, tmp_path):
    """-r ref.bin (a link to an F16 GGUF) was "not a .gguf file ...; name the backend", an
    option eval does not have."""
    ref = tmp_path / "ref.bin"
    ref.symlink_to(files["F16"])
    got = _eval(files["Q8_0"], "-r", ref)
    assert got["reference"]["label"] == "F16" and got["results"][0]["mean_kl"] > 0
    text = tmp_path / "notes.bin"
    text.write_text("GGUX and more")
    r = run("eval", files["Q8_0"], "-r", text)
    assert r.returncode == 2 and "notes.bin: not a GGUF file or a model directory" in one_error_line(r)


def test_plot_of_only_nan_kl_is_a_warning_after_the_figures(files, tmp_path):
    """The figures were computed, then lost to "--plot shows KL against the reference: give
    --reference" (exit 3) although a reference was given: the only file's KL was NaN."""
    nan = _with_nan_weights(files["F16"], tmp_path / "nan-F16.gguf")
    plot = tmp_path / "kl.png"
    r = run("eval", nan, "-r", files["F16"], "--ctx", N_CTX, "--max-windows", 1, "--threads", 1, "--json",
            "--plot", plot)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines()[-1] == f"warning: --plot {plot} not written: no file has a finite KL against " \
                                        "the reference"
    assert json.loads(r.stdout)["results"][0]["nonfinite"] > 0 and not plot.exists()
