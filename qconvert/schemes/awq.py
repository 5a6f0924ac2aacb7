"""AWQ (activation-aware weight quantization, Lin et al. 2023) as pure functions: the
per-input-channel scale search and the fold that keeps the model the same function.

A linear y = x Wᵀ is unchanged when its input channels are divided by s and its weight
columns multiplied by s: y = (x / s)(W s)ᵀ. The division is folded into whatever makes x
(an RMSNorm's weight, or the rows of a linear before it), so only W s is quantized. Channels
with large activations get s > 1: their weights use more of the grid, and their rounding
error, divided by s again on the way out, weighs less where it matters most.

    s(α) = mean|x|^α,  normalised by sqrt(max · min) so the scales straddle 1
    α in ALPHAS; chosen to minimise Σ_W ‖X Wᵀ - X (Q(W s) / s)ᵀ‖² = Σ tr(Δ XᵀX Δᵀ)

with Q the tensor's real target grid (its GGUF block type or its int-N group grid). α = 0
is s = 1, plain rounding, so the chosen scales never measure worse on the calibration
inputs than rounding the weights as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

# AWQ's published search uses 20 points in [0, 1); 11 points cost half and, on the example
# model and llama_narrow, chose the same α or a neighbour of it
ALPHAS = tuple(i / 10 for i in range(11))

# (scaled weight W·s, importance of its columns: mean (x/s)²) -> the weight the grid gives
# back, still scaled. GGUF grids weigh their scale search with the importance, as the writer
# will; int-N grids ignore it.
Quantizer = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Found:
    scales: torch.Tensor  # (in,) float32: divide the input by these, multiply W's columns
    alpha: float
    err: float  # Σ tr(Δ H Δᵀ) at the chosen scales
    rtn_err: float  # the same at s = 1 (plain rounding on the same grid)


def candidate_scales(absmean: torch.Tensor, alpha: float) -> torch.Tensor:
    """mean|x|^α per channel, normalised so that max·min = 1. A channel that never fired
    (mean 0) would get scale 0 and an infinite inverse: it is floored first."""
    a = absmean.to(torch.float64)
    floor = max(float(a.max()) * 1e-5, 1e-12)
    s = a.clamp(min=floor) ** alpha
    s = s / torch.sqrt(s.max() * s.min())
    return s.to(torch.float32)


def output_error(W: torch.Tensor, Wq: torch.Tensor, H: torch.Tensor) -> float:
    """tr((W - Wq) H (W - Wq)ᵀ): the summed squared output error over the rows H = XᵀX holds."""
    D = (W - Wq).to(H.dtype)
    return float(((D @ H) * D).sum())


def search_scales(absmean: torch.Tensor, meansq: torch.Tensor, H: torch.Tensor, weights: Sequence[torch.Tensor],
                  quantizers: Sequence[Quantizer], alphas: Sequence[float] = ALPHAS) -> Found:
    """The α (and its scales) minimising the summed output error of `weights` (each
    (out, in), all reading the same input) quantized by their own `quantizers`; `absmean`
    and `meansq` are mean |x| and mean x² per input channel, H = Σ xᵀx."""
    best: Found | None = None
    rtn = None
    for alpha in alphas:
        s = candidate_scales(absmean, alpha)
        imp = (meansq.to(torch.float64) / s.to(torch.float64) ** 2).to(torch.float32).numpy()
        err = 0.0
        for W, q in zip(weights, quantizers):
            scaled = (W * s).numpy()
            Wq = torch.from_numpy(np.asarray(q(scaled, imp), dtype=np.float32).reshape(W.shape)) / s
            err += output_error(W, Wq, H)
        if alpha == 0:
            rtn = err
        if best is None or err < best.err:
            best = Found(s, alpha, err, 0.0)
    assert best is not None
    return Found(best.scales, best.alpha, best.err, best.err if rtn is None else rtn)


def fold_into_norm(norm_weight: torch.Tensor, weights: Sequence[torch.Tensor], s: torch.Tensor) -> None:
    """In place: an RMSNorm's output (x̂ · w) divided by s, the linears after it scaled up."""
    norm_weight.div_(s.to(norm_weight))
    for W in weights:
        W.mul_(s.to(W))


def fold_into_linear(prev_weight: torch.Tensor, prev_bias, weights: Sequence[torch.Tensor],
                     s: torch.Tensor) -> None:
    """In place: a linear whose output feeds `weights` (v -> o; up -> down, through the
    gate's elementwise product, which is linear in up) gives out x / s."""
    prev_weight.div_(s.to(prev_weight)[:, None])
    if prev_bias is not None:
        prev_bias.div_(s.to(prev_bias))
    for W in weights:
        W.mul_(s.to(W))


# AWQ's weight clipping (the paper's auto_clip): each (row, group) of an int-N weight may be
# clamped to c·max|w| before it is rounded, so its absmax grid is finer. 1.0 (no clipping)
# is in the grid, so the chosen clip is never worse on the objective below.
CLIP_RATIOS = tuple(1 - i / 20 for i in range(10))  # 1.0, 0.95, ..., 0.55


def clip_weights(W: torch.Tensor, H: torch.Tensor, quantize: Quantizer, group_size: int) -> tuple[torch.Tensor, float, float]:
    """W (out, in) with each (row, group of `group_size` columns) clamped to the ratio of
    CLIP_RATIOS that minimises that group's own output error Δ_g H_gg Δ_gᵀ after `quantize`
    (the int-N group grid; cross-group terms of H are left out, as AWQ does). Returns the
    clipped W and the summed group errors with and without clipping."""
    n_out, n_in = W.shape
    gs = n_in if group_size == -1 else group_size
    G = n_in // gs
    Hb = torch.stack([H[g * gs:(g + 1) * gs, g * gs:(g + 1) * gs] for g in range(G)]).to(torch.float64)
    Wg = W.reshape(n_out, G, gs)
    amax = Wg.abs().amax(dim=2, keepdim=True)
    best_err = best = None
    for c in CLIP_RATIOS:
        Wc = torch.maximum(torch.minimum(Wg, c * amax), -c * amax).reshape(n_out, n_in)
        Wq = torch.from_numpy(np.asarray(quantize(Wc.numpy(), None), dtype=np.float32)).reshape(n_out, G, gs)
        D = (Wg - Wq).to(torch.float64)
        err = torch.einsum("rgi,gij,rgj->rg", D, Hb, D)
        if best is None:
            best_err, best, plain = err, Wc.reshape(n_out, G, gs).clone(), float(err.sum())
            continue
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better[..., None], Wc.reshape(n_out, G, gs), best)
    return best.reshape(n_out, n_in), float(best_err.sum()), plain
