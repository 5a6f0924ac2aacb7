"""GPTQ onto ggml block grids (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K):
the GGUF bytes come out directly, with error feedback while rounding.

The walk is GPTQ's (see gptq.py), in natural column order — a ggml block is a run of
32 or 256 consecutive weights of a row, so act-order would scatter blocks. When the
walk reaches the first column of a block, the block's scales are chosen by the RTN
kernel itself (kernels.encode on the current, error-updated weights of that block in
every row) and read back from its bytes (block_grid.py). Each column of the block is
then rounded to the nearest point of that fixed grid, its error spread over the
columns still ahead through the inverse-Hessian factor, and at the end of the block
the final codes are packed into the kernel's bytes in place of its own.

Lazy updates run in chunks that are a whole number of blocks (at least 128 columns),
so when a block starts every one of its columns is fully updated.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import kernels
from ..kernels._blocks import row_sigma2
from ..kernels.scale_refine import refine
from ..errors import ShapeError
from ..qtypes import qtype
from .block_grid import block_grid
from .hessian import inverse_factor, output_error


def _importance(importance, shape) -> np.ndarray | None:
    if importance is None:
        return None
    imp = np.asarray(importance, dtype=np.float32)
    if imp.shape == (shape[1],):
        imp = np.broadcast_to(imp, shape)
    if imp.shape != tuple(shape):
        raise ShapeError(f"GPTQ: importance shape {imp.shape} fits neither ({shape[1]},) "
                         f"nor the weight {tuple(shape)}")
    return imp


def gptq_gguf(W: np.ndarray, H: np.ndarray, type_name: str, damp: float = 0.01,
              importance: np.ndarray | None = None, *,
              device: torch.device | str | None = None,
              scale_search: str = "llama") -> tuple[np.ndarray, np.ndarray, dict]:
    """Quantize W (out, in) to ggml type `type_name` with GPTQ against Hessian H (in, in).

    `importance` (in,) or (out, in), e.g. diag(H), is handed to the kernel's scale
    search (llama.cpp's imatrix path) for every type but Q8_0, which has none; the
    32-wide legacy types weigh with each row's mean square, taken from W's own rows.
    `device` runs the solver's torch part elsewhere (the kernels always run on the host).
    scale_search "thorough": each K-quant block's scales are refined (kernels/scale_refine.py)
    on its current weights before GPTQ rounds to them.

    Returns (blocks uint8 (out * in / block, type_size) in GGUF row-major order,
    dequantized float32 (out, in) equal to decoding those blocks, stats) with stats
    err / rtn_err (tr(ΔHΔᵀ)/tr(WHWᵀ) for GPTQ and for the plain kernel), loss (the
    GPTQ objective), damp, retries, dead (count of H_jj == 0 columns), importance_used.
    """
    grid = block_grid(type_name)
    qt = qtype(type_name)
    B = grid.block
    W = np.ascontiguousarray(W, dtype=np.float32)
    if W.ndim != 2 or W.shape[1] % B:
        raise ShapeError(f"GPTQ {type_name}: weight shape {W.shape} is not (out, k*{B})")
    n_out, n_in = W.shape
    if np.shape(H) != (n_in, n_in):
        raise ShapeError(f"GPTQ {type_name}: Hessian shape {np.shape(H)} does not match weight "
                         f"{W.shape}; expected ({n_in}, {n_in})")
    imp = _importance(importance, W.shape) if grid.takes_importance else None
    # the legacy types' weighting needs the whole row's mean square (kernels.ROW_SIGMA2_TYPES);
    # the walk encodes one block column at a time, so it is taken once from W
    sig = row_sigma2(W) if imp is not None and type_name in kernels.ROW_SIGMA2_TYPES else None
    dev = torch.device(device) if device is not None else torch.device("cpu")

    H64 = torch.as_tensor(np.asarray(H), dtype=torch.float64, device=dev)
    # float64: Cholesky of a correlated H often fails in float32, and the factorisation
    # is cheap next to the walk. Only the float32 copy of the factor is kept.
    fac = inverse_factor(H64, damp)
    U = fac.U.to(torch.float32)
    damp_used, retries, n_dead = fac.damp, fac.retries, int(fac.dead.sum())
    del fac
    Wt = torch.from_numpy(W).to(dev, copy=True)
    deq = torch.empty_like(Wt)
    blocks = np.empty((n_out, n_in // B, qt.type_size), np.uint8)
    loss = torch.zeros((), dtype=torch.float64, device=dev)
    chunk = B * max(1, 128 // B)

    for i1 in range(0, n_in, chunk):
        i2 = min(i1 + chunk, n_in)
        W1 = Wt[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for b0 in range(0, i2 - i1, B):
            c0 = i1 + b0
            cur = W1[:, b0:b0 + B].cpu().numpy()
            raw = kernels.encode(type_name, cur, importance=None if imp is None else imp[:, c0:c0 + B],
                                 row_sigma2=sig)
            if scale_search == "thorough":
                raw = refine(type_name, cur, raw, None if imp is None else imp[:, c0:c0 + B])
            step, offset = (torch.from_numpy(np.ascontiguousarray(a)).to(dev) for a in grid.parse(raw))
            live = step != 0  # a zero step (flat or all-zero sub-block) has a single value
            safe = torch.where(live, step, 1.0)
            codes = torch.empty(n_out, B, dtype=torch.float32, device=dev)
            for c in range(B):
                i = b0 + c
                w = W1[:, i]
                # nearest grid point; the same division as the K-quant kernels' final pass
                q = torch.round((w + offset[:, c]) / safe[:, c]) + grid.center
                q = torch.where(live[:, c], q.clamp(0, grid.qmax), float(grid.center))
                v = step[:, c] * (q - grid.center) - offset[:, c]
                err = (w - v) / U1[i, i]
                loss += (err.double() ** 2).sum() / 2
                W1[:, i + 1:].addr_(err, U1[i, i + 1:], alpha=-1)
                Err1[:, i] = err
                W1[:, i] = v
                codes[:, c] = q
            blocks[:, c0 // B] = grid.pack(raw, codes.to(torch.int64).cpu().numpy())
        deq[:, i1:i2] = W1
        Wt[:, i2:].addmm_(Err1, U[i1:i2, i2:], alpha=-1)

    deq_np = deq.cpu().numpy()
    rtn = kernels.decode(type_name, kernels.encode(type_name, W, importance=imp)).reshape(W.shape)
    Wd = torch.from_numpy(W)
    H_cpu = H64.cpu()
    stats = {
        "err": output_error(Wd, deq.cpu(), H_cpu),
        "rtn_err": output_error(Wd, torch.from_numpy(rtn), H_cpu),
        "loss": float(loss),
        "damp": damp_used,
        "retries": retries,
        "dead": n_dead,
        "importance_used": imp is not None,
    }
    return blocks.reshape(-1, qt.type_size), deq_np, stats
