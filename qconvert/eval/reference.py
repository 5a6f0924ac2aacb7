"""The reference a candidate is compared with: its log-probs at every scored position, on disk.

Layout of a reference directory:
    tokens.npy     int32 (n_windows, n_ctx)             the windows it was computed on
    logprobs.npy   float32 or float16 (n_windows, n_scored, vocab)   log-softmax of its logits
    top.npy        int32 (n_windows, n_scored)           its argmax, from the float32 logits
    nll.npy        float64 (n_windows, n_scored)         its NLL of the actual next tokens
    meta.json      model, backend, first scored position, windows digest, vocab, own metrics
The log-probs are float32 while the file stays under STORE_F32_LIMIT (the example model:
2048 x ~7k positions = 57 MB) and float16 beyond (a 150k vocabulary and 8k positions:
2.5 GB instead of 5), read back through a memmap one window at a time. float16's rounding
(relative 2^-11) sets a floor on the KL it can resolve: a model against its own float16
log-probs measured 2.5e-7 nats on the tiny test Llama, whose near-uniform distributions are
the worst case; quantized models sit at 1e-3 and above. The argmax is stored separately so
that ties made by rounding cannot change the top-1 agreement.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..errors import FormatError, InputError
from .logits import backend_for, check_vocab, open_logits
from .statistics import Accumulator, Metrics, log_softmax, row_chunks
from .windows import Windows

STORE_F32_LIMIT = 1 << 30  # bytes of float32 log-probs above which float16 is stored


@dataclass
class Reference:
    path: Path
    windows: Windows
    model: str
    backend: str
    vocab: int
    metrics: Metrics  # the reference scored alone (perplexity)
    _logprobs: np.ndarray = field(repr=False, default=None)
    top: np.ndarray = field(repr=False, default=None)
    nll: np.ndarray = field(repr=False, default=None)
    _tmp: Optional[tempfile.TemporaryDirectory] = field(repr=False, default=None)

    def describe(self) -> str:
        return f"{Path(self.model).name} via {self.backend}"

    def logprobs(self, window: int, rows: slice) -> np.ndarray:
        """float64 log-probs of one window's scored rows, renormalised after the trip
        through the stored precision (so they sum to one and KL cannot go negative)."""
        lp = np.asarray(self._logprobs[window, rows], dtype=np.float64)
        m = lp.max(axis=-1, keepdims=True)
        return lp - (m + np.log(np.exp(lp - m).sum(axis=-1, keepdims=True)))

    @classmethod
    def open(cls, path: Path | str) -> "Reference":
        path = Path(path)
        try:
            meta = json.loads((path / "meta.json").read_text())
            tokens = np.load(path / "tokens.npy")
            top = np.load(path / "top.npy")
            nll = np.load(path / "nll.npy")
            logprobs = np.load(path / "logprobs.npy", mmap_mode="r")
        except (OSError, ValueError) as e:
            raise FormatError(f"{path}: not a complete evaluation reference ({e})") from None
        windows = Windows(tokens, meta["first"], meta.get("source", ""))
        if (windows.digest() != meta["digest"] or logprobs.shape != (*top.shape, meta["vocab"])
                or nll.shape != top.shape):
            raise FormatError(f"{path}: reference files disagree with meta.json; compute it again")
        metrics = Metrics(**meta["metrics"])
        return cls(path, windows, meta["model"], meta["backend"], meta["vocab"], metrics, logprobs, top, nll)

    def close(self) -> None:
        """Drop the memmap and, for a reference in a temporary directory, the files."""
        self._logprobs = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "Reference":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def reference_from(model: Path | str, windows: Windows, workdir: Path | str | None = None, *,
                   backend: Optional[str] = None, threads: int = 1, dtype=None,
                   on_window: Optional[Callable[[], None]] = None) -> Reference:
    """Run `model` (a GGUF through llama.cpp, an HF directory through transformers) on the
    windows and store its log-probs in `workdir` (created; default: a temporary directory
    removed by Reference.close()). dtype: np.float32 or np.float16 for the stored
    log-probs; default by size (see STORE_F32_LIMIT)."""
    t0 = time.perf_counter()
    backend = backend or backend_for(model)
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="qconvert-ref-")
        workdir = tmp.name
    path = Path(workdir)
    path.mkdir(parents=True, exist_ok=True)
    src = open_logits(model, backend=backend, n_ctx=windows.n_ctx, threads=threads)
    try:
        check_vocab(model, src, windows.tokens)
    except BaseException:
        src.close()
        if tmp is not None:
            tmp.cleanup()
        raise
    targets = windows.targets()
    acc = Accumulator()
    top = np.zeros(targets.shape, dtype=np.int32)
    store = None
    try:
        for w in range(windows.n_windows):
            logits = src(windows.tokens[w], windows.first)
            if not np.isfinite(logits).all():  # KL against NaN means nothing: refuse, naming the file
                raise InputError(f"{model}: the reference gave NaN or Inf logits (window {w + 1}); its weights "
                                 "may hold NaN or Inf (check with qconvert inspect); give a sound reference")
            if store is None:  # the vocabulary is known once the first window has run
                shape = (*targets.shape, logits.shape[-1])
                if dtype is None:
                    dtype = np.float32 if 4 * np.prod(shape) <= STORE_F32_LIMIT else np.float16
                store = np.lib.format.open_memmap(path / "logprobs.npy", mode="w+", dtype=dtype, shape=shape)
            top[w] = np.argmax(logits, axis=-1)
            for rows in row_chunks(len(logits), logits.shape[-1]):
                lp = log_softmax(logits[rows])
                store[w, rows] = lp
                acc.add(lp, targets[w, rows])
            if on_window is not None:
                on_window()
    finally:
        src.close()
    store.flush()
    vocab = int(store.shape[-1])
    del store
    np.save(path / "tokens.npy", windows.tokens)
    np.save(path / "top.npy", top)
    np.save(path / "nll.npy", np.concatenate(acc.nll).reshape(targets.shape))
    label = f"{backend} ({src.label})"
    metrics = acc.result(str(model), label, "", time.perf_counter() - t0)
    meta = dict(model=str(model), backend=label, first=windows.first, digest=windows.digest(), vocab=vocab,
                source=windows.source, store_dtype=np.dtype(dtype).name, metrics=metrics.__dict__)
    (path / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    ref = Reference.open(path)
    ref._tmp = tmp
    return ref
