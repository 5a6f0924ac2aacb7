"""Running one fuzz case (scripts/fuzz.py): materialize its files, run the CLI in a forked
child with fds 1/2 captured, limits and a timeout, and report what happened. See fuzz.py's
module doc for why a fork."""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from fuzz_cases import CASE, Case

AS_HEADROOM = 4 << 30  # address space a case may add before allocations fail (MemoryError, not the OOM killer)


class CaseTimeout(BaseException):
    """Raised in the child by SIGALRM; BaseException so no `except Exception` swallows it."""



def _statm_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_child(fn, timeout: float = 600) -> int:
    """fn() in a forked child; its exit status (0 when fn returned)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 0
        try:
            fn()
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return _wait(pid, timeout)[0]


def _wait(pid: int, timeout: float) -> tuple[int, float, bool]:
    """(exit status, peak RSS bytes, killed for the timeout)."""
    deadline, delay, killed = time.monotonic() + timeout, 0.001, False
    while True:
        wpid, status, ru = os.wait4(pid, os.WNOHANG)
        if wpid:
            code = os.waitstatus_to_exitcode(status)
            return code, ru.ru_maxrss * 1024.0, killed
        if time.monotonic() > deadline and not killed:
            os.kill(pid, signal.SIGKILL)
            killed = True
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


def materialize(case: Case, root: Path, seeds: Path) -> Path:
    root.mkdir(parents=True)
    (root / "home").mkdir()
    tag = str(root).encode()
    for rel, v in case.files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(v, bytes):
            p.write_bytes(v.replace(CASE.encode(), tag) if rel.endswith(".json") else v)
        elif v == "dir":
            p.mkdir(exist_ok=True)
        elif v.startswith("symlink:"):
            p.symlink_to(v[len("symlink:"):].replace(CASE, str(root)))
        else:
            try:
                os.link(seeds / v[len("seed:"):], p)
            except OSError:
                shutil.copyfile(seeds / v[len("seed:"):], p)
    return root


def snapshot(root: Path, rels: list[str]) -> dict[str, tuple]:
    snap = {}
    for rel in rels:
        try:
            st = os.lstat(root / rel)
        except OSError:
            continue
        small = (root / rel).read_bytes() if st.st_size < (1 << 20) and os.path.isfile(root / rel) else None
        snap[rel] = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode, small)
    return snap


def _child_main(argv: list[str], cwd: Path, out: Path, err: Path, res: Path, timeout: float, debug: bool) -> None:
    """Runs in the forked child: the CLI with argv, fds 1/2 to files, limits, soft timeout."""
    fo, fe = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fo, 1)
    os.dup2(fe, 2)
    # fresh streams on fds 1 and 2, as an interpreter would have (under pytest the inherited
    # sys.stdout is a capture buffer); strict UTF-8 like a real UTF-8 terminal or pipe
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False), encoding="utf-8")
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(os.fdopen(2, "wb", closefd=False), encoding="utf-8",
                                                   errors="backslashreplace", line_buffering=True)
    os.chdir(cwd)
    os.environ.update(HOME=str(cwd / "home"), COLUMNS="120", TMPDIR=str(cwd / "home"))
    os.environ.pop("QCONVERT_DEBUG", None)
    if debug:
        os.environ["QCONVERT_DEBUG"] = "1"
    tempfile.tempdir = None
    vm = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (vm + AS_HEADROOM, resource.RLIM_INFINITY))

    hung: list[str] = []

    def on_alarm(signum, frame):
        # noted here: the CLI maps every exception (this one too) to an exit code
        hung.append("".join(traceback.format_stack(frame)[-8:]))
        raise CaseTimeout()

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    sys.argv = ["qconvert", *argv]
    info: dict = {"code": 0}
    try:
        from qconvert.cli.app import main

        main()
    except SystemExit as e:
        info["code"] = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if isinstance(e.code, str):
            sys.stderr.write(e.code + "\n")
    except CaseTimeout:
        pass
    except BaseException:
        traceback.print_exc()
        info["code"] = "escaped"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    if hung:
        info.update(code=None, hang=hung[0])
    sys.stdout.flush()
    sys.stderr.flush()
    res.write_text(json.dumps(info))


def execute(case: Case, root: Path, timeout: float, debug: bool = False, via: str = "fork") -> dict:
    """Run a materialized case; {code, out, err, seconds, rss_delta, hang}."""
    argv = [a.replace(CASE, str(root)) for a in case.argv]
    side = root.parent / (root.name + ".io")
    side.mkdir(exist_ok=True)
    out, err, res = side / "out", side / "err", side / "res"
    t0 = time.monotonic()
    if via == "subprocess":
        exe = shutil.which("qconvert")
        cmd = [exe] if exe else [sys.executable, "-m", "qconvert"]
        env = {**os.environ, "HOME": str(root / "home"), "COLUMNS": "120"}
        env.pop("QCONVERT_DEBUG", None)
        with open(out, "wb") as fo, open(err, "wb") as fe:
            p = subprocess.Popen(cmd + argv, cwd=root, env=env, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL)
            code, rss, killed = _wait(p.pid, timeout + 20)  # + interpreter start and imports
            p.returncode = code
        info = {"code": None if killed else code, "hang": "killed (subprocess)" if killed else ""}
        delta = 0.0
    else:
        base = _statm_rss()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                _child_main(argv, root, out, err, res, timeout, debug)
            finally:
                os._exit(0)
        code, rss, killed = _wait(pid, timeout + 5)
        delta = max(0.0, rss - base)
        try:
            info = json.loads(res.read_text())
        except (OSError, ValueError):
            info = {"code": None if killed else f"died ({code})", "hang": "killed (C code?)" if killed else ""}
    info.update(out=out.read_text(errors="replace"), err=err.read_text(errors="replace"),
                seconds=time.monotonic() - t0, rss_delta=delta, argv=argv)
    shutil.rmtree(side, ignore_errors=True)
    return info


