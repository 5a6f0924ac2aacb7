"""Rendering shared by the commands: byte sizes for humans, safe text for tables, JSON.

Names and strings read from model files are untrusted: a tensor name may hold an escape
sequence that would recolour or rewrite the user's terminal, or text that looks like rich
markup. Everything from a file goes through `printable` and into a rich `Text` (never a
markup string), and JSON goes out through `dumps_json`, which escapes what `json` leaves raw.
"""

from __future__ import annotations

import os

import json
import re
import sys
from typing import Any, Iterable, Sequence

from rich.console import Console
from rich.table import Column, Table
from rich.text import Text

from ..terminal_text import printable  # the commands take it from here too

_DECIMAL = ["B", "kB", "MB", "GB", "TB", "PB"]
_BINARY = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]


def human_bytes(n: float, binary: bool = False, digits: int = 2) -> str:
    """`1500000000` -> "1.50 GB" (decimal) or "1.40 GiB" (binary)."""
    step = 1024.0 if binary else 1000.0
    units = _BINARY if binary else _DECIMAL
    x = float(n)
    i = 0
    while abs(x) >= step and i < len(units) - 1:
        x /= step
        i += 1
    return f"{int(x)} B" if i == 0 else f"{x:.{digits}f} {units[i]}"


def human_count(n: float) -> str:
    """A parameter count: 6738415616 -> "6.74B"."""
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}"
    return str(int(n))


def text(s: object, style: str = "") -> Text:
    """A rich Text of file-derived content: escaped, and never parsed as markup."""
    return Text(printable(s), style=style)


def _json_escape(m: re.Match) -> str:
    o = ord(m.group())
    if o > 0xFFFF:  # JSON has only \uXXXX: astral characters become a surrogate pair
        o -= 0x10000
        return f"\\u{0xD800 + (o >> 10):04x}\\u{0xDC00 + (o & 0x3FF):04x}"
    return f"\\u{o:04x}"


def dumps_json(obj: Any, indent: int | None = 2) -> str:
    """JSON that is safe to print: `json` escapes C0 controls itself (\\u001b); we also
    escape DEL, C1 controls, bidi/format characters and other non-printables. This is
    sound because outside strings `json` output is plain ASCII, so any such character is
    inside a string, where \\uXXXX means the same character."""
    raw = json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=False)
    return re.sub(r"[^\x20-\x7e\n]", lambda m: m.group() if m.group().isprintable() else _json_escape(m), raw)


def print_json(obj: Any) -> None:
    sys.stdout.write(dumps_json(obj) + "\n")
    sys.stdout.flush()


class _Console(Console):
    def on_broken_pipe(self) -> None:
        # rich's default exits 1 on its own; the CLI's one error contract (cli/app.py) decides
        raise BrokenPipeError(32, "stdout was closed")


def console() -> Console:
    """A stdout console made at call time (so COLUMNS and redirection are honoured).
    Piped output is not squeezed into rich's 80-column default: tables stay one row per line."""
    c = _Console(highlight=False, emoji=False, markup=False, soft_wrap=False)
    if not c.is_terminal and "COLUMNS" not in os.environ:
        c.width = 160
    return c


def table(columns: Sequence[str | tuple[str, str] | Column], rows: Iterable[Sequence[object]],
          title: str | None = None, caption: str | None = None) -> Table:
    """A plain rich table. A column is a header, (header, justify) or a rich `Column` for
    finer control. Cells that are not already `Text` are escaped with `printable`; long
    cells wrap (mid-word if need be) instead of being cut."""
    cols = [c if isinstance(c, Column) else
            Column(c, overflow="fold") if isinstance(c, str) else Column(c[0], justify=c[1], overflow="fold")
            for c in columns]
    t = Table(*cols, title=None if title is None else Text(printable(title), style="table.title"),
              caption=None if caption is None else Text(printable(caption), style="table.caption"),
              header_style="bold", caption_justify="left")
    for row in rows:
        t.add_row(*(cell if isinstance(cell, Text) else text("" if cell is None else cell) for cell in row))
    return t
