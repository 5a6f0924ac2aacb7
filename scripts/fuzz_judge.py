"""Judging one fuzz case (scripts/fuzz.py): its outcome, a signature that groups failures
with the same cause, and the area of the work a failure belongs to."""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
from pathlib import Path

from fuzz_cases import BUDGET_OPTIONS, CASE, Case
from fuzz_runner import tree

CLEAN_CODES = (2, 3, 4)
FAILS = ("internal", "hang", "memory", "device-replaced", "wrong-exit", "messy-error", "bad-json", "unsafe-text",
         "accepted", "missed-problem", "input-changed", "outside-changed", "leftover", "bad-output")
OUTPUT_OPTIONS = ("-o", "--output", "--save-imatrix", "--sensitivity-cache", "--plot")
SPLIT_OPTIONS = ("--split-max-size", "--split-max-tensors")
# what must never reach a terminal raw: C0/C1 controls (escape sequences), bidi overrides
UNSAFE = re.compile("[\\x00-\\x08\\x0b-\\x1f\\x7f-\\x9f\\u202a-\\u202e\\u2066-\\u2069]")


_NORMALIZE = [(re.compile(r"\s*\(set QCONVERT_DEBUG=1 for a traceback\)"), ""),
              (re.compile(r"/[^\s'\"():,]*"), "/PATH"),
              # quoted names stay when they look like a key or type ('int', 'hidden_size'), else blanked
              (re.compile(r"'(?![A-Za-z_][\w.]{0,30}')[^']*'"), "'…'"),
              (re.compile(r"\"(?![A-Za-z_][\w.]{0,30}\")[^\"]*\""), "\"…\""), (re.compile(r"\d+"), "N")]


def _norm(s: str) -> str:
    for rx, rep in _NORMALIZE:
        s = rx.sub(rep, s)
    return s.strip()[:100]


def _error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.strip() and not re.match(r"\s*(note|warning|WARNING)\b", ln)]


def _last_exception(text: str) -> str:
    lines = [ln for ln in text.splitlines() if re.match(r"^[\w.]+(Error|Exception|Interrupt|Exit|Warning)\b", ln)
             or ln.startswith(("internal error:", "error:"))]
    return lines[-1] if lines else (text.strip().splitlines() or ["?"])[-1]


def judge(case: Case, info: dict, root: Path, snap: dict, max_rss_mb: float, before: dict | None = None,
          outputs: list[str] = (), replaced_devices: list[str] = ()) -> tuple[str, str, str]:
    """(outcome, signature, detail) for one executed case. `snap`: the protected files before;
    `before`: the whole case tree before (runner.tree) and `outputs` the command's output paths
    (output_paths, taken before it ran); `replaced_devices`: device nodes the case replaced
    (already restored by the runner)."""
    code, out, err = info["code"], info["out"], info["err"]
    cmd = case.argv[0]
    if replaced_devices:
        return "device-replaced", f"device-replaced: {cmd} {' '.join(replaced_devices)}", \
            f"{' '.join(replaced_devices)} replaced (restored): {shlex.join(info['argv'])[:200]}"
    if info.get("hang"):
        where = re.findall(r'File "[^"]*/(qconvert/[^"]+)", line \d+, in (\w+)', info["hang"])
        loc = f"{where[-1][0]}:{where[-1][1]}" if where else info["hang"].strip().splitlines()[-1][:60]
        return "hang", f"hang: {cmd} in {loc}", f"over the timeout in {loc}"
    if info["rss_delta"] > max_rss_mb * 2**20:
        head = _last_exception(err) if code not in (0, None) else f"exit {code}"
        return "memory", f"memory: {cmd} {case.kind}: {_norm(head)}", \
            f"peak RSS +{info['rss_delta'] / 2**20:.0f} MB ({head[:200]})"
    changed = _changed(root, snap)
    if changed:
        return "input-changed", f"input-changed: {cmd} {changed[1]}", f"{changed[0]} {changed[1]}"
    leftovers = [str(p.relative_to(root)) for p in root.rglob("*.partial")]
    if leftovers:
        return "leftover", f"leftover: {cmd} exit {code}", f"left {leftovers[:3]}"
    stray = _outside_outputs(root, before, outputs, info["argv"]) if before is not None else None
    if stray:
        return "outside-changed", f"outside-changed: {cmd} {stray[1]} (exit {code})", f"{stray[0]} {stray[1]}"
    if "Traceback (most recent call last)" in err or "internal error" in err or code in (70, "escaped"):
        head = _last_exception(err)
        return "internal", f"internal: {cmd}: {_norm(head)}", head[:300]
    if not isinstance(code, int):
        return "wrong-exit", f"wrong-exit: {cmd} {code}", str(code)
    bad = UNSAFE.search(out + err)
    if bad:
        where = (out + err)[max(0, bad.start() - 60):bad.start() + 20]
        return "unsafe-text", f"unsafe-text: {cmd} writes {bad.group()!r}", repr(where)
    if code == 0:
        return _judge_ok(case, info, root)
    budget = any(a in BUDGET_OPTIONS for a in case.argv)
    if code not in CLEAN_CODES or (code == 4 and not budget):
        return "wrong-exit", f"wrong-exit: {cmd} exit {code}: {_norm(_last_exception(err))}", err.strip()[-300:]
    lines = _error_lines(err)
    usage = code == 2 and ("Usage:" in err or "Try '" in err or (lines and lines[0].startswith("Error:")))
    if not usage and (len(lines) != 1 or not lines[0].startswith("error:")):
        return "messy-error", f"messy-error: {cmd} exit {code}: {_norm(lines[0] if lines else '(no message)')}", \
            err.strip()[:300]
    return "error", "", lines[0][:200] if lines else ""


def _judge_ok(case: Case, info: dict, root: Path) -> tuple[str, str, str]:
    argv = info["argv"]
    if case.expect_refusal:
        return "accepted", f"accepted: {case.argv[0]} {case.expect_refusal}", case.note[:300]
    doc = None
    if "--json" in argv:
        def no_constants(name):
            raise ValueError(f"{name} is not JSON")
        try:
            doc = json.loads(info["out"], parse_constant=no_constants)
        except ValueError as e:
            return "bad-json", f"bad-json: {case.argv[0]}: {_norm(str(e))}", str(e)[:300]
    if case.expect_problem and argv[0] == "inspect":
        shown = doc.get("problems") if isinstance(doc, dict) else "Problems (" in info["out"]
        if not shown:
            return "missed-problem", f"missed-problem: inspect {case.expect_problem}", case.note[:300]
    if argv[0] == "quantize" and "--dry-run" not in argv and "-o" in argv:
        out = Path(argv[argv.index("-o") + 1])
        if out.suffix == ".gguf" and out.is_file():
            from qconvert.errors import QConvertError
            from qconvert.gguf_header import read_gguf_header
            try:
                h = read_gguf_header(out)
            except QConvertError as e:
                return "bad-output", f"bad-output: {_norm(str(e))}", str(e)[:300]
            if h.problems:
                return "bad-output", f"bad-output: {_norm(h.problems[0].problem)}", h.problems[0].problem
            bad = nonfinite_tensors(out, h) if "--allow-nonfinite" not in argv else []
            if bad:
                return "bad-output", "bad-output: NaN/Inf in the written tensors", f"{bad[:3]} ({case.note[:200]})"
    return "ok", "", ""


# where the float16 scales of each block lie: type -> (block bytes, scale offsets)
_F16_SCALES = {"Q8_0": (34, (0,)), "Q4_0": (18, (0,)), "Q4_1": (20, (0, 2)), "Q5_0": (22, (0,)),
               "Q5_1": (24, (0, 2)), "Q4_K": (144, (0, 2)), "Q5_K": (176, (0, 2)), "Q6_K": (210, (208,)),
               "Q3_K": (110, (108,)), "Q2_K": (84, (80, 82))}


def nonfinite_tensors(path: Path, header) -> list[str]:
    """Names of tensors in a written GGUF holding NaN/Inf: float data, or block scales (an
    Inf scale makes a whole block garbage)."""
    import numpy as np

    raw = np.memmap(path, np.uint8, "r")
    bad = []
    for t in header.tensors:
        data = raw[t.offset:t.offset + t.n_bytes]
        name = t.type.name
        if name == "F32":
            x = data.view(np.uint32)
            hit = np.any((x & 0x7F800000) == 0x7F800000)
        elif name in ("F16", "BF16"):
            m = 0x7C00 if name == "F16" else 0x7F80
            hit = np.any((data.view(np.uint16) & m) == m)
        elif name in _F16_SCALES:
            size, offs = _F16_SCALES[name]
            blocks = data.reshape(-1, size)
            hit = any(np.any((blocks[:, o:o + 2].copy().view(np.uint16) & 0x7C00) == 0x7C00) for o in offs)
        else:
            continue
        if hit:
            bad.append(t.name)
    return bad


def _changed(root: Path, snap: dict) -> tuple[str, str] | None:
    for rel, (ino, size, mtime, mode, small) in snap.items():
        p = root / rel
        try:
            st = os.lstat(p)
        except OSError:
            return rel, "removed"
        if st.st_ino != ino or st.st_mode != mode:
            return rel, "replaced"
        if st.st_size != size or st.st_mtime_ns != mtime or (small is not None and p.read_bytes() != small):
            return rel, "modified"
    return None


def output_paths(root: Path, argv: list[str]) -> list[str]:
    """Paths (relative to the case directory, normalised) that the command was told to write,
    and where a symbolic link among them leads (a link is followed: its target is the output).
    Taken before the command runs."""
    argv = [a.replace(CASE, str(root)) for a in argv]
    named = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in OUTPUT_OPTIONS]
    named += [a.partition("=")[2] for a in argv if a.partition("=")[0] in OUTPUT_OPTIONS[1:] and "=" in a]
    outs = []
    split = any(a.partition("=")[0] in SPLIT_OPTIONS for a in argv)
    for v in named:
        p = os.path.normpath(os.path.join(root, v))
        outs.append(os.path.relpath(p, root))
        if split and v == named[0]:  # the set's members, named from -o (gguf_split.prefix_of)
            outs += _split_members(root, p)
        if os.path.islink(p):
            outs.append(os.path.relpath(os.path.realpath(p), root))
    return outs


def _split_members(root: Path, out: str) -> list[str]:
    """Every PREFIX-0000N-of-0000M.gguf name a split set written for -o `out` may take
    (M up to 99: the cases' sets are small)."""
    import re

    name = os.path.basename(out)
    m = re.fullmatch(r"(.*)-\d{5}-of-\d{5}\.gguf", name)
    prefix = m.group(1) if m else name[:-5] if name.lower().endswith(".gguf") else name
    base = os.path.relpath(os.path.join(os.path.dirname(out), prefix), root)
    return [f"{base}-{i:05d}-of-{n:05d}.gguf" for n in range(1, 100) for i in range(1, n + 1)]


def _outside_outputs(root: Path, before: dict, outs: list[str], argv: list[str]) -> tuple[str, str] | None:
    """An entry of the case directory created, removed or changed that is not one of the
    command's outputs (nor under one, nor HOME): nothing outside the output path may change.
    Without -o, quantize writes its default output into the working directory (the case
    directory): new entries directly in it are allowed then."""
    default_out = argv[0] == "quantize" and not any(a in ("-o", "--output") or a.startswith("--output=")
                                                    for a in argv)

    def allowed(rel: str) -> bool:
        # an output, what is under it (a directory output), a parent made for it, HOME
        return rel.split(os.sep)[0] == "home" or (default_out and os.sep not in rel) or \
            any(rel == o or rel.startswith(o + os.sep) or (o.startswith(rel + os.sep) and rel not in before)
                for o in outs)

    after = tree(root)
    for rel in sorted(set(before) | set(after)):
        if allowed(rel):
            continue
        a, b = before.get(rel), after.get(rel)
        if a is None:
            return rel, "created"
        if b is None:
            return rel, "removed"
        # (ino, mode, size, mtime, rdev): a directory's size and mtime follow its entries
        same = a[:2] == b[:2] and a[4] == b[4] and (stat.S_ISDIR(a[1]) or a[2:4] == b[2:4])
        if not same:
            return rel, "changed"
    return None


def area_of(case: Case, outcome: str, head: str, trace: str) -> str:
    """Which part of the work a failure belongs to, for routing: a guess from the exception
    (`head`) and the deepest qconvert frame of its traceback."""
    if outcome in ("input-changed", "leftover", "outside-changed", "device-replaced"):
        return "output safety"
    if outcome == "accepted":
        return "input validation"
    if outcome == "missed-problem":
        return "inspect"
    frames = re.findall(r'File "[^"]*/(qconvert/[^"]+)", line \d+', trace)
    where = frames[-1] if frames else ""
    if re.search(r"MarkupError|NoSuchOption|BadParameter|UsageError|MissingParameter|BadOptionUsage|"
                 r"NoArgsIsHelp|Abort|KeyboardInterrupt|Exit\b", head) or where.endswith("cli/app.py"):
        return "CLI error contract"
    if re.search(r"sink/|sensitivity|output_check", where) or "_output_path" in trace:
        return "output safety"
    if case.argv[0] == "estimate-memory" or re.search(r"plan/(units|memory|model_shape)\.py|cli/estimate", where):
        return "estimate-memory"
    if re.search(r"gguf_header|inspection\.py|cli/inspect", where) or (case.argv[0] == "inspect" and not where):
        return "inspect"
    return "input validation"
