"""What is supported, as the registry lists it: one entry per adapter with its HF
`architectures` strings, GGUF arch and description, for `qconvert quantize --help` and the
README table (scripts/arch_table.py). Nothing here is hand-kept: a new family file shows
up by registering."""

from __future__ import annotations

from typing import NamedTuple

import gguf

from . import ARCHS, supported


class Family(NamedTuple):
    hf_names: list[str]  # the `architectures` strings one adapter is registered under
    gguf_arch: str
    description: str


def families() -> list[Family]:
    """One entry per adapter class, sorted by GGUF arch."""
    by_cls: dict[type, list[str]] = {}
    for name in supported():  # loads every family module
        by_cls.setdefault(ARCHS.get(name), []).append(name)
    out = [Family(names, gguf.MODEL_ARCH_NAMES[cls.gguf_arch], getattr(cls, "description", "") or "")
           for cls, names in by_cls.items()]
    return sorted(out, key=lambda f: (f.gguf_arch, f.hf_names))


def help_text() -> str:
    """A few lines for a command's help (click keeps the lines of a paragraph opened by \\b)."""
    lines = [f"  {', '.join(f.hf_names)} -> {f.gguf_arch}" for f in families()]
    return "\b\nSupported architectures (HF architectures -> GGUF arch):\n" + "\n".join(lines) + "\n"
