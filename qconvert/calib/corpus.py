"""A small English corpus that ships with every CPython: the pydoc topic help texts.

`pydoc_data.topics.topics` maps ~80 topic keys ("if", "assignment", "numbers", ...) to
the reference-manual prose behind `help("if")`: about 460k characters of English with
some code.  Using it means calibration and evaluation need no download, and the example
model (scripts/make_example_model.py) can be trained on one part and measured on parts
it never saw.

Split rule (stable, independent of dict order and of how many topics exist):
    b = int.from_bytes(sha256(b"qconvert:" + key.encode()).digest()[:8], "big") % 10
    b == 0 -> "evaluation",  b == 1 -> "calibration",  otherwise -> "train".
Held-out splits are whole topics.  Topics quote each other, though ("compound" contains
most of "function", "specialnames" most of "sequence-types"), so the train split is its
topics with every paragraph (text between blank lines) of at least 40 characters that
also occurs in a held-out topic removed.  Thus no held-out paragraph of 40 characters or
more appears anywhere in the training text; shorter shared lines ("See also:",
"Note:") stay.  The salt
"qconvert:" was chosen because on CPython 3.11 it gives evaluation and calibration
splits of ~53k and ~37k characters (unsalted, both fell under 30k: a few topics are
long, so per-topic hashing has high variance).  The texts differ a little between
Python versions; the rule does not.

The docstrings of the pure-Python standard library are a second source, read with `ast` from
the installed sources (nothing is imported): one document per module file (key
"stdlib:<path>"), its module, class and function docstrings in source order, files in sorted
path order.  Packages that distributions ship separately or patch (test, idlelib, tkinter,
turtledemo, lib2to3, distutils, ensurepip, site.py, sysconfig.py, ...) are left out so the
text is the same on any install of one CPython version.  Module files are split by the same
hash rule on their key, so each held-out split is its topics followed by its docstring files:
the evaluation text is then mostly of the kind the example model trains on (a topic-only
evaluation split was out of distribution for a model trained mostly on docstrings, and
quantization noise lowered its perplexity there).  Training text (`training_documents`) is
the train split plus the train docstring files, with every paragraph of 40+ characters that
occurs in any held-out document dropped.
"""

from __future__ import annotations

import ast
import hashlib
import sysconfig
from functools import lru_cache
from pathlib import Path

from ..errors import InputError

SPLITS = ("train", "calibration", "evaluation")
_SALT = b"qconvert:"
_SEPARATOR = "\n\n"
_MIN_SHARED = 40  # characters; shorter shared paragraphs are boilerplate ("See also:")
# Top-level stdlib entries left out of the docstring text: tests, GUI and tool packages, and
# what distributions split into separate packages or patch (their text would vary by install).
_STDLIB_SKIPPED = frozenset({
    "test", "idlelib", "tkinter", "turtledemo", "turtle.py", "lib2to3", "distutils", "ensurepip",
    "site-packages", "dist-packages", "lib-dynload", "pydoc_data", "__phello__", "__pycache__",
    "site.py", "sysconfig.py", "this.py", "antigravity.py",
})


@lru_cache(maxsize=1)
def documents() -> list[tuple[str, str]]:
    """All (topic key, text) pairs, sorted by key."""
    from pydoc_data.topics import topics

    return sorted(topics.items())


def split_of(key: str) -> str:
    """The split a topic key or "stdlib:<path>" key belongs to (the module docstring's rule)."""
    bucket = int.from_bytes(hashlib.sha256(_SALT + key.encode("utf-8")).digest()[:8], "big") % 10
    if bucket == 0:
        return "evaluation"
    if bucket == 1:
        return "calibration"
    return "train"


def split_documents(name: str) -> list[tuple[str, str]]:
    """The (key, text) pairs of one split, sorted by key (train texts de-duplicated)."""
    if name not in SPLITS:
        raise InputError(f"unknown corpus split {name!r}; choose one of {', '.join(SPLITS)}")
    chosen = [(k, t) for k, t in documents() if split_of(k) == name]
    if name != "train":
        return chosen + [(k, t) for k, t in _docstring_pool() if split_of(k) == name]
    held_out = _held_out_paragraphs()
    return [(k, _SEPARATOR.join(p for p in t.split(_SEPARATOR) if p.strip() not in held_out))
            for k, t in chosen]


@lru_cache(maxsize=1)
def _held_out_paragraphs() -> frozenset[str]:
    """Stripped paragraphs of the held-out topics long enough to count as shared text."""
    return frozenset(
        p.strip()
        for k, t in documents() + _docstring_pool() if split_of(k) != "train"
        for p in t.split(_SEPARATOR) if len(p.strip()) >= _MIN_SHARED
    )


def split_text(name: str) -> str:
    """One split's documents joined by blank lines, in key order."""
    return _SEPARATOR.join(text for _, text in split_documents(name))


def training_documents() -> list[tuple[str, str]]:
    """What the example model trains on: the train split, then the train docstring files."""
    return split_documents("train") + _docstring_documents()


@lru_cache(maxsize=1)
def _docstring_documents() -> list[tuple[str, str]]:
    """The train split's ("stdlib:<path>", docstrings); held-out paragraphs dropped."""
    docs = [(k, t) for k, t in _docstring_pool() if split_of(k) == "train"]
    held_out = _held_out_paragraphs()
    leaked = [p for p in held_out if any(p in t for _, t in docs)]
    if leaked:  # checked per paragraph only when some held-out text occurs at all
        docs = [(k, _SEPARATOR.join(q for q in t.split(_SEPARATOR) if not any(p in q for p in leaked)))
                for k, t in docs]
    return [(k, t) for k, t in docs if t.strip()]


@lru_cache(maxsize=1)
def _docstring_pool() -> list[tuple[str, str]]:
    """("stdlib:<path>", docstrings) for every stdlib module file with any, sorted by path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
        rel = path.relative_to(root)
        if (rel.parts[0] in _STDLIB_SKIPPED or rel.parts[0].startswith(("config-", "_sysconfigdata"))
                or "tests" in rel.parts):
            continue
        try:
            tree = ast.parse(path.read_bytes(), filename=str(rel))
        except (SyntaxError, ValueError):  # a file for another platform or a stray template
            continue
        text = _SEPARATOR.join(_docstrings(tree))
        if text:
            docs.append((f"stdlib:{rel.as_posix()}", text))
    return docs


def _docstrings(node: ast.AST):
    """Module, class and function docstrings under `node`, in source order."""
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        doc = ast.get_docstring(node)
        if doc and doc.strip():
            yield doc.strip()
    for child in ast.iter_child_nodes(node):
        yield from _docstrings(child)
