"""A tensor as slices of whole rows, each small enough for the fixed working set.

Every GGML type encodes each row of blocks on its own, so encoding a tensor slice by
slice gives the bytes of encoding it whole; reading a slice touches only its part of the
mmap. A slice holds at most CHUNK_BYTES of float32 (one row, or one group of rows a
transform mixes, if that is larger), whatever the tensor's size.

Axis 0 is cut: rows of a matrix, experts of a (n_expert, rows, cols) stack. Expert stacks
(source/expert_stack.py: the MoE families, gpt-oss, every 3-D tensor of a GGUF input) are
written slab by slab (sink/tensor_pipeline.py) and each slab is cut here by its rows, so a
slice is some rows of one expert whatever the experts' size. Tensors of one dimension
(norms, biases) and those whose handle or transforms cannot be read by rows
(`SourceTensor.row_group`) come whole, as one slice.
"""

from __future__ import annotations

import math
import os
from typing import Iterator, Optional

import numpy as np

from .source_tensor import SourceTensor

# float32 bytes of one slice. 16 MiB keeps numba's parallel loops busy (16K Q4_K blocks
# per call) while the pipeline's few slices in flight stay far below 1 GB; and it is under
# glibc's largest mmap threshold (32 MiB), so freed slices are reused from the heap instead
# of being mapped and zero-filled again (32 MiB slices: 3.5x the system time on an 8B model).
CHUNK_BYTES = 16 << 20
ENV = "QCONVERT_CHUNK_MB"  # for measurements: another slice size, in MiB


def chunk_bytes() -> int:
    v = os.environ.get(ENV)
    try:
        return max(1, int(float(v) * 2**20)) if v else CHUNK_BYTES
    except ValueError:
        return CHUNK_BYTES


def rows_per_chunk(s: SourceTensor, budget: Optional[int] = None) -> Optional[int]:
    """Rows of axis 0 per slice, a multiple of the transforms' row group; None: whole."""
    group = s.row_group() if len(s.shape) >= 2 else None
    if group is None:
        return None
    row_bytes = 4 * math.prod(s.shape[1:])
    budget = chunk_bytes() if budget is None else budget
    return max(group, budget // max(1, row_bytes) // group * group)


def row_chunks(s: SourceTensor, budget: Optional[int] = None) -> Iterator[tuple[int, int, np.ndarray]]:
    """(first row, end row, float32 rows) covering s in order; one slice when s cannot
    be cut (or is small)."""
    step = rows_per_chunk(s, budget)
    n = s.shape[0] if s.shape else 1
    if step is None or step >= n:
        yield 0, n, s.load()
        return
    for start in range(0, n, step):
        stop = min(n, start + step)
        yield start, stop, s.load_rows(start, stop)
