"""GPTQ onto integer grids (the GPTQ / AutoGPTQ safetensors formats): a pure function
of (weight, Hessian, options), in torch, on whatever device the weight lives on.

    H, n = hessian_init(in_features)
    for x in calibration activations: H, n = accumulate_hessian(H, n, x)
    result = gptq_quantize(W, H, bits=4, group_size=128, act_order=True, sym=True)

Algorithm (Frantar et al. 2022, "GPTQ", Algorithm 1): walk the input columns in order
(descending H_jj with act-order); round column j; divide its error by U[j, j] and
subtract err ⊗ U[j, j+1:] from the columns not yet rounded, so that they absorb it.
Updates are applied lazily in blocks of `block_size` columns (the rank-1 updates
inside a block, one matrix product for everything after it), which gives the same
result as the column-by-column form up to float rounding.

Group parameters are computed when the walk reaches a group's first column, from the
group's current (error-updated) weights, as the reference code does. One difference:
the reference reads the group from the global weight matrix, in which columns inside
the current lazy block still miss this block's updates whenever a group starts
mid-block (group_size < block_size); here the group is read fully updated, which is
what the column-by-column algorithm means and what tests/schemes/gptq_oracle.py does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ShapeError, UnsupportedError
from .hessian import accumulate_hessian, hessian_init, inverse_factor, output_error

__all__ = ["GPTQResult", "accumulate_hessian", "gptq_quantize", "hessian_init",
           "find_params", "quantize_codes", "rtn_quantize"]


@dataclass(frozen=True)
class GPTQResult:
    qweight: torch.Tensor  # uint8 (out, in) codes in 0 .. 2^bits-1, original column order
    scales: torch.Tensor  # (out, n_groups), the solver's float dtype
    zeros: torch.Tensor  # int32 (out, n_groups), integer zero points
    g_idx: torch.Tensor  # int32 (in,), group of each input column
    dequant: torch.Tensor  # float32 (out, in): scales[g] * (qweight - zeros[g])
    loss: float  # GPTQ objective: Σ (w - q)² / U_jj² / 2 over all weights
    err: float  # tr(ΔHΔᵀ) / tr(WHWᵀ), on the undamped H
    damp: float  # damping fraction used (raised if Cholesky failed)
    retries: int  # Cholesky retries
    dead: int  # input columns never active in calibration (H_jj == 0), rounded to nearest


def find_params(w: torch.Tensor, bits: int, sym: bool,
                scale_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-max quantizer parameters per row of `w` (rows, k): (scale, zero), zero
    integer-valued, as the reference `Quantizer(perchannel=True)`.

    The range always includes 0 (so zero is an exact code). Asymmetric: scale =
    (max - min) / maxq, zero = round(-min / scale) in [0, maxq]. Symmetric: zero is the
    middle code 2^(bits-1) and the range is ±max|w|. (The reference leaves a row with
    no negative value at [0, max] while still centring zero, which clamps its upper
    half; we always use ±max|w|.) A row of zeros gets the range [-1, 1].
    """
    maxq = 2**bits - 1
    lo = torch.clamp(w.min(dim=1).values, max=0)
    hi = torch.clamp(w.max(dim=1).values, min=0)
    if sym:
        hi = torch.maximum(-lo, hi)
        lo = -hi
    flat = (lo == 0) & (hi == 0)
    lo = torch.where(flat, -1.0, lo)
    hi = torch.where(flat, 1.0, hi)
    scale = (hi - lo) / maxq
    if scale_dtype is not None:  # round now, so that W' is exactly what the file will hold
        scale = scale.to(scale_dtype).to(w.dtype)
    if sym:
        zero = torch.full_like(scale, (maxq + 1) // 2)
    else:
        zero = torch.clamp(torch.round(-lo / scale), 0, maxq)
    return scale, zero


def quantize_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int):
    """Nearest code (halves to even) and its value: q = clamp(round(w/s) + z, 0, maxq),
    w' = s (q - z). A scale that underflowed to 0 (scale_dtype) maps everything to z."""
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)
    q = torch.clamp(torch.round(w / safe) + zero, 0, maxq)
    q = torch.where(scale == 0, zero, q)
    return q, scale * (q - zero)


def _check(W: torch.Tensor, H: torch.Tensor, bits: int, group_size: int, block_size: int):
    if W.ndim != 2:
        raise ShapeError(f"GPTQ: weight must be 2-D (out, in), got shape {tuple(W.shape)}")
    if tuple(H.shape) != (W.shape[1], W.shape[1]):
        raise ShapeError(f"GPTQ: Hessian shape {tuple(H.shape)} does not match weight "
                         f"{tuple(W.shape)}; expected ({W.shape[1]}, {W.shape[1]})")
    if not 2 <= bits <= 8:
        raise UnsupportedError(f"GPTQ: bits must be 2..8, got {bits}")
    if group_size != -1 and group_size <= 0:
        raise UnsupportedError(f"GPTQ: group_size must be -1 (per row) or positive, got {group_size}")
    if block_size <= 0:
        raise UnsupportedError(f"GPTQ: block_size must be positive, got {block_size}")


def gptq_quantize(W: torch.Tensor, H: torch.Tensor, *, bits: int, group_size: int = -1,
                  act_order: bool = False, sym: bool = False, damp: float = 0.01,
                  block_size: int = 128, static_groups: bool = False,
                  scale_dtype: torch.dtype | None = None) -> GPTQResult:
    """Quantize W (out, in) against Hessian H (in, in) with GPTQ.

    Runs on W's device, in float64 if W is float64 and float32 otherwise. With
    `static_groups`, every group's parameters come from the original weights before
    any update (so act-order does not scatter groups: g_idx stays column // group_size).
    `scale_dtype` (e.g. torch.float16) rounds scales as soon as they are chosen.
    """
    _check(W, H, bits, group_size, block_size)
    dtype = torch.float64 if W.dtype == torch.float64 else torch.float32
    dev = W.device
    W0 = W.to(dtype)
    H = H.to(device=dev, dtype=dtype)
    n_out, n_in = W0.shape
    gs = n_in if group_size == -1 else group_size
    n_groups = -(-n_in // gs)
    maxq = 2**bits - 1

    if act_order:  # most "active" inputs first, so that their error is spread widest
        perm = torch.argsort(torch.diagonal(H), descending=True, stable=True)
    else:
        perm = torch.arange(n_in, device=dev)
    fac = inverse_factor(H[perm][:, perm], damp)
    U = fac.U

    scales = torch.empty(n_out, n_groups, dtype=dtype, device=dev)
    zeros = torch.empty(n_out, n_groups, dtype=dtype, device=dev)
    if static_groups:
        for g in range(n_groups):
            scales[:, g], zeros[:, g] = find_params(W0[:, g * gs:(g + 1) * gs], bits, sym, scale_dtype)
        group_of = (perm // gs).tolist()  # group of the column at each walk position
    else:
        group_of = [j // gs for j in range(n_in)]

    Wp = W0[:, perm].clone()  # walk order; columns are overwritten as they are rounded
    codes = torch.empty(n_out, n_in, dtype=dtype, device=dev)
    loss = torch.zeros((), dtype=dtype, device=dev)
    for i1 in range(0, n_in, block_size):
        i2 = min(i1 + block_size, n_in)
        W1 = Wp[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            j = i1 + i
            if not static_groups and j % gs == 0:
                end = min(j + gs, n_in)
                cur = W1[:, i:min(end, i2) - i1]
                if end > i2:  # the group runs past this block: add the updates it still owes
                    tail = Wp[:, i2:end] - Err1[:, :i] @ U[i1:j, i2:end]
                    cur = torch.cat([cur, tail], dim=1)
                scales[:, j // gs], zeros[:, j // gs] = find_params(cur, bits, sym, scale_dtype)
            g = group_of[j]
            w = W1[:, i]
            q, wq = quantize_codes(w, scales[:, g], zeros[:, g], maxq)
            d = U1[i, i]
            err = (w - wq) / d
            loss += (err * err).sum() / 2
            W1[:, i + 1:].addr_(err, U1[i, i + 1:], alpha=-1)
            Err1[:, i] = err
            W1[:, i] = wq
            codes[:, j] = q
        Wp[:, i1:i2] = W1
        Wp[:, i2:].addmm_(Err1, U[i1:i2, i2:], alpha=-1)

    inv = torch.argsort(perm)
    dequant = Wp[:, inv]
    if static_groups:
        g_idx = torch.arange(n_in, device=dev) // gs
    else:
        g_idx = (torch.arange(n_in, device=dev) // gs)[inv]
    return GPTQResult(
        qweight=codes[:, inv].to(torch.uint8),
        scales=scales,
        zeros=zeros.to(torch.int32),
        g_idx=g_idx.to(torch.int32),
        dequant=dequant.to(torch.float32),
        loss=float(loss),
        err=output_error(W0, dequant, H),
        damp=fac.damp,
        retries=fac.retries,
        dead=int(fac.dead.sum()),
    )


def rtn_quantize(W: torch.Tensor, *, bits: int, group_size: int = -1, sym: bool = False,
                 scale_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Round-to-nearest with the same quantizer and groups (no error feedback): the
    baseline GPTQ must beat. Returns the dequantized weights in W's float dtype."""
    n_in = W.shape[1]
    gs = n_in if group_size == -1 else group_size
    out = torch.empty_like(W)
    for g0 in range(0, n_in, gs):
        blk = W[:, g0:g0 + gs]
        s, z = find_params(blk, bits, sym, scale_dtype)
        out[:, g0:g0 + gs] = quantize_codes(blk, s[:, None], z[:, None], 2**bits - 1)[1]
    return out
