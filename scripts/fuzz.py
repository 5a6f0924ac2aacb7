#!/usr/bin/env python
"""Seeded fuzzer for the qconvert CLI: hostile GGUF, safetensors, index, config and tokenizer
files (tokenizer.json, tokenizer.model, chat_template.jinja...), odd argument lists, odd output
paths (devices, FIFOs, directories, input files, links), damaged importance matrices (GGUF and
.dat), sensitivity caches and calibration texts, each run through `qconvert inspect`,
`quantize` (dry run and, for a share of cases, a real conversion) or `estimate-memory`.
Kinds: gguf, safetensors, index, config, tokenizer, args, output, imatrix, cache, calibration,
and (scripts/fuzz_models.py) family, embedding, quantized, split, eval: MoE and newer-family
configs and expert tensors, sentence-transformers files, FP8/GPTQ checkpoints, GGUF split
sets and `qconvert eval`.

    python scripts/fuzz.py --seed 1 --cases 2000
    python scripts/fuzz.py --minutes 3 --kinds gguf,config --save-failures failures/
    python scripts/fuzz.py --replay failures/internal-keyerror-x/17/case.json [--debug]

How a case runs. The CLI entry point (`qconvert.cli.app.main`, sys.argv patched) is called in
a child forked from a case server: a fresh, single-threaded interpreter that has imported
qconvert once (fuzz_runner.py), so a case costs milliseconds, not an interpreter start, and
nothing this process holds (under pytest: torch's or numba's OpenMP threads, which deadlock a
forked child) reaches the cases. A child rather than a call in the server itself: a hang inside
C code (a regex, numpy) ignores signal.alarm but not SIGKILL; a huge allocation hits the
child's address-space limit instead of the server; one case cannot leave state (caches, cwd,
handlers) to the next; and the child's peak RSS (os.wait4) is that case's memory. stdout and
stderr are captured at the file-descriptor level. The child has a soft timeout (SIGALRM, which
records where Python was) and the server a hard one (SIGKILL to the child's process group).
`--subprocess-sample K` also runs K of the cases through the installed `qconvert` console
script, which catches what the in-process call cannot (import-time faults, the real exit path).

Outcomes. ok (exit 0) and error (exit 2, 3, or 4 with a budget option; one stderr line
"error: ...", besides note:/warning: lines, or click's usage text) are passes. FAIL:
internal (exit 70, a traceback, "internal error"), hang (past --timeout), memory (peak RSS
over --max-rss-mb), wrong-exit (any other code; 4 without a budget option), messy-error (a
clean code with more than one error line), bad-json (`--json` output json.loads refuses,
NaN included), unsafe-text (a control character or bidi override printed raw: file
content must be escaped before it reaches a terminal), accepted (exit 0 where the case says
the input must be refused: NaN/Inf weights, an index entry outside the model directory,
config values contradicting the tensors, a GGUF layout llama.cpp refuses), missed-problem
(inspect shows no problem for a GGUF whose tensor count or offset a mutation surely broke),
input-changed (an input or decoy file modified or replaced), outside-changed (any other
entry of the case directory created, removed or changed that is not at or under one of the
command's output paths), device-replaced (/dev/null or /dev/full no longer the device node it
was: restored at once with mknod, and reported), leftover (a *.partial file left behind), bad-output (a conversion that exits 0 but writes a GGUF that does not read
back cleanly, or holds NaN/Inf in its float data or block scales).

The summary gives counts per kind and outcome, and each distinct failure signature (outcome
+ exception type + message head, paths and numbers blanked) with its first cases; with
--save-failures DIR the first few cases of each signature are saved for --replay.
Cases are seeded per index and kind: case i of seed S is the same whatever --cases says. The
kinds take turns, the costly ones (a sensitivity measurement, a calibration pass: seconds, not
milliseconds) once per round and the others three times (fuzz_cases.HEAVY).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shlex
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fuzz_cases import GENERATORS, HEAVY, KINDS, Case, Seeds  # noqa: E402
from fuzz_judge import FAILS, area_of, judge, output_paths  # noqa: E402
from fuzz_runner import call_clean, devices, execute, materialize, restore_devices, snapshot, tree  # noqa: E402
from fuzz_seeds import build_seeds  # noqa: E402


@dataclass
class Result:
    index: int
    kind: str
    outcome: str
    signature: str = ""
    area: str = ""
    detail: str = ""
    seconds: float = 0.0
    rss_mb: float = 0.0
    via: str = "fork"


@dataclass
class Summary:
    seed: int
    seconds: float = 0.0
    results: list[Result] = field(default_factory=list)
    saved: dict[str, list[str]] = field(default_factory=dict)

    @property
    def fails(self) -> list[Result]:
        return [r for r in self.results if r.outcome in FAILS]

    def table(self) -> str:
        outcomes = ["ok", "error"] + [o for o in FAILS if any(r.outcome == o for r in self.results)]
        counts = Counter((r.kind if r.via == "fork" else f"{r.kind} (subprocess)", r.outcome) for r in self.results)
        rows = sorted({k for k, _ in counts}, key=lambda k: (k.endswith(")"), KINDS.index(k.split()[0])))
        w = max([len(r) for r in rows] + [5])
        lines = [f"{'kind':<{w}} " + " ".join(f"{o:>13}" for o in outcomes) + f" {'total':>7}"]
        for k in rows + ["total"]:
            c = [sum(counts[(kk, o)] for kk in rows) if k == "total" else counts[(k, o)] for o in outcomes]
            lines.append(f"{k:<{w}} " + " ".join(f"{n:>13}" for n in c) + f" {sum(c):>7}")
        return "\n".join(lines)

    def report(self) -> str:
        n = len(self.results)
        lines = [f"seed {self.seed}: {n} cases in {self.seconds:.0f} s, {len(self.fails)} FAIL", self.table()]
        by_sig: dict[str, list[Result]] = defaultdict(list)
        for r in self.fails:
            by_sig[r.signature].append(r)
        for sig, rs in sorted(by_sig.items(), key=lambda kv: (kv[1][0].area, -len(kv[1]))):
            lines.append(f"\n[{rs[0].area}] {len(rs)} x {sig}")
            lines.append(f"    cases {', '.join(str(r.index) + ('s' if r.via != 'fork' else '') for r in rs[:8])}"
                         f"; first: {rs[0].detail[:300]}")
            for path in self.saved.get(sig, []):
                lines.append(f"    replay: python scripts/fuzz.py --replay {path}")
        return "\n".join(lines)



def make_seeds(work: Path) -> Path:
    """WORK/seeds, built once (the qconvert-written ones in a clean child of the case server)."""
    return build_seeds(work, call_clean)


def debug_trace(case: Case, root: Path, timeout: float, inject=()) -> str:
    """The traceback of an internal error, from a rerun with QCONVERT_DEBUG=1."""
    info = execute(case, root, case.timeout or timeout, debug=True, inject=inject)
    tb = info["err"]
    frames = re.findall(r'File "[^"]*/(qconvert/[^"]+)", line (\d+), in (\w+)', tb)
    return (f" at {frames[-1][0]}:{frames[-1][1]} in {frames[-1][2]}" if frames else "") + "\n" + tb[-3000:]


# ------------------------------------------------------------------ the run


def save_case(case: Case, dest: Path, root: Path, result: Result, info: dict, trace: str) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for rel, v in case.files.items():
        if isinstance(v, bytes):
            p = dest / "files" / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(v)
    d = case.to_json() | {"index": result.index, "outcome": result.outcome, "signature": result.signature,
                          "area": result.area, "detail": result.detail, "exit": info["code"],
                          "stderr": info["err"][-2000:], "debug_trace": trace[-4000:],
                          "command": "qconvert " + " ".join(shlex.quote(a) for a in case.argv)}
    (dest / "case.json").write_text(json.dumps(d, indent=2, ensure_ascii=True))
    return dest / "case.json"


def load_case(path: Path) -> Case:
    d = json.loads(path.read_text())
    files = {k: (v if v is not None else (path.parent / "files" / k).read_bytes()) for k, v in d["files"].items()}
    return Case(d["kind"], d["argv"], files, d["note"], d["protected"], d["expect_refusal"], d.get("expect_problem", ""),
                d.get("timeout"))


def run_one(case: Case, index: int, work: Path, seeds: Path, opts, via: str = "fork",
            inject=()) -> tuple[Result, dict, Path]:
    root = materialize(case, work / f"case{index}", seeds)
    snap, before, outs, devs = snapshot(root, case.protected), tree(root), output_paths(root, case.argv), devices()
    info = execute(case, root, case.timeout or opts.timeout, via=via, inject=inject, seeds=seeds)
    replaced = restore_devices(devs)
    outcome, sig, detail = judge(case, info, root, snap, opts.max_rss_mb, before, outs, replaced)
    return Result(index, case.kind, outcome, sig, "", detail, info["seconds"], info["rss_delta"] / 2**20, via), \
        info, root


def run(seed: int = 0, cases: int | None = None, minutes: float | None = None, kinds=KINDS,
        subprocess_sample: int = 0, save_failures: Path | None = None, save_per_signature: int = 3,
        workdir: Path | None = None, timeout: float = 10.0, max_rss_mb: float = 1024.0,
        progress: bool = False, verbose: bool = False, time_limit: float | None = None,
        inject: tuple[str, ...] = ()) -> Summary:
    """The fuzz run (see module doc). Cases 0..N-1 cycle through `kinds` (see rounds). `time_limit`: raise
    TimeoutError once the run (seeds included) has taken longer, so a harness fault fails fast;
    `inject`: faults for the harness's own checks (fuzz_runner.execute)."""
    opts = argparse.Namespace(timeout=timeout, max_rss_mb=max_rss_mb)
    own = workdir is None
    work = Path(tempfile.mkdtemp(prefix="qconvert-fuzz-")) if own else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    try:
        seeds_dir = make_seeds(work)
        seeds = Seeds(seeds_dir)
        summary = Summary(seed)
        deadline = t0 + minutes * 60 if minutes else float("inf")
        n = cases if cases is not None else (10**9 if minutes else 1500)
        cycle = rounds(kinds)
        # with --minutes the count is unknown: one case in 50 until K have gone through the script
        sample = _sample(n if cases is not None or not minutes else 50 * subprocess_sample, subprocess_sample,
                         len(cycle))
        seen: Counter = Counter()
        for i in range(n):
            if time.monotonic() > deadline:
                break
            if time_limit and time.monotonic() - t0 > time_limit:
                raise TimeoutError(f"fuzz run over its {time_limit:.0f} s limit after {i} cases")
            kind = cycle[i % len(cycle)]
            for via in ("fork", "subprocess") if i in sample else ("fork",):
                case = GENERATORS[kind](random.Random(f"{seed}:{i}:{kind}"), seeds)  # the same case for both
                res, info, root = run_one(case, i, work / "run", seeds_dir, opts, via, inject)
                if res.outcome in FAILS:
                    _record_failure(summary, seen, case, res, info, root, opts, save_failures, save_per_signature,
                                    inject)
                summary.results.append(res)
                if verbose:
                    print(f"{i:5d} {kind:<11} {via:<10} {res.outcome:<13} exit {info['code']!s:<4} "
                          f"{res.seconds:5.2f}s {res.rss_mb:5.0f}MB {shlex.join(case.argv)[:150]!r} | "
                          f"{case.note[:120]!r} | {(res.detail or info['err'].strip())[:160]!r}", file=sys.stderr)
                shutil.rmtree(root, ignore_errors=True)
                if res.outcome == "input-changed" and res.detail.endswith("modified"):
                    # written through a hard link into a seed: later cases need fresh seeds
                    seeds_dir = make_seeds(work / f"reseed{i}")
            if progress and (i + 1) % 100 == 0:
                print(f"  {i + 1} cases, {len(summary.fails)} FAIL, {time.monotonic() - t0:.0f} s", file=sys.stderr)
        summary.seconds = time.monotonic() - t0
        return summary
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


def _record_failure(summary: Summary, seen: Counter, case: Case, res: Result, info: dict, root: Path, opts,
                    save_failures: Path | None, save_per_signature: int, inject) -> None:
    """Area, traceback (internal errors) and, for the first few of a signature, a saved case."""
    trace = debug_trace(case, root, opts.timeout, inject) if res.outcome == "internal" and res.via == "fork" else ""
    res.area = area_of(case, res.outcome, res.detail, trace + info["err"])
    if trace:
        res.detail += trace.split("\n", 1)[0]
    seen[res.signature] += 1
    if save_failures and seen[res.signature] <= save_per_signature:
        slug = re.sub(r"[^a-z0-9]+", "-", res.signature.lower()).strip("-")[:80]
        path = save_case(case, Path(save_failures) / slug / f"{res.index}{'s' if res.via != 'fork' else ''}",
                         root, res, info, trace)
        summary.saved.setdefault(res.signature, []).append(str(path))


def rounds(kinds) -> list[str]:
    """One round of kinds: every kind, then the cheap ones twice more."""
    return list(kinds) + [k for k in kinds if k not in HEAVY] * 2


def _sample(n: int, k: int, n_kinds: int) -> set[int]:
    """k case indices spread over 0..n-1 whose kinds take turns (index i has kind i % n_kinds)."""
    if k <= 0 or n <= 0:
        return set()
    step = max(1, n // k)
    picked = set()
    for j in range(min(k, n)):
        i = j * step + (j - j * step) % n_kinds
        picked.add(i if i < n else j * step)
    return picked


def replay(path: Path, opts) -> int:
    """Run one saved case (seeds built in --workdir, or in a kept temporary directory)."""
    case = load_case(path)
    work = Path(opts.workdir) if opts.workdir else Path(tempfile.mkdtemp(prefix="qconvert-replay-"))
    seeds = make_seeds(work)
    root = materialize(case, Path(tempfile.mkdtemp(prefix="case-", dir=work)) / "case", seeds)
    snap, before, outs, devs = snapshot(root, case.protected), tree(root), output_paths(root, case.argv), devices()
    info = execute(case, root, case.timeout or opts.timeout, debug=opts.debug, inject=opts.inject, seeds=seeds)
    outcome, sig, detail = judge(case, info, root, snap, opts.max_rss_mb, before, outs, restore_devices(devs))
    print(f"case: {case.kind}: {case.note}")
    print(f"command (in {root}):\n  qconvert {' '.join(shlex.quote(a) for a in info['argv'])}")
    print(f"exit {info['code']}; outcome {outcome} {sig}\n--- stdout (tail)\n{info['out'][-2000:]}"
          f"\n--- stderr\n{info['err'][-6000:]}")
    print(f"(the case directory is kept: {root})")
    return 1 if outcome in FAILS else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--cases", type=int, help="number of cases (default 1500)")
    g.add_argument("--minutes", type=float, help="run for this long instead")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {','.join(KINDS)}")
    ap.add_argument("--subprocess-sample", type=int, default=20, metavar="K",
                    help="also run K cases through the installed qconvert console script")
    ap.add_argument("--save-failures", type=Path, metavar="DIR", help="save the first cases of each failure signature")
    ap.add_argument("--save-per-signature", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per case")
    ap.add_argument("--max-rss-mb", type=float, default=1024.0, help="peak RSS a case may add")
    ap.add_argument("--workdir", type=Path, help="keep seeds and cases here (default: a temporary directory)")
    ap.add_argument("--replay", type=Path, metavar="CASE_JSON", help="run one saved case and show its output")
    ap.add_argument("--debug", action="store_true", help="--replay with QCONVERT_DEBUG=1 (tracebacks)")
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write every result as JSON")
    ap.add_argument("-v", "--verbose", action="store_true", help="one line per case on stderr")
    ap.add_argument("--inject", action="append", default=[], metavar="MODULE:ATTR=FAULT",
                    help="harness self-check: replace a qconvert function by a fault of scripts/fuzz_faults.py")
    a = ap.parse_args(argv)
    if a.replay:
        return replay(a.replay, a)
    kinds = tuple(k for k in a.kinds.split(",") if k)
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        ap.error(f"--kinds: unknown {bad}; choose from {','.join(KINDS)}")
    s = run(a.seed, a.cases, a.minutes, kinds, a.subprocess_sample, a.save_failures, a.save_per_signature,
            a.workdir, a.timeout, a.max_rss_mb, progress=True, verbose=a.verbose, inject=tuple(a.inject))
    print(s.report())
    if a.json:
        a.json.write_text(json.dumps({"seed": s.seed, "seconds": s.seconds,
                                      "results": [r.__dict__ for r in s.results]}, indent=1))
    return 1 if s.fails else 0


if __name__ == "__main__":
    sys.exit(main())
