"""Kill test: `qconvert quantize --force` over an existing output, interrupted with SIGINT,
SIGTERM or SIGKILL at a random moment, must leave the old output intact or the new one
complete -- never a missing, truncated or mixed output -- and the next run must leave no
temporary files (.NAME.PID.partial, .NAME.PID.old, GPTQ staging) in the directory.

Each kill alternates the output between two variants (GGUF Q8_0 / Q4_K_M; safetensors
8 / 4 bits), so "old" and "new" differ in bytes and in tensor types: an output equal to
the old one's hash is old-intact; otherwise it must parse completely (GGUF through
gguf.GGUFReader, every tensor's bytes present; safetensors through safe_open, every
tensor read) with exactly the tensors and types the new command writes. After each kill a
run completes in the same directory, and nothing but the outputs may remain there.

    python scripts/kill_test.py --runs 60 --seed 0          # both formats, ~4 minutes
    python scripts/kill_test.py --runs 20 --formats gguf

The installed console script is run (`qconvert`, else `python -m qconvert`), so signal
handling is the CLI's own. Exit status 1 when any output was corrupt or missing, or any
temporary file survived the next run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tiny-llama"
SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}
OUTPUT = {"gguf": "model.gguf", "safetensors": "model-st"}
VARIANTS = {"gguf": (["-t", "Q8_0"], ["-t", "Q4_K_M"]),
            "safetensors": (["--format", "safetensors", "--bits", "8"], ["--format", "safetensors", "--bits", "4"])}


def command() -> list[str]:
    exe = shutil.which("qconvert")
    return [exe] if exe else [sys.executable, "-m", "qconvert"]


def default_sigint() -> None:
    """In the child: SIGINT back to its default. A shell without job control starts
    background commands with SIGINT ignored, the ignore is inherited through exec, and
    Python then installs no KeyboardInterrupt handler: every SIGINT would be a no-op."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)


def digest(path: Path) -> str | None:
    """sha256 of a file, or of a directory's (name, file hash) list; None if missing."""
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(path.rglob("*")):
            h.update(str(f.relative_to(path)).encode())
            if f.is_file():
                h.update(hashlib.sha256(f.read_bytes()).digest())
        return h.hexdigest()
    return None


def gguf_signature(path: Path) -> dict:
    """{tensor: type} of a complete GGUF file; raises on a truncated or garbled one."""
    import gguf

    r = gguf.GGUFReader(path)
    size = path.stat().st_size
    sig = {}
    for t in r.tensors:
        if t.data.nbytes != t.n_bytes or t.data_offset + t.n_bytes > size:
            raise ValueError(f"{t.name}: {t.data.nbytes} of {t.n_bytes} bytes present")
        sig[t.name] = t.tensor_type.name
    return sig


def safetensors_signature(path: Path) -> dict:
    """{tensor: (dtype, shape)} over every shard of a complete output directory (config,
    index and shards); every tensor is read, so a truncated shard raises."""
    from safetensors import safe_open

    config = json.loads((path / "config.json").read_text())
    if "quantization_config" not in config:
        raise ValueError("config.json has no quantization_config")
    index = path / "model.safetensors.index.json"
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() \
        else ["model.safetensors"]
    sig = {}
    for shard in shards:
        with safe_open(str(path / shard), "pt") as f:  # torch: numpy has no bfloat16
            for name in f.keys():
                a = f.get_tensor(name)
                sig[name] = (str(a.dtype), tuple(a.shape))
    return sig


def signature(fmt: str, path: Path) -> dict:
    return gguf_signature(path) if fmt == "gguf" else safetensors_signature(path)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in OUTPUT.values())


def run_once(cmd: list[str], watch: Path | None = None, timeout: float = 300) -> tuple[float, float]:
    """Run to completion (an error if it fails); returns (seconds, seconds from the first
    temporary file appearing in `watch` to the end: the write window)."""
    t0 = time.perf_counter()
    p = start(cmd)
    seen = None
    while watch is not None and p.poll() is None and time.perf_counter() - t0 < timeout:
        if seen is None and leftovers(watch):
            seen = time.perf_counter()
        time.sleep(0.005)
    _, err = p.communicate(timeout=timeout)
    end = time.perf_counter()
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {err.strip()[-500:]}")
    return end - t0, end - (seen or end)


def kill_test(runs: int, seed: int, workdir: Path, model: Path = EXAMPLE,
              formats: tuple[str, ...] = ("gguf", "safetensors"), write_share: float = 0.5, log=print) -> dict:
    """Run `runs` kills; returns {"counts": ..., "problems": [...]}; a bad outcome is a
    problem, not an exception. The signal comes at a uniformly random moment of a run's
    duration, or, for a `write_share` of the runs, at a random moment of the write window
    (from its temporary output appearing to its end, where a kill can do harm)."""
    rng = random.Random(seed)
    outdir = workdir / "out"
    outdir.mkdir(parents=True, exist_ok=True)
    base = command() + ["quantize", str(model)]

    def cmd(fmt: str, variant: int) -> list[str]:
        return base + ["-o", str(outdir / OUTPUT[fmt]), "--force", "--no-progress", *VARIANTS[fmt][variant]]

    # expected signatures and durations: each variant once, complete; variant 0 stays on disk
    expect, duration, window, current = {}, {}, {}, {}
    for fmt in formats:
        times = []
        for variant in (1, 0):
            times.append(run_once(cmd(fmt, variant), watch=outdir))
            expect[(fmt, variant)] = signature(fmt, outdir / OUTPUT[fmt])
        # the shorter of two runs: a kill aimed inside a run should mostly land inside it
        duration[fmt], window[fmt], current[fmt] = min(t for t, _ in times), min(w for _, w in times), 0
    c = Counter()
    problems: list[str] = []
    for i in range(runs):
        fmt = formats[i % len(formats)]
        sig_name = rng.choice(sorted(SIGNALS))
        out = outdir / OUTPUT[fmt]
        old, new = digest(out), 1 - current[fmt]
        in_write = rng.random() < write_share
        delay = rng.uniform(0.0, window[fmt] if in_write else duration[fmt])
        t0 = time.perf_counter()
        p = start(cmd(fmt, new))
        if in_write:  # wait for its temporary output to appear, then a little more
            while p.poll() is None and not leftovers(outdir) and time.perf_counter() - t0 < 60:
                time.sleep(0.005)
        try:
            p.wait(timeout=delay)
            signalled = False
        except subprocess.TimeoutExpired:
            p.send_signal(SIGNALS[sig_name])
            signalled = True
        delay = time.perf_counter() - t0
        _, err = p.communicate(timeout=300)
        c["runs"] += 1
        c[f"format {fmt}"] += 1
        c[f"signal {sig_name}" if signalled else "finished before the signal"] += 1
        if signalled:
            c[f"exit {sig_name} -> {p.returncode}"] += 1
            if "Traceback" in err:
                c[f"traceback on {sig_name}"] += 1
        now = digest(out)
        if now is None:
            outcome = "missing"
        elif now == old:
            outcome = "old-intact"
        else:
            try:
                outcome = "new-complete" if signature(fmt, out) == expect[(fmt, new)] else "corrupt"
            except Exception as e:  # noqa: BLE001  (any failure to read it fully is corruption)
                outcome = f"corrupt ({type(e).__name__}: {e})"[:120]
        c[outcome.split(" (")[0]] += 1
        if outcome != "old-intact" and outcome != "new-complete":
            problems.append(f"run {i} {fmt} {sig_name} after {delay:.2f}s: {outcome}")
        if outcome == "new-complete":
            current[fmt] = new
        left = leftovers(outdir)
        c["leftovers-before-cleanup"] += len(left)
        c["runs with leftovers"] += bool(left)
        # the next run in the directory completes and removes what the killed one left
        variant = 1 - current[fmt]
        run_once(cmd(fmt, variant))
        current[fmt] = variant
        after = leftovers(outdir)
        c["leftovers-after"] += len(after)
        if after:
            problems.append(f"run {i}: left after the next run: {after}")
        log(f"{i:3d} {fmt:<11} {sig_name if signalled else 'finished':<8} at {delay:5.2f}s "
            f"rc {p.returncode:>4}: {outcome}; leftovers {len(left)} -> {len(after)}")
    return {"counts": dict(c), "problems": problems}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=60, help="kills (default 60)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", type=Path, default=EXAMPLE, help="HF model directory (default examples/tiny-llama)")
    ap.add_argument("--formats", default="gguf,safetensors", help="comma-separated: gguf, safetensors")
    ap.add_argument("--workdir", type=Path, default=None, help="where outputs go (default: a temporary directory)")
    ap.add_argument("--write-share", type=float, default=0.5,
                    help="share of kills aimed at the write (after the temporary output appears)")
    args = ap.parse_args(argv)
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    unknown = [f for f in formats if f not in OUTPUT]
    if unknown or not formats:
        ap.error(f"--formats: choose from {', '.join(OUTPUT)}")
    with tempfile.TemporaryDirectory(prefix="qconvert-kill-") as td:
        res = kill_test(args.runs, args.seed, args.workdir or Path(td), args.model, formats, args.write_share)
    counts = res["counts"]
    print("\ncounts:")
    for k in sorted(counts):
        print(f"  {k}: {counts[k]}")
    for p in res["problems"]:
        print("PROBLEM:", p)
    return 1 if res["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
