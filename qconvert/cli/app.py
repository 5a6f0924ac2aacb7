"""Root of the CLI. Each command module exposes `register(app)`; this module maps known
exceptions to one line on stderr and an exit code (QCONVERT_DEBUG=1 restores tracebacks)."""

from __future__ import annotations

import os
import sys

import typer
from rich.console import Console

from ..errors import QConvertError

app = typer.Typer(
    name="qconvert",
    help="Turn Hugging Face checkpoints into quantized GGUF or safetensors; inspect model files; estimate memory.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

err_console = Console(stderr=True, highlight=False)


def _register_commands() -> None:
    from . import estimate, inspect, quantize

    for mod in (quantize, inspect, estimate):
        mod.register(app)


_register_commands()


def main() -> None:
    debug = os.environ.get("QCONVERT_DEBUG") not in (None, "", "0")
    try:
        app(standalone_mode=False)
    except QConvertError as e:
        if debug:
            raise
        err_console.print(f"[bold red]error:[/] {e}", soft_wrap=True, markup=True, emoji=False)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]")
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as e:  # click usage errors and the like
        import click

        if isinstance(e, click.exceptions.Abort):
            sys.exit(1)
        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if debug:
            raise
        err_console.print(f"[bold red]internal error:[/] {type(e).__name__}: {e} (set QCONVERT_DEBUG=1 for a traceback)",
                          markup=True, emoji=False)
        sys.exit(70)
