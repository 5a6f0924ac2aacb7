"""A slow, obviously correct GPTQ in NumPy, written apart from qconvert/schemes/gptq.py
to check it: one column at a time, no lazy blocks, a plain matrix inverse.

It implements the same conventions (documented in gptq.py): min-max quantizer with
the range widened to include 0, symmetric range ±max|w| around code 2^(bits-1), dead
columns kept and given H_jj = 1, damping λ = damp · mean of the live diagonal,
act-order by descending H_jj (stable), group parameters taken at a group's first
column from the current weights (or from the original weights with static groups).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class OracleResult(NamedTuple):
    codes: np.ndarray  # (out, in), original column order
    scales: np.ndarray  # (out, n_groups)
    zeros: np.ndarray  # (out, n_groups)
    g_idx: np.ndarray  # (in,)
    dequant: np.ndarray  # (out, in), original column order
    order: np.ndarray  # walk order: order[j] is the column rounded j-th
    walk_codes: np.ndarray  # (out, in), codes in walk order
    tie_gap: np.ndarray  # (out, in), walk order: | |w/s - rint(w/s)| - 0.5 |, 0 at a tie
    zero_gap: np.ndarray  # (out, n_groups): the same for -min/s, the zero point (inf if sym)


def _gap(x: np.ndarray) -> np.ndarray:
    """Distance from a rounding tie (x = k + 0.5): where a tiny change flips rint(x)."""
    return np.abs(np.abs(x - np.rint(x)) - 0.5)


def oracle_params(block: np.ndarray, bits: int, sym: bool):
    """(scale, zero, zero_gap) per row of block."""
    maxq = 2**bits - 1
    scale = np.empty(block.shape[0], block.dtype)
    zero = np.empty(block.shape[0], block.dtype)
    zgap = np.full(block.shape[0], np.inf)
    for r in range(block.shape[0]):
        lo = min(block[r].min(), 0.0)
        hi = max(block[r].max(), 0.0)
        if sym:
            hi = max(-lo, hi)
            lo = -hi
        if lo == 0 and hi == 0:
            lo, hi = -1.0, 1.0
        scale[r] = (hi - lo) / maxq
        if sym:
            zero[r] = 2 ** (bits - 1)
        else:
            z = -block.dtype.type(lo) / scale[r]
            zero[r], zgap[r] = np.rint(z), _gap(z)
    return scale, zero, zgap


def oracle_gptq(W, H, *, bits, group_size=-1, act_order=False, sym=False, damp=0.01,
                static_groups=False, dtype=np.float64):
    """Returns an OracleResult; codes/dequant/g_idx in original column order."""
    W = np.array(W, dtype=dtype)
    H = np.array(H, dtype=dtype)
    n_out, n_in = W.shape
    maxq = 2**bits - 1
    gs = n_in if group_size == -1 else group_size
    n_groups = -(-n_in // gs)

    hdiag = np.diag(H).copy()
    dead = hdiag == 0
    for j in np.flatnonzero(dead):
        H[j, j] = 1.0
    lam = damp * (hdiag[~dead].mean() if (~dead).any() else 1.0)
    order = np.argsort(-hdiag, kind="stable") if act_order else np.arange(n_in)

    Hp = H[np.ix_(order, order)] + lam * np.eye(n_in, dtype=dtype)
    Hinv = np.linalg.inv(Hp)
    U = np.linalg.cholesky(Hinv).T  # upper: Hinv = Uᵀ U

    scales = np.zeros((n_out, n_groups), dtype)
    zeros = np.zeros((n_out, n_groups), dtype)
    zero_gap = np.zeros((n_out, n_groups))
    if static_groups:
        for g in range(n_groups):
            scales[:, g], zeros[:, g], zero_gap[:, g] = oracle_params(W[:, g * gs:(g + 1) * gs], bits, sym)

    Wp = W[:, order].copy()
    codes = np.zeros((n_out, n_in), np.int64)
    deq = np.zeros((n_out, n_in), dtype)
    gap = np.zeros((n_out, n_in))
    for j in range(n_in):
        if static_groups:
            g = order[j] // gs
        else:
            g = j // gs
            if j % gs == 0:
                scales[:, g], zeros[:, g], zero_gap[:, g] = oracle_params(Wp[:, j:j + gs], bits, sym)
        s, z = scales[:, g], zeros[:, g]
        w = Wp[:, j].copy()
        x = w / s
        gap[:, j] = _gap(x)
        q = np.clip(np.rint(x) + z, 0, maxq)
        wq = s * (q - z)
        e = (w - wq) / U[j, j]
        Wp[:, j + 1:] -= np.outer(e, U[j, j + 1:])
        codes[:, j] = q
        deq[:, j] = wq

    back = np.empty(n_in, np.int64)
    back[order] = np.arange(n_in)
    if static_groups:
        g_idx = np.arange(n_in) // gs
    else:
        g_idx = back // gs
    return OracleResult(codes[:, back], scales, zeros, g_idx, deq[:, back], order, codes, gap,
                        zero_gap)
