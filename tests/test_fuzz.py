"""scripts/fuzz.py in a small seeded form: hostile files and arguments across every kind
must end in a clean outcome. Also checks that the harness itself sees each kind of failure
(a crash, a hang, a memory blow-up, a modified input, bad JSON), so a pass means something."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


def _load(name: str):
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


fuzz = _load("fuzz")
fuzz_cases = sys.modules["fuzz_cases"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A work directory with the seed files built once for the module."""
    w = tmp_path_factory.mktemp("fuzz")
    fuzz.build_seeds(w, lambda fn: fuzz._check_zero(fuzz.run_child(fn), "building the seed files"))
    return w


def test_small_fuzz_run_has_no_failures(work, tmp_path):
    t0 = time.monotonic()
    s = fuzz.run(seed=9, cases=150, kinds=fuzz_cases.KINDS, subprocess_sample=2, workdir=work,
                 save_failures=tmp_path / "failures")
    assert len(s.results) == 152  # 150 in-process + 2 through the console script
    assert {r.kind for r in s.results} == set(fuzz_cases.KINDS)
    outcomes = {r.outcome for r in s.results}
    assert {"ok", "error"} <= outcomes  # the mutations reach both valid and refused inputs
    assert time.monotonic() - t0 < 300
    if s.fails:  # the report names each failure signature, its area and a replay command
        pytest.fail(s.report(), pytrace=False)


def _case(argv: list[str]) -> "fuzz_cases.Case":
    files = fuzz_cases.args_files()
    protected = [k for k, v in files.items() if not (isinstance(v, str) and (v == "dir" or v.startswith("symlink:")))]
    return fuzz_cases.Case("args", argv, files, "harness check", protected)


def _run(work: Path, argv: list[str], **opts) -> "fuzz.Result":
    import argparse

    o = argparse.Namespace(timeout=opts.get("timeout", 10.0), max_rss_mb=opts.get("max_rss_mb", 1024.0))
    fuzz.preload(work / "seeds")
    res, _, root = fuzz.run_one(_case(argv), 0, work / f"check{time.monotonic_ns()}", work / "seeds", o)
    return res


GGUF = [fuzz_cases.CASE + "/m.gguf"]


def test_harness_sees_each_kind_of_failure(work, monkeypatch):
    """The child is forked from this process, so patches here reach the command it runs."""
    import numpy as np

    import qconvert.cli.inspect as cli_inspect

    assert _run(work, ["inspect", *GGUF]).outcome == "ok"
    assert _run(work, ["inspect", fuzz_cases.CASE + "/nope"]).outcome == "error"

    def crash(*a, **k):
        raise KeyError("boom")

    monkeypatch.setattr(cli_inspect, "inspect", crash)
    res = _run(work, ["inspect", *GGUF])
    assert res.outcome == "internal" and "KeyError" in res.signature

    monkeypatch.setattr(cli_inspect, "inspect", lambda *a, **k: time.sleep(60))
    t0 = time.monotonic()
    res = _run(work, ["inspect", *GGUF], timeout=1.0)
    assert res.outcome == "hang" and time.monotonic() - t0 < 20

    def hog(*a, **k):
        x = np.ones(300 << 17)  # 300 MB
        raise SystemExit(0 if x.sum() else 1)

    monkeypatch.setattr(cli_inspect, "inspect", hog)
    assert _run(work, ["inspect", *GGUF], max_rss_mb=100).outcome == "memory"

    def clobber(path, **k):
        Path(path).parent.joinpath("precious.txt").write_text("changed")
        raise SystemExit(0)

    monkeypatch.setattr(cli_inspect, "inspect", clobber)
    assert _run(work, ["inspect", *GGUF]).outcome == "input-changed"

    def nan_json(*a, **k):
        print(json.dumps({"x": float("nan")}))
        raise SystemExit(0)

    monkeypatch.setattr(cli_inspect, "inspect", nan_json)
    assert _run(work, ["inspect", *GGUF, "--json"]).outcome == "bad-json"

    def two_lines(*a, **k):
        sys.stderr.write("error: one\nsecond line\n")
        raise SystemExit(2)

    monkeypatch.setattr(cli_inspect, "inspect", two_lines)
    assert _run(work, ["inspect", *GGUF]).outcome == "messy-error"


def test_saved_case_replays(work, tmp_path, monkeypatch, capsys):
    import qconvert.cli.inspect as cli_inspect

    def crash(*a, **k):
        raise ZeroDivisionError("replay me")

    monkeypatch.setattr(cli_inspect, "inspect", crash)
    s = fuzz.run(seed=1, cases=8, kinds=("gguf",), workdir=work, save_failures=tmp_path / "saved")
    fails = [r for r in s.results if r.outcome == "internal"]
    assert fails and all("ZeroDivisionError" in r.signature for r in fails), s.report()
    path = Path(s.saved[fails[0].signature][0])
    saved = json.loads(path.read_text())
    assert saved["argv"][0] == "inspect" and saved["outcome"] == "internal"
    case = fuzz.load_case(path)
    assert case.argv == saved["argv"] and set(case.files) == set(saved["files"])
    assert case.files["m.gguf"] == (path.parent / "files" / "m.gguf").read_bytes()
    assert fuzz.main(["--replay", str(path), "--workdir", str(work)]) == 1
    assert "ZeroDivisionError" in capsys.readouterr().out
    monkeypatch.undo()
    assert fuzz.main(["--replay", str(path), "--workdir", str(work)]) == 0  # fixed: the case passes
