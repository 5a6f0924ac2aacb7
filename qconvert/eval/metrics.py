"""Scoring one model on evaluation windows, alone or against a stored reference; the
statistics themselves (NLL, KL, top-1, in float64) are in statistics.py."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

from ..errors import ShapeError
from .logits import backend_for, check_vocab, open_logits
from .reference import Reference
from .statistics import Accumulator, Metrics, log_softmax, row_chunks  # noqa: F401  (Metrics re-exported)
from .windows import Windows


def score(model: Path | str, windows: Windows, *, reference: Optional[Reference] = None,
          backend: Optional[str] = None, threads: int = 1,
          on_window: Optional[Callable[[], None]] = None) -> Metrics:
    """Run `model` on every window; perplexity, and KL/top-1 against `reference` if given.
    on_window is called after each window (progress)."""
    t0 = time.perf_counter()
    backend = backend or backend_for(model)
    if reference is not None and reference.windows.digest() != windows.digest():
        raise ShapeError("candidate and reference must be scored on the same windows")
    src = open_logits(model, backend=backend, n_ctx=windows.n_ctx, threads=threads)
    try:
        check_vocab(model, src, windows.tokens, reference.vocab if reference is not None else None)
    except BaseException:
        src.close()
        raise
    acc = Accumulator()
    targets = windows.targets()
    try:
        for w in range(windows.n_windows):
            logits = src(windows.tokens[w], windows.first)
            if reference is not None and logits.shape[-1] != reference.vocab:
                raise ShapeError(f"{model}: {logits.shape[-1]} logits per position, the reference has "
                                 f"{reference.vocab}; a different vocabulary cannot be compared")
            for rows in row_chunks(len(logits), logits.shape[-1]):
                logq = log_softmax(logits[rows])
                if reference is None:
                    acc.add(logq, targets[w, rows])
                else:
                    acc.add(logq, targets[w, rows], reference.logprobs(w, rows), reference.top[w, rows],
                            reference.nll[w, rows])
            if on_window is not None:
                on_window()
    finally:
        src.close()
    return acc.result(str(model), f"{backend} ({src.label})", reference.describe() if reference else "",
                      time.perf_counter() - t0)


def compare(candidate: Path | str, reference: Reference, *, backend: Optional[str] = None,
            threads: int = 1) -> Metrics:
    """Metrics of `candidate` against `reference`, on the reference's windows."""
    return score(candidate, reference.windows, reference=reference, backend=backend, threads=threads)
