"""The CLI's error contract as a shell meets it (README "Errors and exit codes"), run through
the installed console script in a subprocess: exit codes, what lands on stderr, signals,
a closed stdout, hostile estimate-memory arguments."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tiny-llama"


def _command() -> list[str]:
    """The console script `pip install -e .` put beside this interpreter (what a venv's
    PATH finds first); else whatever `qconvert` is on PATH; else `python -m qconvert`.
    The script beside the interpreter comes first because a PATH entry may be a shell shim
    (pyenv's), which a signal sent in its first milliseconds kills before Python starts."""
    beside = Path(sys.executable).with_name("qconvert")
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("qconvert")
    return [found] if found else [sys.executable, "-m", "qconvert"]


QCONVERT = _command()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "QCONVERT_DEBUG"}
    env.update(COLUMNS="200", TOKENIZERS_PARALLELISM="false", **extra)
    return env


def run(*args, env=None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*QCONVERT, *map(str, args)], capture_output=True, text=True, env=env or _env(),
                          timeout=timeout)


def _sigint_as_at_a_terminal() -> None:
    """In the child: SIGINT back to its default. A test run started in the background by a
    non-interactive shell (or under nohup) inherits SIGINT ignored, and Python keeps an
    ignored SIGINT ignored, so Ctrl-C tests would test the harness, not qconvert."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([*QCONVERT, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env(), preexec_fn=_sigint_as_at_a_terminal, **kw)


def one_error_line(r: subprocess.CompletedProcess) -> str:
    """stderr must be exactly one line, with no traceback; returns it."""
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


# --- usage errors: click's message, exit 2 -------------------------------------------------

@pytest.mark.parametrize("args,message", [
    (["quantize", EXAMPLE, "--bogus"], "No such option: --bogus"),
    (["quantize"], "Missing argument"),
    (["estimate-memory", "--params", "7B", "--context", "abc"], "Invalid value for '--context'"),
    (["estimate-memory", "--params", "7B", "--context", "nan"], "Invalid value for '--context'"),
    (["quantize", EXAMPLE, "--bits", "x"], "Invalid value for '--bits'"),
    (["no-such-command"], "No such command"),
])
def test_usage_errors_exit_2_with_clicks_message(args, message):
    r = run(*args)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Usage:" in r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr


def test_usage_error_shows_the_offending_argument_escaped():
    """click quotes the user's argument back; a bidi override or a newline in it is shown
    escaped, like every other message, not acted on by the terminal."""
    r = run("quantize", "x", "\u202e8GB", "new\nline", "--dry-run")
    assert r.returncode == 2, r.stderr
    error = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "\\u202e8GB" in error[0], r.stderr
    assert "new" in error[0] and "line" in error[0]  # the newline is shown, not obeyed
    assert "\u202e" not in r.stderr and "Usage:" in r.stderr


# --- input errors: one line `error: ...`, exit 2 --------------------------------------------

def test_unknown_type_lists_the_valid_names():
    line = one_error_line(r := run("quantize", EXAMPLE, "--dry-run", "--type", "Q9_Z"))
    assert r.returncode == 2
    assert line.startswith("error: --type 'Q9_Z': unknown type")
    assert "Q4_K_M" in line and "Q8_0" in line and "Q4_K" in line


@pytest.mark.parametrize("args,shown", [
    (["--type", "q4-k-m"], "Q4_K"),
    (["--type", "f16 "], "F16"),
    (["--type", "Q4_k_M", "--tensor-type", "attn_v=q8-0", "--output-tensor-type", " q6_k"],
     "--tensor-type attn_v=Q8_0"),
])
def test_type_spellings_are_normalised(args, shown):
    r = run("quantize", EXAMPLE, "--dry-run", *args)
    assert r.returncode == 0, r.stderr
    assert shown in r.stdout


@pytest.mark.parametrize("option", ["--output-tensor-type", "--token-embedding-type"])
def test_unknown_tensor_type_options_are_input_errors(option):
    r = run("quantize", EXAMPLE, "--dry-run", option, "Q9[/x]")
    assert r.returncode == 2
    assert one_error_line(r).startswith(f"error: {option} 'Q9[/x]': unknown tensor type; use one of ")


@pytest.mark.parametrize("args,option", [
    (["--tensor-type", "ffn_down=IQ1_S"], "--tensor-type ffn_down=IQ1_S"),
    (["--type", "Q8_0", "--tensor-type", "attn_v=q8_0", "--tensor-type", r"blk\.1\.=iq2-xxs"],
     r"--tensor-type blk\.1\.=IQ2_XXS"),
    (["--type", "IQ2_XS", "--tensor-type", "attn_v=Q8_0"], "--type IQ2_XS"),
])
def test_missing_statistics_names_the_option_that_chose_the_type(args, option):
    """A type that needs importance statistics is blamed on the option it came from (it named
    --type for an IQ1_S given by --tensor-type)."""
    r = run("quantize", EXAMPLE, "--dry-run", *args)
    assert r.returncode == 2
    line = one_error_line(r)
    assert line.startswith(f"error: {option}: tensor blk."), line
    assert "needs importance statistics" in line


def test_messages_are_text_not_markup(tmp_path):
    weird = tmp_path / "weird[/x]" / "[bold]model[/bold]"
    r = run("quantize", weird, "--dry-run")
    assert r.returncode == 2
    line = one_error_line(r)
    assert line.startswith("error: ") and str(weird) in line
    r = run("quantize", EXAMPLE, "--dry-run", "--tensor-type", "(attn_[kv]=Q8_0")
    assert r.returncode == 2
    assert "(attn_[kv]=Q8_0" in one_error_line(r)


def test_progress_bar_escapes_names_like_messages(capsys):
    """A tensor name from a model file reaches the progress bar too: its controls are
    escaped there as in error lines, not sent to the terminal."""
    from qconvert.progress import reporter

    evil = "blk.0.\x1b[31mattn\x07\u202e"
    with reporter(True) as rep:
        rep.start("Q8_0\x1b[2J", 2)
        rep.advance(1, evil)
        rep.log(f"note: {evil}")
        rep.advance(1, evil)
    err = capsys.readouterr().err
    assert "\x1b[31m" not in err and "\x07" not in err and "\u202e" not in err and "\x1b[2J" not in err
    assert "blk.0.\\x1b[31mattn\\x07\\u202e" in err and "Q8_0\\x1b[2J" in err


def test_debug_gives_the_traceback(tmp_path):
    r = run("quantize", tmp_path / "missing", env=_env(QCONVERT_DEBUG="1"))
    assert r.returncode != 0
    assert "Traceback (most recent call last)" in r.stderr and "InputError" in r.stderr


# An internal error needs a bug; this one is planted in a child Python that then runs the
# real entry point.
_BUG = ("import sys; import qconvert.cli.estimate as e; "
        "e.estimate_memory = lambda *a, **k: 1 / 0; "
        "from qconvert.cli.app import main; sys.argv = ['qconvert', 'estimate-memory', '--params', '7B']; main()")


def test_internal_error_is_one_line_exit_70():
    r = subprocess.run([sys.executable, "-c", _BUG], capture_output=True, text=True, env=_env(), timeout=60)
    assert r.returncode == 70
    assert one_error_line(r) == ("internal error: ZeroDivisionError: division by zero "
                                 "(set QCONVERT_DEBUG=1 for a traceback)")
    r = subprocess.run([sys.executable, "-c", _BUG], capture_output=True, text=True,
                       env=_env(QCONVERT_DEBUG="1"), timeout=60)
    assert "Traceback (most recent call last)" in r.stderr and "ZeroDivisionError" in r.stderr


# --- estimate-memory: hostile numbers are refused at once -------------------------------------

SHAPE = ["--layers", "32", "--kv-heads", "8", "--head-dim", "128"]
ABSURD = [
    (["--params", "1e400"], "--params"),
    (["--params", "1e300T"], "--params"),
    (["--params", "1e999999"], "--params"),
    (["--params", "9" * 5000], "--params"),
    (["--params", "0"], "--params"),
    (["--params", "nan"], "--params"),
    (["--params", "inf"], "--params"),
    (["--params", "7B", "--context", "4096", "--layers", "1" * 30, "--kv-heads", "8", "--head-dim", "128"],
     "--layers"),
    (["--params", "7B", "--context", "4096", "--layers", "99999999999", "--kv-heads", "8", "--head-dim", "128"],
     "--layers"),
    (["--params", "7B", "--context", "-1", *SHAPE], "--context"),
    (["--params", "7B", "--context", "0", *SHAPE], "--context"),
    (["--params", "7B", "--context", str(2**31 + 1), *SHAPE], "--context"),
    (["--params", "7B", "--context", "4096", "--layers", "32", "--kv-heads", "0", "--head-dim", "128"],
     "--kv-heads"),
    (["--params", "7B", "--context", "4096", "--layers", "32", "--kv-heads", "8", "--head-dim", "-3"],
     "--head-dim"),
    (["--params", "7B", "--vram", "0GB"], "--vram"),
    (["--params", "7B", "--vram", "nan"], "--vram"),
    (["--params", "7B", "--vram", "1e999999GB"], "--vram"),
    (["--params", "7B", "--overhead", "-1GB"], "--overhead"),
    (["--params", "7B", "--overhead", "infGiB"], "--overhead"),
]


@pytest.mark.parametrize("args,option", ABSURD, ids=[f"{o}-{i}" for i, (_, o) in enumerate(ABSURD)])
def test_estimate_memory_refuses_absurd_numbers(args, option, capsys):
    """In-process through the same main() (a process per case would cost ten seconds)."""
    from qconvert.cli.app import get_app, main

    get_app()  # the commands' imports are not what is timed
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as exit_:
        main(["estimate-memory", *args])
    assert time.perf_counter() - t0 < 2
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert err.startswith(f"error: {option} ") and err.count("\n") == 1, err


def test_estimate_memory_absurd_numbers_through_the_script():
    cases = [c for c in ABSURD if c[0][:2] in (["--params", "1e999999"], ["--params", "1e300T"])
             or "99999999999" in c[0] or "1" * 30 in c[0]]
    assert len(cases) == 4
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda c: (c[1], run("estimate-memory", *c[0], timeout=30)), cases))
    for option, r in results:
        assert r.returncode == 2, r.stderr
        assert one_error_line(r).startswith(f"error: {option} ")


def test_estimate_memory_at_the_bounds_is_fast():
    """The largest accepted shape, with --vram (the longest-context search runs per row)."""
    t0 = time.perf_counter()
    r = run("estimate-memory", "--params", "1e15", "--context", str(2**31), "--layers", "100000",
            "--kv-heads", "65536", "--head-dim", "65536", "--vram", "1e18B", "--json", timeout=30)
    assert r.returncode == 0, r.stderr
    assert time.perf_counter() - t0 < 15
    assert '"params": 1000000000000000' in r.stdout


# --- quantize: hostile numbers are refused before anything is read ----------------------------

def test_estimate_memory_model_file_in_a_model_directory_counts_the_model():
    """--model DIR/model.safetensors (or its index) is the model in DIR, not a refusal; a
    safetensors file with no config.json beside it is one line naming it."""
    whole = run("estimate-memory", "--model", EXAMPLE, "--context", "512", "--json")
    one = run("estimate-memory", "--model", EXAMPLE / "model.safetensors", "--context", "512", "--json")
    assert whole.returncode == 0 and one.returncode == 0, one.stderr
    assert json.loads(one.stdout) == json.loads(whole.stdout)
    alone = run("estimate-memory", "--model", EXAMPLE / "tokenizer.json")
    assert alone.returncode == 2 and "tokenizer.json" in one_error_line(alone)


ST = ["--format", "safetensors"]
GPTQ = ["--scheme", "gptq"]
QUANTIZE_ABSURD = [
    (["--target-bpw", "inf"], "--target-bpw"),
    (["--target-bpw", "nan"], "--target-bpw"),
    (["--target-bpw", "0"], "--target-bpw"),
    (["--target-bpw", "-3"], "--target-bpw"),
    (["--target-bpw", "1e300"], "--target-bpw"),
    (["--target-vram", "8GB", "--context", "99999999999999"], "--context"),
    (["--target-vram", "8GB", "--context", "0"], "--context"),
    ([*GPTQ, "--damp", "nan"], "--damp"),
    ([*GPTQ, "--damp", "inf"], "--damp"),
    ([*GPTQ, "--damp", "-0.1"], "--damp"),
    ([*GPTQ, "--damp", "2"], "--damp"),
    ([*ST, "--group-size", "-5"], "--group-size"),
    ([*ST, "--group-size", "0"], "--group-size"),
    ([*ST, "--group-size", "99999999999999999999"], "--group-size"),
    ([*ST, "--group-size", "7"], "--group-size"),  # not a power of two from 16
    ([*ST, "--group-size", "96"], "--group-size"),
    ([*GPTQ, "--calibration-samples", "0"], "--calibration-samples"),
    ([*GPTQ, "--calibration-samples", "99999999999"], "--calibration-samples"),
    ([*GPTQ, "--calibration-seqlen", "-1"], "--calibration-seqlen"),
    ([*GPTQ, "--calibration-seqlen", "99999999999"], "--calibration-seqlen"),
    (["--bits", "99999999999"], "--bits"),
    ([*ST, "--bits", "5"], "--bits"),
    # an empty choice (an unset shell variable) is not the default
    (["--type", ""], "--type"),
    (["--output-tensor-type", " "], "--output-tensor-type"),
    (["--token-embedding-type", ""], "--token-embedding-type"),
    (["--scheme", ""], "--scheme"),
    (["--format", ""], "--format"),
    (["--target-vram", "8GB", "--kv-type", ""], "--kv-type"),
    (["--calibration", "default", "--device", ""], "--device"),
    # a device torch may know but calibration does not use: was internal error 70
    (["--calibration", "default", "--device", "mps"], "--device"),
    (["--tensor-type", "(a|" * 3000 + "b" + ")" * 3000 + "=Q8_0"], "--tensor-type"),  # was RecursionError, 70
]


@pytest.mark.parametrize("args,option", QUANTIZE_ABSURD, ids=[f"{o}-{i}" for i, (_, o) in enumerate(QUANTIZE_ABSURD)])
def test_quantize_refuses_absurd_numbers_naming_the_option(args, option, capsys, tmp_path):
    """Exit 2 and one line naming the option (they exited 70, 1, 3, or 0 with nothing
    quantized), in-process through main(), in a dry run: nothing is computed."""
    from qconvert.cli.app import get_app, main

    get_app()
    with pytest.raises(SystemExit) as exit_:
        main(["quantize", str(EXAMPLE), "-o", str(tmp_path / "out"), "--dry-run", *args])
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert err.startswith(f"error: {option} ") and err.count("\n") == 1, err


def test_every_error_raised_is_a_class_with_an_exit_code_in_the_contract():
    """QConvertError itself (exit 1) is not in the README's table: every raise in qconvert/
    names a subclass (InputError 2, UnsupportedError/ShapeError 3, BudgetError 4)."""
    import ast

    bare = []
    for path in sorted((ROOT / "qconvert").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Raise) and node.exc is not None:
                exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                if isinstance(exc, ast.Name) and exc.id == "QConvertError":
                    bare.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert bare == []


# --- a closed stdout ---------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["inspect", EXAMPLE / "model.safetensors"],
                                  ["inspect", EXAMPLE / "model.safetensors", "--json"]])
def test_closed_stdout_is_quiet(args):
    """`qconvert inspect x | head -0`: the reader is gone before the first write."""
    p = start(*args)
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=60) == 141
    assert err == ""


# --- interrupts ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def calibration_text(tmp_path_factory) -> Path:
    """Calibration text (~150 kB: tokenized in a moment; Ctrl-C waits for the tokenizer)."""
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(2, 8))) for _ in range(5000)]
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text(" ".join(rng.choice(words) for _ in range(25_000)))
    return path


def _long_quantize(out: Path, text: Path) -> subprocess.Popen:
    """Calibration over 256 windows of 512 tokens: tens of seconds of forward passes (and
    ~150 MB of activations), so every signal below lands before it ends."""
    return start("quantize", EXAMPLE, "-o", out, "--calibration", text, "--calibration-samples", "256")


def _interrupted(p: subprocess.Popen) -> None:
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert err == "interrupted\n"


def _torch_loaded(p: subprocess.Popen, limit: float = 60) -> None:
    """Wait until the process has mapped libtorch (calibration needs it; an import may load
    it sooner): from there on the run is in its long part."""
    maps = Path(f"/proc/{p.pid}/maps")
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        assert p.poll() is None, p.communicate()[1]
        if not maps.exists():  # no /proc: calibration starts well within a few seconds
            time.sleep(3)
            return
        if "libtorch" in maps.read_text():
            return
        time.sleep(0.05)
    p.kill()
    pytest.fail("calibration never started")


@pytest.mark.parametrize("sig,after", [(signal.SIGINT, 1.0), (signal.SIGTERM, 2.5)], ids=["SIGINT", "SIGTERM"])
def test_signal_during_calibration(sig, after, tmp_path, calibration_text):
    out = tmp_path / "out" / "m.gguf"
    out.parent.mkdir()
    p = _long_quantize(out, calibration_text)
    _torch_loaded(p)
    time.sleep(after)  # into transformers' import, the tokenizer or the forward passes
    p.send_signal(sig)
    _interrupted(p)
    assert list(out.parent.iterdir()) == []  # no output, no temporary file


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_while_writing_removes_the_temporary_file(sig, tmp_path):
    """The signal lands once the temporary output exists: the unwinding removes it."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    p = start("quantize", EXAMPLE, "-o", out_dir / "m.gguf", "--type", "Q4_K_M")
    while p.poll() is None and not any(out_dir.iterdir()):
        time.sleep(0.002)
    assert p.poll() is None, "the file was written before its temporary name was seen"
    p.send_signal(sig)
    _interrupted(p)
    assert list(out_dir.iterdir()) == []


def _interpreter_start() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], env=_env(), check=True)
    return time.perf_counter() - t0


def test_ctrl_c_during_imports(tmp_path, calibration_text):
    """A Ctrl-C that lands while typer, numba, torch or transformers are being imported.
    Signals before the interpreter has run its first line of qconvert are Python's own
    (twice its bare start-up time is waited first)."""
    base = max(0.05, 2 * _interpreter_start())
    for i, delay in enumerate(base + d for d in (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)):
        out = tmp_path / f"out{i}" / "m.gguf"
        out.parent.mkdir()
        p = _long_quantize(out, calibration_text)
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        out_text, err = p.communicate(timeout=60)
        assert "Traceback" not in err, (delay, err)
        assert (p.returncode, err) == (130, "interrupted\n"), delay
        assert list(out.parent.iterdir()) == []
