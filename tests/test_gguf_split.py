"""GGUF output as llama.cpp's split set (--split-max-size / --split-max-tensors), and split
sets read back: by llama.cpp, by `inspect`, and as quantize's GGUF input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

import qconvert
from qconvert.errors import FormatError, InputError, OutputExistsError
from qconvert.gguf_header import read_gguf_header

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "qconvert", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env)


def keys(path: Path) -> dict:
    return {kv.key: kv.value for kv in read_gguf_header(path).kv}


def tensor_data(path: Path) -> list[tuple[str, bytes]]:
    return [(t.name, bytes(t.data.tobytes())) for t in gguf.GGUFReader(path).tensors]


def last_logits(path: Path, text: bytes) -> np.ndarray:
    from qconvert.eval.llama_model import open_llama

    llm = open_llama(path, n_ctx=64, logits_all=True, n_threads=2)
    llm.eval(llm.tokenize(text))
    out = np.array(llm.scores[: llm.n_tokens], dtype=np.float32)
    llm.close()
    return out


@pytest.fixture(scope="module")
def whole_and_split(tiny, tmp_path_factory):
    d = tmp_path_factory.mktemp("split")
    model = tiny("llama")
    whole = qconvert.quantize(model, d / "whole.gguf", type="Q4_K_M")
    res = qconvert.quantize(model, d / "parts.gguf", type="Q4_K_M", split_max_size="400kB")
    return whole, res


def test_split_set_is_llama_cpps_layout_and_holds_the_same_tensor_bytes(whole_and_split):
    whole, res = whole_and_split
    n = len(res.files)
    assert n >= 3
    assert [f.name for f in res.files] == [f"parts-{i:05d}-of-{n:05d}.gguf" for i in range(1, n + 1)]
    assert res.output == res.files[0] and res.file_size == sum(f.stat().st_size for f in res.files)
    assert not (res.output.parent / "parts.gguf").exists()
    n_tensors = len(whole.plan.tensors)
    model_keys = keys(whole.output)
    for i, f in enumerate(res.files):
        k = keys(f)
        assert (k["split.no"], k["split.count"], k["split.tensors.count"]) == (i, n, n_tensors)
        assert f.stat().st_size <= 400_000
        if i == 0:  # all the model's metadata, in the first file only
            assert {key: v for key, v in k.items() if not key.startswith("split.")} == model_keys
        else:
            assert set(k) == {"split.no", "split.count", "split.tensors.count"}
    # the members' tensors, in order, are the unsplit file's, byte for byte
    parts = [t for f in res.files for t in tensor_data(f)]
    assert parts == tensor_data(whole.output)


def test_llama_cpp_loads_the_set_from_its_first_file_with_the_same_logits(whole_and_split):
    whole, res = whole_and_split
    text = b"def split(self, sep=None):\n    return"
    ref = last_logits(whole.output, text)
    got = last_logits(res.files[0], text)
    assert ref.shape == got.shape and np.isfinite(ref).all()
    assert np.array_equal(ref, got)


def test_split_max_tensors_and_the_cli_lists_the_set(tiny, tmp_path):
    model = tiny("llama")
    r = run_cli("quantize", model, "-t", "Q8_0", "--split-max-tensors", "8", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    files = sorted(tmp_path.glob(f"{model.name}-Q8_0-*-of-*.gguf"))
    counts = [len(gguf.GGUFReader(f).tensors) for f in files]
    assert counts[:-1] == [8] * (len(files) - 1) and 1 <= counts[-1] <= 8, counts
    assert f"wrote a set of {len(files)} files" in r.stderr
    for f in files:
        assert str(f) in r.stderr
    # a second run refuses to replace the set without --force, and leaves it alone
    before = [f.read_bytes() for f in files]
    r2 = run_cli("quantize", model, "-t", "Q8_0", "--split-max-tensors", "8", cwd=tmp_path)
    assert r2.returncode == 2 and "--force" in r2.stderr and len(r2.stderr.strip().splitlines()) == 1
    assert [f.read_bytes() for f in files] == before
    assert run_cli("quantize", model, "-t", "Q8_0", "--split-max-tensors", "8", "--force", cwd=tmp_path).returncode == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary file left behind"


def test_split_options_are_checked_and_belong_to_gguf(tiny, tmp_path):
    model = tiny("llama")
    for kw, text in (({"split_max_size": "0GB"}, "--split-max-size"), ({"split_max_size": "lots"}, "--split-max-size"),
                     ({"split_max_tensors": 0}, "--split-max-tensors")):
        with pytest.raises(InputError, match=text):
            qconvert.quantize(model, tmp_path / "x.gguf", **kw)
    with pytest.raises(InputError, match="--split-max-size: not used by"):
        qconvert.quantize(model, tmp_path / "st", format="safetensors", split_max_size="1GB")


def test_a_set_member_that_is_a_device_is_refused_before_writing(tiny, tmp_path):
    model = tiny("llama")
    (tmp_path / "m-00002-of-00003.gguf").symlink_to("/dev/null")
    with pytest.raises(InputError, match="character device"):
        qconvert.quantize(model, tmp_path / "m.gguf", type="Q8_0", split_max_size="700kB", force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-00002-of-00003.gguf"]


def test_an_output_path_that_is_a_device_directory_or_input_is_refused(tiny, tmp_path):
    """The set's members are named from -o: `-o /dev/null` wrote /dev/null-00001-of-00002.gguf
    into /dev, `-o DIR` wrote DIR-00001-... beside the directory, `-o MODEL/config.json`
    wrote beside the input. Each is refused as the one-file output refuses it."""
    model = tiny("llama")
    (tmp_path / "null.gguf").symlink_to("/dev/null")
    (tmp_path / "dir").mkdir()
    for out, text in ((tmp_path / "null.gguf", "character device"), (tmp_path / "dir", "is a directory"),
                      (model / "config.json", "reads")):
        with pytest.raises(InputError, match=text):
            qconvert.quantize(model, out, type="Q8_0", split_max_tensors=20, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "null.gguf"]
    assert not list(model.glob("*.gguf")) and not list(Path("/dev").glob("null-0000*"))
    (tmp_path / "old.gguf").write_bytes(b"an earlier file; the set sits beside it")
    assert len(qconvert.quantize(model, tmp_path / "old.gguf", type="Q8_0", split_max_tensors=20).files) == 2


def test_a_failure_while_writing_leaves_no_member_behind(tiny, tmp_path, monkeypatch):
    """All or nothing: the third member's encoding fails after two files were complete."""
    from qconvert.routes import gguf_split_out

    model = tiny("llama")
    calls = {"n": 0}
    real = gguf_split_out.write_file

    def failing(path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(path, *a, **k)

    monkeypatch.setattr(gguf_split_out, "write_file", failing)
    with pytest.raises(KeyboardInterrupt):
        qconvert.quantize(model, tmp_path / "m.gguf", type="Q8_0", split_max_size="700kB")
    assert list(tmp_path.iterdir()) == []


def test_a_killed_run_leaves_no_member_and_the_next_run_cleans_up(tiny, tmp_path):
    model = tiny("llama")
    code = ("import os, signal, qconvert\n"
            "from qconvert.routes import gguf_split_out as g\n"
            "real, n = g.write_file, [0]\n"
            "def w(*a, **k):\n"
            "    n[0] += 1\n"
            "    if n[0] == 2: os.kill(os.getpid(), signal.SIGKILL)\n"
            "    return real(*a, **k)\n"
            "g.write_file = w\n"
            f"qconvert.quantize({str(model)!r}, {str(tmp_path / 'k.gguf')!r}, type='Q8_0', split_max_size='700kB')\n")
    p = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert p.returncode == -signal.SIGKILL
    assert not list(tmp_path.glob("*.gguf"))  # only the dead run's temporary file
    res = qconvert.quantize(model, tmp_path / "k.gguf", type="Q8_0", split_max_size="700kB")
    assert sorted(tmp_path.iterdir()) == sorted(res.files)


# --- reading a set back ---------------------------------------------------------------------

def test_inspect_reads_a_set_given_any_member(whole_and_split):
    whole, res = whole_and_split
    ref = qconvert.inspect(whole.output)
    for f in (res.files[0], res.files[-1]):
        rep = qconvert.inspect(f)
        assert [x["path"] for x in rep.files] == [str(p) for p in res.files]
        assert rep.file_size == res.file_size and rep.n_params == ref.n_params
        assert [(t.name, t.type, t.shape) for t in rep.tensors] == [(t.name, t.type, t.shape) for t in ref.tensors]
        assert {t.file for t in rep.tensors} == {p.name for p in res.files}
        assert rep.metadata["general.architecture"].value == "llama"
        assert rep.metadata["split.count"].value == len(res.files)
        assert not rep.problems


def test_gguf_input_from_a_set_requantizes_like_the_merged_file(tiny, tmp_path):
    model = tiny("llama")
    whole = qconvert.quantize(model, tmp_path / "f16.gguf", type="F16").output
    parts = qconvert.quantize(model, tmp_path / "f16s.gguf", type="F16", split_max_tensors=5).files
    ref = qconvert.quantize(whole, tmp_path / "a.gguf", type="Q4_K_M")
    for i, given in enumerate((parts[0], parts[2])):
        got = qconvert.quantize(given, tmp_path / f"b{i}.gguf", type="Q4_K_M")
        # the same metadata (split keys are not carried over) and the same tensors: the same file
        assert got.output.read_bytes() == ref.output.read_bytes()
    # the output may not be a member of the set it reads
    with pytest.raises(InputError, match="reads"):
        qconvert.quantize(parts[0], parts[1], type="Q8_0", force=True)


def test_a_set_with_a_missing_or_foreign_member_is_one_line_error(tiny, tmp_path):
    model = tiny("llama")
    parts = qconvert.quantize(model, tmp_path / "s.gguf", type="F16", split_max_tensors=8).files
    assert len(parts) == 3
    other = qconvert.quantize(model, tmp_path / "o.gguf", type="F16", split_max_tensors=5).files
    parts[1].rename(tmp_path / "aside.gguf")
    for call in (lambda: qconvert.inspect(parts[0]), lambda: qconvert.quantize(parts[2], tmp_path / "x.gguf")):
        with pytest.raises(InputError, match="member 2 of the 3-file GGUF set s-00001-of-00003.gguf is missing"):
            call()
    other[1].rename(parts[1])  # member 2 of 5 of another set, under this set's name
    with pytest.raises(FormatError, match="member 2 of 5, but its name says member 2 of 3"):
        qconvert.inspect(parts[0])
    renamed = tmp_path / "loose.gguf"
    parts[0].rename(renamed)
    with pytest.raises(InputError, match=r"member 1 of a GGUF split into 3 files, but not named \.\.\.-00001-of-00003"):
        qconvert.quantize(renamed, tmp_path / "y.gguf")
    assert not (tmp_path / "x.gguf").exists() and not (tmp_path / "y.gguf").exists()


def test_dry_run_names_the_set_and_its_exact_size(tiny, tmp_path, whole_and_split):
    _, res = whole_and_split
    model = tiny("llama")
    dry = qconvert.quantize(model, tmp_path / "parts.gguf", type="Q4_K_M", split_max_size="400kB", dry_run=True)
    n = len(res.files)
    note = next(x for x in dry.notes if "would write a set" in x)
    assert f"a set of {n} files, {tmp_path / f'parts-00001-of-{n:05d}.gguf'} ... parts-{n:05d}-of-{n:05d}.gguf" in note
    largest = max(f.stat().st_size for f in res.files)
    assert f"({res.file_size:,} bytes; the largest file {largest:,})" in note  # the layout is the written one
    assert list(tmp_path.iterdir()) == []


def test_inspect_of_a_directory_holding_one_set_reads_the_set(tiny, tmp_path):
    (tmp_path / "d").mkdir()
    parts = qconvert.quantize(tiny("llama"), tmp_path / "d" / "m.gguf", type="Q8_0", split_max_tensors=10).files
    assert len(parts) == 3
    rep = qconvert.inspect(tmp_path / "d")
    assert [f["path"] for f in rep.files] == [str(p) for p in parts]
    (tmp_path / "d" / "other.gguf").write_bytes(parts[0].read_bytes())
    with pytest.raises(InputError, match="holds several"):
        qconvert.inspect(tmp_path / "d")
