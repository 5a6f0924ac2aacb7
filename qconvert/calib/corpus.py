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
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

from ..errors import InputError

SPLITS = ("train", "calibration", "evaluation")
_SALT = b"qconvert:"
_SEPARATOR = "\n\n"
_MIN_SHARED = 40  # characters; shorter shared paragraphs are boilerplate ("See also:")


@lru_cache(maxsize=1)
def documents() -> list[tuple[str, str]]:
    """All (topic key, text) pairs, sorted by key."""
    from pydoc_data.topics import topics

    return sorted(topics.items())


def split_of(key: str) -> str:
    """The split a topic key belongs to (see the module docstring for the rule)."""
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
        return chosen
    held_out = _held_out_paragraphs()
    return [(k, _SEPARATOR.join(p for p in t.split(_SEPARATOR) if p.strip() not in held_out))
            for k, t in chosen]


@lru_cache(maxsize=1)
def _held_out_paragraphs() -> frozenset[str]:
    """Stripped paragraphs of the held-out topics long enough to count as shared text."""
    return frozenset(
        p.strip()
        for k, t in documents() if split_of(k) != "train"
        for p in t.split(_SEPARATOR) if len(p.strip()) >= _MIN_SHARED
    )


def split_text(name: str) -> str:
    """One split's documents joined by blank lines, in key order."""
    return _SEPARATOR.join(text for _, text in split_documents(name))
