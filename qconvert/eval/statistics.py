"""Streaming statistics of one model's predictions, alone or against a reference.

Per scored position (see windows.py), with q the candidate's next-token distribution and
p the reference's:
    NLL   = -log q(actual next token)             perplexity = exp(mean NLL)
    ΔNLL  = NLL - the reference's NLL             paired: its standard error is far smaller
                                                  than the NLL's own when both models err on
                                                  the same hard tokens
    KL    = sum_v p(v) (log p(v) - log q(v))      KL(P_ref || Q_candidate), nats
    top-1 = argmax q == argmax p
Softmax and KL are taken in float64: in float32 the KL of two nearly equal distributions
(1e-6 nats) drowns in rounding. The reference's stored log-probs are renormalised
(log p -= logsumexp log p) before use, so p sums to one exactly and KL stays >= 0 whatever
the storage precision (reference.py: float32, or float16 for very large references).
Only per-position scalars are kept (two float64 per position), never a vocab-wide array
for more than a chunk of rows.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

_CHUNK_ELEMENTS = 1 << 22  # rows x vocab per float64 temporary: 32 MB


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    m = np.max(x, axis=-1, keepdims=True)
    return x - (m + np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True)))


def row_chunks(n_rows: int, vocab: int):
    step = max(1, _CHUNK_ELEMENTS // max(1, vocab))
    for a in range(0, n_rows, step):
        yield slice(a, min(n_rows, a + step))


@dataclass
class Metrics:
    model: str
    backend: str  # what computed the candidate's logits
    reference: str  # "" when scored alone
    n_positions: int
    nll: float  # mean negative log-likelihood, nats/token
    nll_se: float  # its standard error over positions
    delta_nll_se: float = float("nan")  # standard error of the mean of NLL - reference NLL
    mean_kl: float = float("nan")
    median_kl: float = float("nan")
    p99_kl: float = float("nan")
    max_kl: float = float("nan")
    top1: float = float("nan")  # fraction of positions whose argmax matches the reference's
    seconds: float = 0.0
    nonfinite: int = 0  # positions whose logits held NaN or Inf (their figures are NaN)

    @property
    def ppl(self) -> float:
        return math.exp(self.nll)

    @property
    def ppl_se(self) -> float:
        """Standard error of the perplexity (first order: ppl * se of the mean NLL)."""
        return self.ppl * self.nll_se

    def to_dict(self) -> dict:
        return dict(asdict(self), ppl=self.ppl, ppl_se=self.ppl_se)


class Accumulator:
    """Collects per-position NLL, KL and top-1 matches window by window."""

    def __init__(self) -> None:
        self.nll: list[np.ndarray] = []
        self.kl: list[np.ndarray] = []
        self.delta: list[np.ndarray] = []
        self.same_top = 0
        self.count = 0
        self.nonfinite = 0

    def add(self, logq: np.ndarray, targets: np.ndarray, logp: Optional[np.ndarray] = None,
            ref_top: Optional[np.ndarray] = None, ref_nll: Optional[np.ndarray] = None) -> None:
        """logq: candidate log-probs (rows, vocab) float64; logp, ref_top, ref_nll: the
        reference's log-probs (same shape), argmax and NLL at the same rows."""
        nll = -logq[np.arange(len(targets)), targets]
        self.nll.append(nll)
        self.count += len(targets)
        self.nonfinite += int(np.sum(~np.isfinite(logq).all(axis=-1)))
        if logp is None:
            return
        self.delta.append(nll - ref_nll)
        p = np.exp(logp)
        # p == 0 contributes nothing, even where log q is -inf (0 * inf would be nan); a NaN
        # p stays NaN (`p > 0` would have dropped it: a NaN reference gave KL 0)
        terms = np.where(p == 0, 0.0, p * (logp - logq))
        self.kl.append(terms.sum(axis=-1))
        self.same_top += int(np.sum(np.argmax(logq, axis=-1) == ref_top))

    def result(self, model: str, backend: str, reference: str, seconds: float) -> Metrics:
        nll = np.concatenate(self.nll)
        m = Metrics(model, backend, reference, len(nll), float(nll.mean()), _se(nll), seconds=seconds,
                    nonfinite=self.nonfinite)
        if self.kl:
            m.delta_nll_se = _se(np.concatenate(self.delta))
            kl = np.concatenate(self.kl)
            m.mean_kl, m.median_kl = float(kl.mean()), float(np.median(kl))
            m.p99_kl, m.max_kl = float(np.quantile(kl, 0.99)), float(kl.max())
            m.top1 = self.same_top / self.count
        return m


def _se(x: np.ndarray) -> float:
    """Standard error of the mean of x."""
    return float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")
