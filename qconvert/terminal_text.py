"""Text from model files made safe for a terminal. A tensor name or metadata string is
untrusted: it may hold an escape sequence that would recolour or rewrite the user's
terminal. The CLI's tables and error lines (cli/_render.py, cli/app.py) and the progress
bar (progress.py) all print such text through `printable`."""

from __future__ import annotations


def _escape_char(c: str) -> str:
    o = ord(c)
    if o < 0x100:
        return f"\\x{o:02x}"
    if o < 0x10000:
        return f"\\u{o:04x}"
    return f"\\U{o:08x}"


def printable(s: object) -> str:
    """`s` as text with every non-printable character (controls, format characters such
    as bidi overrides, unassigned code points, lone surrogates) spelled as a Python-style
    escape, so it cannot act on a terminal: "\\x1b[31m" shows as the 8 characters \\x1b[31m."""
    s = str(s)
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else _escape_char(c) for c in s)
