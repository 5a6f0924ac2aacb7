"""Interrupting `qconvert quantize --force` (the installed console script) never loses or
corrupts the output, and the next run leaves no temporary files: a small form of
scripts/kill_test.py, plus one SIGKILL that certainly lands mid-write."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _kill_script():
    spec = importlib.util.spec_from_file_location("kill_test_script", ROOT / "scripts" / "kill_test.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


kt = _kill_script()


def test_kills_leave_old_or_new_output_and_no_leftovers(tmp_path):
    res = kt.kill_test(6, seed=3, workdir=tmp_path, write_share=1.0, log=lambda *_: None)
    c = res["counts"]
    assert res["problems"] == [], res["problems"]
    assert c["runs"] == 6 and c.get("old-intact", 0) + c.get("new-complete", 0) == 6, c
    assert c.get("leftovers-after", 0) == 0 and c.get("missing", 0) == 0 and c.get("corrupt", 0) == 0


def test_sigkill_mid_write_keeps_old_output_and_next_run_cleans(tmp_path):
    out = tmp_path / "model.gguf"  # the name kt.leftovers() knows as an output
    base = kt.command() + ["quantize", str(kt.EXAMPLE), "-o", str(out), "--no-progress"]
    kt.run_once(base + ["-t", "Q4_K_M"])
    old = kt.digest(out)
    p = subprocess.Popen(base + ["-t", "Q8_0", "--force"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = tmp_path / f".model.gguf.{p.pid}.partial"  # not the output check's probe file, which comes first
    t0 = time.perf_counter()
    while p.poll() is None and not partial.exists() and time.perf_counter() - t0 < 60:
        time.sleep(0.002)
    p.send_signal(signal.SIGKILL)
    assert p.wait(60) == -signal.SIGKILL, "the run finished before the temporary file was seen"
    assert kt.leftovers(tmp_path) == [partial.name]
    assert kt.digest(out) == old  # the old output, byte for byte
    # a stale partial of a live process (this one) is not touched; the dead one's is
    live = tmp_path / f".other.gguf.{os.getpid()}.partial"
    live.write_bytes(b"x")
    kt.run_once(base + ["-t", "Q8_0", "--force"])
    assert kt.leftovers(tmp_path) == [live.name]
    assert set(kt.gguf_signature(out).values()) >= {"Q8_0"}
