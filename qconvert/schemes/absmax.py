"""Round-to-nearest onto an integer grid, per output channel or per group of input
columns: the calibration-free baseline for safetensors output.

    r = rtn_grid(W, bits=4, group_size=128, sym=True, scale_dtype=torch.bfloat16)
    r.qweight, r.scales, r.zeros, r.g_idx   # the same fields as GPTQResult

Weight j of row i in group g = j // group_size decodes as

    w' = scales[i, g] * (qweight[i, j] - zeros[i, g]),   qweight in 0 .. 2^bits - 1

Symmetric (absmax): zeros = 2^(bits-1) and scale = max|w| / ((2^bits - 1) / 2), so the
16 int4 codes span [-8, 7] * scale and ±max|w| fall half a step outside the top code
(at most half a step of error, which plain rounding costs anyway, for a finer grid than
max|w| / 7). Asymmetric (min-max): the range [min(w, 0), max(w, 0)] over 2^bits - 1
steps, with an integer zero point. Both are compressed-tensors' own rules (its
`calculate_qparams`), and the same quantizer GPTQ uses (`gptq.find_params`), so RTN and
GPTQ results are interchangeable for the writer.

Scales are rounded to `scale_dtype` (the dtype the file stores) before the codes are
chosen, so the codes are the nearest ones for the scale a loader will actually read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ShapeError, UnsupportedError
from ..source.finite import check_range
from .gptq import find_params, quantize_codes


@dataclass(frozen=True)
class GridQuant:
    qweight: torch.Tensor  # uint8 (out, in): codes 0 .. 2^bits - 1
    scales: torch.Tensor  # float32 (out, n_groups), values exact in the storage dtype
    zeros: torch.Tensor  # int32 (out, n_groups): unsigned zero points
    g_idx: torch.Tensor  # int32 (in,): group of each input column

    @property
    def dequant(self) -> torch.Tensor:
        return dequantize(self.qweight, self.scales, self.zeros, self.g_idx)


def dequantize(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
               g_idx: torch.Tensor) -> torch.Tensor:
    """float32 (out, in). A product of a bf16/f16 scale and an integer below 2^8 is exact
    in float32, so this equals what a loader computes in float32 and, rounded once, in
    bf16 / f16."""
    g = g_idx.long()
    s = scales.to(torch.float32)[:, g]
    z = zeros.to(torch.float32)[:, g]
    return s * (qweight.to(torch.float32) - z)


def check_grid(bits: int, group_size: int) -> None:
    if not 2 <= bits <= 8:
        raise UnsupportedError(f"integer grids have 2..8 bits, got {bits}")
    if group_size != -1 and group_size <= 0:
        raise UnsupportedError(f"group_size must be -1 (one scale per output channel) or positive, "
                               f"got {group_size}")


def grid_max_abs(bits: int, scale_dtype: torch.dtype) -> float:
    """The largest |weight| a `bits` grid with scales stored as `scale_dtype` holds without
    Inf: its scale, up to 2 max|w| / (2^bits - 1), must fit the scale dtype, and max - min
    (up to 2 max|w|) float32. A quarter of headroom, as qtypes.MAX_ABS, for GPTQ's error
    feedback moving weights within a step."""
    maxq = 2**bits - 1
    return 0.75 * min(torch.finfo(scale_dtype).max * maxq / 2, torch.finfo(torch.float32).max / 2)


def check_grid_holds(name: str, W: np.ndarray, bits: int, scale_dtype: torch.dtype) -> None:
    """Refuse (source/finite.py's policy) a weight too large for the grid's scales."""
    sd = str(scale_dtype).removeprefix("torch.")
    check_range(W, grid_max_abs(bits, scale_dtype), f"int{bits} with {sd} scales", f"tensor {name!r}",
                f"the scale dtype follows config.json's dtype; GGUF output with a BF16 or F32 type for this "
                "tensor holds it")


def rtn_grid(W: torch.Tensor, *, bits: int, group_size: int = -1, sym: bool = True,
             scale_dtype: torch.dtype | None = None) -> GridQuant:
    """Quantize W (out, in) to the nearest codes of per-row (group_size -1) or per-group
    grids. `in` must be a multiple of group_size: compressed-tensors reshapes each row
    into whole groups."""
    check_grid(bits, group_size)
    if W.ndim != 2:
        raise ShapeError(f"round-to-nearest: weight must be 2-D (out, in), got shape {tuple(W.shape)}")
    n_out, n_in = W.shape
    gs = n_in if group_size == -1 else group_size
    if n_in % gs:
        raise ShapeError(f"round-to-nearest: {n_in} input columns are not a multiple of group size {gs}")
    n_groups = n_in // gs
    w = W.to(torch.float32).reshape(n_out * n_groups, gs)  # one row per (channel, group)
    scale, zero = find_params(w, bits, sym, scale_dtype)
    q, _ = quantize_codes(w, scale[:, None], zero[:, None], 2**bits - 1)
    return GridQuant(
        qweight=q.reshape(n_out, n_in).to(torch.uint8),
        scales=scale.reshape(n_out, n_groups),
        zeros=zero.reshape(n_out, n_groups).to(torch.int32),
        g_idx=(torch.arange(n_in) // gs).to(torch.int32),
    )
