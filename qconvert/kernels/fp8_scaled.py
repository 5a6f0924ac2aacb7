"""FP8 checkpoint weights decoded and scaled in one pass (numba, parallel over rows): the
fast twin of source/quantized_input.grid_rows, which decodes through the 256-entry table
(source/fp8.py) and multiplies by each cell's scale in NumPy. Both compute
table[code] * scale in float32, so their results are identical (tests compare them).

A DeepSeek-V3-sized FP8 model is 670 GB of codes. On a 4096 x 14336 weight with 128 x 128
block scales, best of 5 on the 2-core development machine while it was busy (load 15-20):
this loop 0.22 G weights/s, the NumPy twin (table lookup, then a multiply per cell column,
a float32 temporary) 0.11 G/s. The scale is looked up once per cell column, not per weight."""

from __future__ import annotations

import numpy as np

from .flags import PARALLEL, njit, prange


@njit(**PARALLEL)
def _fp8_grid(raw, table, scale, row0, br, bc, out):  # pragma: no cover - compiled
    rows, n = raw.shape
    first_cell = row0 // br
    for i in prange(rows):
        r = (row0 + i) // br - first_cell
        for c in range(scale.shape[1]):
            s = scale[r, c]
            for j in range(c * bc, min(n, (c + 1) * bc)):
                out[i, j] = table[raw[i, j]] * s


def fp8_grid_rows(raw: np.ndarray, table: np.ndarray, scale: np.ndarray, row0: int, grid: tuple[int, int]) -> np.ndarray:
    """Rows row0.. of an FP8 weight, `raw` its stored bytes (rows, in), `scale` float32
    cells (one per grid[0] x grid[1] weights) starting at the cell of row row0."""
    out = np.empty(raw.shape, dtype=np.float32)
    _fp8_grid(np.ascontiguousarray(raw, dtype=np.uint8), table, np.ascontiguousarray(scale, dtype=np.float32),
              row0, grid[0], grid[1], out)
    return out
