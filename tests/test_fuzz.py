"""scripts/fuzz.py in a small seeded form: hostile files and arguments across every kind
must end in a clean outcome. Also checks that the harness itself sees each kind of failure
(a crash, a hang, a memory blow-up, a modified input, a stray file, bad JSON), so a pass means
something, and that it works whatever threads this process already runs."""

from __future__ import annotations

import importlib.util
import json
import os
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
    fuzz.make_seeds(w)
    return w


def test_small_fuzz_run_has_no_failures(work, tmp_path):
    t0 = time.monotonic()
    s = fuzz.run(seed=9, cases=150, kinds=fuzz_cases.KINDS, subprocess_sample=2, workdir=work,
                 save_failures=tmp_path / "failures", time_limit=240)
    assert len(s.results) == 152  # 150 in-process + 2 through the console script
    assert {r.kind for r in s.results} == set(fuzz_cases.KINDS)
    outcomes = {r.outcome for r in s.results}
    assert {"ok", "error"} <= outcomes  # the mutations reach both valid and refused inputs
    assert time.monotonic() - t0 < 240
    if s.fails:  # the report names each failure signature, its area and a replay command
        pytest.fail(s.report(), pytrace=False)


def test_fuzz_unaffected_by_threads_in_this_process(tmp_path):
    """Under pytest the process may already run OpenMP teams (torch's, numba's) when the fuzz
    test starts; a child forked from it that starts its own team waits forever. The harness
    never forks from this process: seeds and cases still complete, within their limits."""
    import torch

    import qconvert

    x = torch.randn(512, 512)
    assert float((x @ x).abs().sum()) > 0  # torch's intra-op OpenMP team is up
    qconvert.quantize(ROOT / "examples" / "tiny-llama", tmp_path / "q.gguf", type="Q8_0")  # numba's too
    assert len(os.listdir("/proc/self/task")) > 1
    t0 = time.monotonic()
    s = fuzz.run(seed=5, cases=12, kinds=("output", "tokenizer"), workdir=tmp_path / "w", time_limit=120)
    assert len(s.results) == 12 and not [r for r in s.results if r.outcome == "hang"], s.report()
    assert time.monotonic() - t0 < 120


def test_replaced_device_node_is_restored(tmp_path):
    """What the runner does when a case replaces /dev/null: put the node back at once. Shown
    on a device node of this test's own."""
    import stat

    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    runner = sys.modules["fuzz_runner"]
    node = str(tmp_path / "null")
    os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    before = runner.devices([node])
    assert runner.restore_devices(before) == []  # untouched: nothing to do
    os.unlink(node)
    Path(node).write_text("a regular file now")
    assert runner.restore_devices(before) == [node]
    st = os.lstat(node)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)


def _case(argv: list[str]) -> "fuzz_cases.Case":
    files = fuzz_cases.args_files()
    protected = [k for k, v in files.items() if not (isinstance(v, str) and (v == "dir" or v.startswith("symlink:")))]
    return fuzz_cases.Case("args", argv, files, "harness check", protected)


def _run(work: Path, argv: list[str], fault: str = "", **opts) -> "fuzz.Result":
    """One case with `fault` (of scripts/fuzz_faults.py) in place of qconvert's inspect."""
    import argparse

    o = argparse.Namespace(timeout=opts.get("timeout", 10.0), max_rss_mb=opts.get("max_rss_mb", 1024.0))
    inject = (f"qconvert.cli.inspect:inspect={fault}",) if fault else ()
    res, _, root = fuzz.run_one(_case(argv), 0, work / f"check{time.monotonic_ns()}", work / "seeds", o,
                                inject=inject)
    return res


GGUF = [fuzz_cases.CASE + "/m.gguf"]


def test_harness_sees_each_kind_of_failure(work):
    """Faults put in place of inspect inside the case's child (the case server's, so a patch
    in this process would not reach it) must each show as their failure."""
    assert _run(work, ["inspect", *GGUF]).outcome == "ok"
    assert _run(work, ["inspect", fuzz_cases.CASE + "/nope"]).outcome == "error"

    res = _run(work, ["inspect", *GGUF], "crash")
    assert res.outcome == "internal" and "KeyError" in res.signature

    t0 = time.monotonic()
    res = _run(work, ["inspect", *GGUF], "sleep", timeout=1.0)
    assert res.outcome == "hang" and time.monotonic() - t0 < 20
    t0 = time.monotonic()
    res = _run(work, ["inspect", *GGUF], "stuck", timeout=1.0)  # deaf to the soft timeout: killed
    assert res.outcome == "hang" and "killed" in res.detail + res.signature and time.monotonic() - t0 < 20

    assert _run(work, ["inspect", *GGUF], "hog", max_rss_mb=100).outcome == "memory"
    assert _run(work, ["inspect", *GGUF], "clobber").outcome == "input-changed"
    res = _run(work, ["inspect", *GGUF], "litter")
    assert res.outcome == "outside-changed" and "model/stray.txt created" in res.detail
    assert _run(work, ["inspect", *GGUF, "--json"], "nan_json").outcome == "bad-json"
    assert _run(work, ["inspect", *GGUF], "two_lines").outcome == "messy-error"


def test_saved_case_replays(work, tmp_path, capsys):
    inject = ("qconvert.cli.inspect:inspect=divide",)
    s = fuzz.run(seed=1, cases=8, kinds=("gguf",), workdir=work, save_failures=tmp_path / "saved", inject=inject)
    fails = [r for r in s.results if r.outcome == "internal"]
    assert fails and all("ZeroDivisionError" in r.signature for r in fails), s.report()
    path = Path(s.saved[fails[0].signature][0])
    saved = json.loads(path.read_text())
    assert saved["argv"][0] == "inspect" and saved["outcome"] == "internal"
    assert "ZeroDivisionError" in saved["debug_trace"]
    case = fuzz.load_case(path)
    assert case.argv == saved["argv"] and set(case.files) == set(saved["files"])
    assert case.files["m.gguf"] == (path.parent / "files" / "m.gguf").read_bytes()
    assert fuzz.main(["--replay", str(path), "--workdir", str(work), "--inject", inject[0]]) == 1
    assert "ZeroDivisionError" in capsys.readouterr().out
    assert fuzz.main(["--replay", str(path), "--workdir", str(work)]) == 0  # fixed: the case passes
