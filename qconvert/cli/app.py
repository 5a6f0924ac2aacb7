"""Root of the CLI and its one error contract (README "Errors and exit codes"):

    0    done
    2    usage error (click's own message) or InputError (a file, path or option that cannot be used)
    3    UnsupportedError / ShapeError (well-formed, but not something qconvert handles)
    4    BudgetError (a size or VRAM target that cannot be met)
    70   internal error: a bug; one line, QCONVERT_DEBUG=1 gives the traceback
    130  interrupted by Ctrl-C (SIGINT) or SIGTERM: the line `interrupted`, never a traceback
    141  stdout closed early (`qconvert inspect x | head -1`): nothing more is written

Messages go out as plain text (never rich markup: a path or tensor name holding `[/x]` is
printed as is) with non-printable characters escaped, on one line.

This module imports nothing heavy at its top. The console script imports it before `main()`
runs, and a Ctrl-C that lands while typer, numba or torch are being imported must still end
as `interrupted`: so typer and the commands are imported inside main()'s guard (`get_app`).
"""

from __future__ import annotations

import errno
import os
import signal
import sys

EXIT_USAGE = 2
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what `cat` reports when its reader goes away

_app = None


def get_app():
    """The typer app with every command registered (built on first use)."""
    global _app
    if _app is None:
        import typer

        from . import estimate, eval, inspect, quantize

        app = typer.Typer(
            name="qconvert",
            help="Turn Hugging Face checkpoints into quantized GGUF or safetensors; inspect model files; "
                 "measure what a quant lost; estimate memory.",
            no_args_is_help=True,
            add_completion=False,
            pretty_exceptions_enable=False,
        )
        for mod in (quantize, inspect, eval, estimate):
            mod.register(app)
        _app = app
    return _app


def __getattr__(name: str):
    if name == "app":  # `from qconvert.cli.app import app` still works, built lazily
        return get_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- signals -------------------------------------------------------------------------------

def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _owns_process() -> bool:
    """True when qconvert is the program (the console script or `python -m qconvert`, whose
    __main__ imported this `main`); False when a host (a test runner, a notebook) called
    main(): a host keeps its own signal handlers."""
    return getattr(sys.modules.get("__main__"), "main", None) is main


def _handle_sigterm() -> None:
    """SIGTERM (kill, docker stop, a CI timeout) takes Ctrl-C's path: KeyboardInterrupt
    unwinds the stack, so every `finally:` removes its temporary file. A SIGTERM the parent
    set to be ignored stays ignored."""
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN:
        signal.signal(signal.SIGTERM, _raise_interrupt)


def _ignore_signals() -> None:
    """Once the outcome is decided, a second Ctrl-C (or one landing while the interpreter
    shuts down) must not print a traceback over it."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)


# --- the contract --------------------------------------------------------------------------

def _debug() -> bool:
    return os.environ.get("QCONVERT_DEBUG") not in (None, "", "0")


def _say(line: str) -> None:
    """One line on stderr, as text. A closed stderr leaves nothing to report to."""
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _one_line(e: BaseException) -> str:
    from ._render import printable  # escapes newlines and terminal controls: one inert line

    return printable(e)


def _click_kind(e: BaseException) -> str | None:
    """'exit', 'abort' or 'usage' for click's exceptions, else None. typer (0.16 and later)
    raises those of the click copy it ships (typer._click), older typer the real click's:
    both are recognised by where the class comes from and what it offers, not by identity."""
    mro = type(e).__mro__
    if not any(c.__module__.split(".")[0] in ("click", "typer") for c in mro):
        return None
    names = {c.__name__ for c in mro}
    if "Exit" in names and isinstance(getattr(e, "exit_code", None), int):
        return "exit"
    if "Abort" in names:
        return "abort"
    if callable(getattr(e, "show", None)) and isinstance(getattr(e, "exit_code", None), int):
        return "usage"
    return None


def _interrupt_in_chain(e: BaseException) -> bool:
    """A KeyboardInterrupt behind `e`: a cleanup that failed while Ctrl-C unwound the stack
    still ends as `interrupted`, not as an internal error."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def _broken_pipe(e: BaseException) -> bool:
    return isinstance(e, BrokenPipeError) or (isinstance(e, OSError) and e.errno == errno.EPIPE)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's last flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _interrupted() -> int:
    if _owns_process():
        _ignore_signals()
    _say("interrupted")
    return EXIT_INTERRUPTED


def _exit_code(e: BaseException, debug: bool) -> int:
    """Report `e` (one line, or click's usage message) and give the exit status."""
    from ..errors import QConvertError

    kind = _click_kind(e)
    if kind == "exit":  # --help and the like; typer's own main loop turns Ctrl-C into Exit(130)
        return _interrupted() if e.exit_code == EXIT_INTERRUPTED else e.exit_code
    if kind == "usage":
        # click's "Usage: ... Error: No such option: --x", each line escaped like our own
        # messages: the offending argument (a newline, a bidi override) is the user's text
        import io

        buf = io.StringIO()
        e.show(file=buf)
        for line in buf.getvalue().splitlines():
            _say(_one_line(line))
        return e.exit_code
    if isinstance(e, SystemExit):
        code = e.code
        if code is None or isinstance(code, int):
            return code or 0
        _say(str(code))
        return 1
    if _broken_pipe(e):  # the reader went away: nothing went wrong here
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    if debug:
        raise e
    if kind == "abort" or _interrupt_in_chain(e):
        return _interrupted()
    if isinstance(e, QConvertError):
        _say(f"error: {_one_line(e)}")
        return e.exit_code
    _say(f"internal error: {type(e).__name__}: {_one_line(e)} (set QCONVERT_DEBUG=1 for a traceback)")
    return EXIT_INTERNAL


def run(args: list[str]) -> int:
    """Run one command line; return its exit status (reporting any error on stderr)."""
    debug = _debug()
    try:
        from typer.main import get_command

        cmd = get_command(get_app())
        # make_context + invoke rather than app(): typer's own main loop turns Ctrl-C into
        # Exit(130) or Abort and prints usage errors as rich panels; here every outcome
        # reaches _exit_code as it was raised.
        with cmd.make_context("qconvert", list(args)) as ctx:
            cmd.invoke(ctx)
        return 0
    except BaseException as e:  # noqa: BLE001 - this is the one place that maps them all
        return _exit_code(e, debug)


def main(argv: list[str] | None = None) -> None:
    """The `qconvert` console script and `python -m qconvert`: run, then exit with the status."""
    owner = _owns_process()
    try:
        if owner:
            _handle_sigterm()
        code = run(sys.argv[1:] if argv is None else list(argv))
    except KeyboardInterrupt:  # landed outside run()'s guard (or while it reported)
        if _debug():
            raise
        code = _interrupted()
    if owner:
        _ignore_signals()  # the work is done: an interrupt now would only spoil the exit
    sys.exit(code)
