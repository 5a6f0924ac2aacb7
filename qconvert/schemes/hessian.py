"""The Hessian side of GPTQ, shared by the integer-grid solver (gptq.py) and the ggml
block-grid solver (gptq_grid.py).

For a linear layer y = x Wᵀ, the layer-wise objective ‖X Wᵀ - X W'ᵀ‖² has Hessian
H = 2 XᵀX (one row of X per calibration token). Both solvers walk the columns of W and
need the upper Cholesky factor U of the damped inverse, (H + λI)⁻¹ = UᵀU: row j of U,
divided by U[j, j], is how a rounding error in column j is spread over the columns
after it (GPTQ paper, Frantar et al. 2022, section 3, "Cholesky reformulation").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..errors import InputError, ShapeError

log = logging.getLogger(__name__)

# Each failed Cholesky multiplies the damping fraction by this. 0.01 -> 0.1 -> 1 -> 10:
# at 1 the damping equals the mean diagonal, which makes any PSD H comfortably
# definite; past that the Hessian is so broken (NaN, negative diagonal) that GPTQ's
# answer would mean little, and we stop.
_DAMP_GROWTH = 10.0
_MAX_RETRIES = 3


def hessian_init(n_cols: int, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> tuple[torch.Tensor, int]:
    """An empty running Hessian for a layer with `n_cols` input features, and its count."""
    return torch.zeros(n_cols, n_cols, dtype=dtype, device=device), 0


def accumulate_hessian(H: torch.Tensor, n_seen: int, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Fold calibration rows `x` (..., in_features) into the running mean of 2·xᵀx.

    H is updated in place (and returned) so that after any number of calls it equals
    2/N · Σ xᵢᵀxᵢ over all N rows seen. The reference GPTQ code counts sequences rather
    than tokens; that only rescales H, and nothing downstream depends on H's scale
    (damping is a fraction of its mean diagonal, the reported error is a ratio).
    """
    x = x.reshape(-1, H.shape[0]).to(device=H.device, dtype=H.dtype)
    n = x.shape[0]
    if n == 0:
        return H, n_seen
    total = n_seen + n
    H.mul_(n_seen / total)
    H.addmm_(x.T, x, alpha=2.0 / total)
    return H, total


class HessianSum:
    """Σ xᵀx over calibration rows in float64, and the number of rows: what the drivers
    collect, because sums (unlike accumulate_hessian's running mean) add up across batches
    and across processes (calib/world.py all-reduces `tensors()`).

    Each batch's product is computed in float32 (the fast path on any device) in slabs of
    rows that keep the temporaries near 200 MB, and added in float64, so the total depends
    on the batches, not on how they were grouped: splitting them over ranks changes only the
    order of a few float64 additions, far below float32's resolution. The price is memory:
    8 bytes per entry where the running mean needs 4 (a 14336-wide down projection: 1.6 GB).
    """

    _SLAB_ELEMENTS = 1 << 24  # per float32 slab of the product (64 MB; its float64 copy 128 MB)

    def __init__(self, n_cols: int, device: torch.device | str | None = None) -> None:
        self.sum = torch.zeros(n_cols, n_cols, dtype=torch.float64, device=device)
        self.rows = torch.zeros((), dtype=torch.float64, device=device)  # a tensor: it is all-reduced too

    def add(self, x: torch.Tensor) -> None:
        n = self.sum.shape[0]
        x = x.reshape(-1, n).to(device=self.sum.device, dtype=torch.float32)
        step = max(1, self._SLAB_ELEMENTS // n)
        for j in range(0, n, step):
            self.sum[j:j + step] += (x[:, j:j + step].T @ x).to(torch.float64)
        self.rows += x.shape[0]

    def tensors(self) -> list[torch.Tensor]:
        return [self.sum, self.rows]

    def hessian(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """2/N · Σ xᵀx, the matrix accumulate_hessian keeps (zeros before any row)."""
        n = float(self.rows)
        return (self.sum * (2.0 / n) if n else self.sum).to(dtype)


def unite_hessians(world, hess: dict[str, HessianSum], device) -> None:
    """Sum a layer's Hessians over the ranks of `world` (calib/world.py), in place, after
    giving every rank the ones any rank has (empty where its windows never reached the
    module, e.g. a routed expert), so all run the same collectives in the same order."""
    for name, n_cols in world.union({n: h.sum.shape[0] for n, h in hess.items()}).items():
        if name not in hess:
            hess[name] = HessianSum(n_cols, device=device)
    for name in sorted(hess):
        world.all_sum(hess[name].tensors())


@dataclass(frozen=True)
class InverseFactor:
    U: torch.Tensor  # upper triangular, (H + λI)⁻¹ = UᵀU, same dtype/device as H
    damp: float  # the damping fraction finally used (λ = damp · mean live diagonal)
    retries: int  # how many times Cholesky failed and damping was raised
    dead: torch.Tensor  # bool (n,), columns whose H_jj was 0


def inverse_factor(H: torch.Tensor, damp: float = 0.01) -> InverseFactor:
    """Damp H and return the upper Cholesky factor of its inverse.

    Dead columns (H_jj == 0: the input feature was zero on every calibration row) get
    H_jj = 1. Their row and column of H are zero, so they stay decoupled in the
    inverse and its factor: they are rounded to nearest and pass no error on, and
    their weights are kept. (The reference implementation zeroes such weights; that
    is harmless on calibration text but throws away a column that other inputs may
    use.) λ is `damp` times the mean diagonal of the live columns, so that the unit
    diagonal of dead columns does not change the damping of the others.

    If Cholesky fails (H not numerically positive definite, common in float32 with
    correlated inputs and few rows), the damping is multiplied by 10 and retried; the
    result reports the damping used and the number of retries.
    """
    if H.ndim != 2 or H.shape[0] != H.shape[1]:
        raise ShapeError(f"GPTQ: Hessian must be square, got shape {tuple(H.shape)}")
    n = H.shape[0]
    # Peak memory is three n x n matrices (damped copy, its factor, the inverse): for a
    # 14336-wide down projection in float64 that is about 5 GB, so nothing else is kept.
    Hd = H.clone()
    diag = Hd.diagonal()  # a view: writes go into Hd
    dead = diag == 0
    live = ~dead
    diag[dead] = 1.0
    base = float(diag[live].mean()) if bool(live.any()) else 1.0
    undamped = diag.clone()
    frac = float(damp)
    for attempt in range(_MAX_RETRIES + 1):
        diag.copy_(undamped + frac * base)
        L, info = torch.linalg.cholesky_ex(Hd)
        if int(info) == 0:
            Hinv = torch.cholesky_inverse(L)
            del L
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            del Hinv
            if int(info) == 0 and bool(torch.isfinite(U).all()):
                if attempt:
                    log.warning("GPTQ: Hessian not positive definite; damping raised to %g "
                                "after %d retries", frac, attempt)
                return InverseFactor(U, frac, attempt, dead)
        frac = max(frac * _DAMP_GROWTH, 0.01)
    # the calibration activations' fault (NaN/inf, or too few distinct rows): an input error
    raise InputError(
        f"GPTQ: the Hessian ({n}x{n}) stays singular even with damping {frac / _DAMP_GROWTH:g} "
        "of its mean diagonal; check the calibration activations for NaN/inf or use more "
        "calibration text"
    )


def output_error(W: torch.Tensor, Wq: torch.Tensor, H: torch.Tensor) -> float:
    """tr(ΔHΔᵀ) / tr(WHWᵀ) with Δ = W - Wq: the layer's output error on the calibration
    rows relative to its output energy (both sums of squares over tokens and outputs).
    Computed in float64 so that small errors are not lost in rounding."""
    H64 = H.to(torch.float64)
    W64 = W.to(device=H.device, dtype=torch.float64)
    D = W64 - Wq.to(device=H.device, dtype=torch.float64)
    num = float(((D @ H64) * D).sum())
    den = float(((W64 @ H64) * W64).sum())
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den
