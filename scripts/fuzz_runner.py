"""Running one fuzz case (scripts/fuzz.py): materialize its files, run the CLI in a child with
fds 1/2 captured, limits and a timeout, and report what happened.

Where the children come from. A case server (this file run with --serve: a fresh interpreter,
started on first use and kept for the fuzzing process's life) imports qconvert, warms the
commands up once and from then on only forks: every case, and the seed build, runs in a child
of that server. The process that fuzzes never forks. Under pytest that process may already
hold threads (torch's and numba's OpenMP teams, llama.cpp's pool), and a child forked from it
that starts an OpenMP team waits for threads that were never copied: the seed build's Q8_0
kernel hung for the full 600 s after tests/test_architectures.py. The server stays
single-threaded (it checks before every fork and refuses otherwise), so its children start
clean; a case still costs a fork, not an interpreter start; and the server, as the children's
parent, reads each one's peak RSS (wait4) and kills it at the hard timeout.

Protocol: one JSON object per line on the server's stdin, one reply per line on its stdout.
    {"op": "preload", "seeds": DIR}                                       -> {"threads": 1}
    {"op": "case", "argv", "cwd", "side", "timeout", "debug", "inject"}   -> {"code", "rss", "base", "killed"}
    {"op": "call", "fn": "module:function", "args": [...], "timeout"}     -> {"code", "killed"}
A reply {"error": "..."} means the server cannot go on safely (the fuzzer stops).
"""

from __future__ import annotations

import atexit
import io
import json
import os
import resource
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from fuzz_cases import CASE, Case

SCRIPTS = Path(__file__).resolve().parent
AS_HEADROOM = 4 << 30  # address space a case may add before allocations fail (MemoryError, not the OOM killer)
SERVER_START_S = 180.0  # interpreter start + importing qconvert, on a loaded 2-core machine
DEVICES = ("/dev/null", "/dev/full")  # what an odd -o may aim at: must stay the device nodes they are


class CaseTimeout(BaseException):
    """Raised in the child by SIGALRM; BaseException so no `except Exception` swallows it."""


class ServerLost(RuntimeError):
    """The case server died or stopped answering (it is restarted on the next request)."""


def _statm_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _wait(pid: int, timeout: float, group: bool = False) -> tuple[int, float, bool]:
    """(exit status, peak RSS bytes, killed for the timeout); `group`: pid leads a process
    group, killed whole (what the case started goes too)."""
    deadline, delay, killed = time.monotonic() + timeout, 0.001, False
    while True:
        wpid, status, ru = os.wait4(pid, os.WNOHANG)
        if wpid:
            if group:
                _killpg(pid)
            return os.waitstatus_to_exitcode(status), ru.ru_maxrss * 1024.0, killed
        if time.monotonic() > deadline and not killed:
            _killpg(pid) if group else os.kill(pid, signal.SIGKILL)
            killed = True
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# ------------------------------------------------------------------ the fuzzing side


class CaseServer:
    """The parent's handle on the server process (see module doc)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.seeds: str | None = None

    def _start(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(SCRIPTS.parent), *filter(None, [os.environ.get("PYTHONPATH")])]),
               # numpy's OpenBLAS would start a worker thread at import; the server must have none
               "OPENBLAS_NUM_THREADS": "1"}
        # its own session: a Ctrl-C at the terminal reaches the fuzzer, which closes it
        self.proc = subprocess.Popen([sys.executable, str(SCRIPTS / "fuzz_runner.py"), "--serve"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True,
                                     start_new_session=True, close_fds=True)
        self.seeds = None

    def ask(self, msg: dict, timeout: float) -> dict:
        starting = self.proc is None or self.proc.poll() is not None
        if starting:
            self._start()
        if msg["op"] == "case" and self.seeds != msg.get("seeds") and msg.get("seeds"):
            self.ask({"op": "preload", "seeds": msg["seeds"]}, SERVER_START_S)
            self.seeds = msg["seeds"]
        ready: list = []
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
            ready, _, _ = select.select([self.proc.stdout], [], [], timeout + (SERVER_START_S if starting else 0))
            line = self.proc.stdout.readline() if ready else ""
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            self.close()
            raise ServerLost(f"the case server {'died' if ready else 'did not answer'} ({msg['op']})")
        reply = json.loads(line)
        if "error" in reply:
            self.close()
            raise RuntimeError(f"fuzz case server: {reply['error']}")
        return reply

    def close(self) -> None:
        if self.proc is not None:
            _killpg(self.proc.pid)
            self.proc.wait()
            for f in (self.proc.stdin, self.proc.stdout):
                try:
                    f.close()
                except OSError:
                    pass
            self.proc = None


_SERVER = CaseServer()
atexit.register(_SERVER.close)


def server() -> CaseServer:
    return _SERVER


def call_clean(fn: str, *args: str, timeout: float = 300) -> None:
    """Run `module:function`(*args) in a child of the case server: a clean, single-threaded
    process whatever this one holds. Raises SystemExit when it fails."""
    r = _SERVER.ask({"op": "call", "fn": fn, "args": list(args), "timeout": timeout}, timeout + 10)
    if r["code"] != 0:
        raise SystemExit(f"fuzz: {fn} failed ({'killed after ' + str(timeout) + ' s' if r['killed'] else r['code']})")


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
        elif v == "fifo":
            os.mkfifo(p)
        elif v.startswith("chardev:"):  # a device node of the case's own (root only), e.g. chardev:1:3 = null
            major, minor = map(int, v.split(":")[1:])
            try:
                os.mknod(p, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
            except PermissionError:
                os.symlink({3: "/dev/null", 7: "/dev/full"}.get(minor, "/dev/null"), p)
        elif v.startswith("symlink:"):
            p.symlink_to(v[len("symlink:"):].replace(CASE, str(root)))
        elif v.startswith("copy:"):
            shutil.copyfile(seeds / v[len("copy:"):], p)
        elif v.startswith("hardlink:"):  # another file of this case, made first (files are in order)
            os.link(root / v[len("hardlink:"):], p)
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
        small = (root / rel).read_bytes() if st.st_size < (1 << 20) and stat.S_ISREG(st.st_mode) else None
        snap[rel] = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode, small)
    return snap


def tree(root: Path) -> dict[str, tuple]:
    """Every entry under `root` (not following links): the identity and content stamp of each,
    to see afterwards what a case created, removed or changed outside its outputs."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns, st.st_rdev)
    return out


def devices(paths=DEVICES) -> dict[str, tuple | None]:
    return {d: _node(d) for d in paths}


def _node(path: str) -> tuple | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_mode, st.st_rdev, st.st_ino)


def restore_devices(before: dict[str, tuple]) -> list[str]:
    """Put back any device node in DEVICES a case replaced or removed; the names restored.
    Without /dev/null every other process on the machine misbehaves: fix it at once."""
    fixed = []
    for d, was in before.items():
        if was is None or _node(d) == was:
            continue
        try:
            if os.path.lexists(d):
                os.unlink(d)
            os.mknod(d, 0o666 | stat.S_IFCHR, was[1])
            os.chmod(d, 0o666)
            fixed.append(d)
        except OSError as e:
            print(f"fuzz: !!! {d} was replaced and could not be restored ({e}); "
                  f"run: mknod -m 666 {d} c {os.major(was[1])} {os.minor(was[1])}", file=sys.stderr)
    for d in fixed:
        print(f"fuzz: !!! {d} was replaced by a case and has been restored (mknod)", file=sys.stderr)
    return fixed


def execute(case: Case, root: Path, timeout: float, debug: bool = False, via: str = "fork",
            inject: tuple[str, ...] = (), seeds: Path | None = None) -> dict:
    """Run a materialized case; {code, out, err, seconds, rss_delta, hang}. `inject`: faults
    of fuzz_faults.py put in place of qconvert functions ("module:attr=fault"), for checking
    the harness itself."""
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
            p = subprocess.Popen(cmd + argv, cwd=root, env=env, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
            code, rss, killed = _wait(p.pid, timeout + 20, group=True)  # + interpreter start and imports
            p.returncode = code
        info = {"code": None if killed else code, "hang": "killed (subprocess)" if killed else ""}
        delta = 0.0
    else:
        msg = {"op": "case", "argv": argv, "cwd": str(root), "side": str(side), "timeout": timeout,
               "debug": debug, "inject": list(inject), "seeds": str(seeds) if seeds else None}
        try:
            r = _SERVER.ask(msg, timeout + 30)
        except ServerLost as e:
            r = {"code": None, "killed": True, "rss": 0.0, "base": 0.0, "lost": str(e)}
        delta = max(0.0, r["rss"] - r["base"])
        try:
            info = json.loads(res.read_text())
        except (OSError, ValueError):
            killed = r["killed"]
            info = {"code": None if killed else f"died ({r['code']})",
                    "hang": (r.get("lost") or "killed (C code?)") if killed else ""}
    info.update(out=out.read_text(errors="replace"), err=err.read_text(errors="replace"),
                seconds=time.monotonic() - t0, rss_delta=delta, argv=argv)
    shutil.rmtree(side, ignore_errors=True)
    return info


# ------------------------------------------------------------------ the server side


def serve() -> None:
    """The server loop (see module doc). Its own fds 0 and 1 become /dev/null and stderr, so
    nothing a child or a library prints can reach the protocol pipes, which the children close."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the fuzzer decides when this ends
    requests = os.fdopen(os.dup(0), "r")
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(os.open(os.devnull, os.O_RDWR), 0)
    os.dup2(2, 1)
    pipes = (requests.fileno(), replies.fileno())
    import qconvert.cli.app  # noqa: F401  (what every child would import, imported once)

    for line in requests:
        msg = json.loads(line)
        try:
            reply = _serve_one(msg, pipes)
        except Exception as e:  # a server bug, not a case's: stop the fuzzer with it
            reply = {"error": f"{type(e).__name__}: {e}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _serve_one(msg: dict, pipes: tuple[int, int]) -> dict:
    if msg["op"] == "preload":
        preload(Path(msg["seeds"]))
        return {"threads": _threads()}
    n = _threads()
    if n != 1:
        return {"error": f"{n} threads in the case server: a forked child could deadlock, not forking"}
    base = _statm_rss()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.setpgid(0, 0)
        for fd in pipes:
            os.close(fd)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        try:
            if msg["op"] == "case":
                _child_main(msg["argv"], Path(msg["cwd"]), Path(msg["side"]), msg["timeout"], msg["debug"],
                            msg["inject"])
                code = 0
            else:
                code = _child_call(msg["fn"], msg["args"])
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
    code, rss, killed = _wait(pid, msg["timeout"] + 5, group=True)
    return {"code": code, "rss": rss, "base": base, "killed": killed}


def _child_call(fn: str, args: list[str]) -> int:
    import importlib

    try:
        module, name = fn.split(":")
        getattr(importlib.import_module(module), name)(*args)
        return 0
    except BaseException:
        traceback.print_exc()
        return 1


def preload(seeds: Path) -> None:
    """Import and warm up what the commands use, once, in the server, so a case costs
    milliseconds. Nothing here runs a kernel: OpenMP threads must not exist in the process
    that forks (the server checks)."""
    import contextlib

    from qconvert.cli.app import main

    for argv in (["inspect", str(seeds / "writer.gguf"), "--json"], ["estimate-memory", "--params", "7B"],
                 ["quantize", str(seeds / "model"), "--dry-run", "-t", "Q8_0"], ["quantize", "--help"]):
        sys.argv = ["qconvert", *argv]
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            try:
                main()
            except SystemExit:
                pass


def _inject(specs: list[str]) -> None:
    import importlib

    import fuzz_faults

    for spec in specs:
        target, fault = spec.split("=")
        module, attr = target.split(":")
        setattr(importlib.import_module(module), attr, getattr(fuzz_faults, fault))


def _child_main(argv: list[str], cwd: Path, side: Path, timeout: float, debug: bool, inject: list[str]) -> None:
    """Runs in the forked child: the CLI with argv, fds 1/2 to files, limits, soft timeout."""
    out, err, res = side / "out", side / "err", side / "res"
    fo, fe = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fo, 1)
    os.dup2(fe, 2)
    # fresh streams on fds 1 and 2, strict UTF-8 like a real UTF-8 terminal or pipe
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
    _inject(inject)

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


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve()
    else:
        sys.exit("usage: fuzz_runner.py --serve  (started by scripts/fuzz.py)")
