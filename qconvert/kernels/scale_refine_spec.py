"""The thorough K-quant scale search's constants, shared by the numba kernel
(scale_refine.py) and its NumPy twin (reference/scale_refine.py)."""

from __future__ import annotations

import numpy as np

# type -> (code, sub-blocks, sub-block size, asymmetric, code range, scale range, min range)
SPECS = {
    "Q2_K": (0, 16, 16, 1, 0, 3, 0, 15, 0, 15),
    "Q3_K": (1, 16, 16, 0, -4, 3, -32, 31, 0, 0),
    "Q4_K": (2, 8, 32, 1, 0, 15, 0, 63, 0, 63),
    "Q5_K": (3, 8, 32, 1, 0, 31, 0, 63, 0, 63),
    "Q6_K": (4, 16, 16, 0, -32, 31, -128, 127, 0, 0),
}
TYPE_SIZES = {"Q2_K": 84, "Q3_K": 110, "Q4_K": 144, "Q5_K": 176, "Q6_K": 210}
D_TRIES = 10  # super-scale candidates each side of d (and of dmin)
HALF = np.float32(0.5)
# the block is replaced only when its error drops by more than this fraction: a gain in
# the last bits of a float64 sum could reverse when the error is summed in another order
MARGIN = 1e-9
