"""One input tensor as the planner and the writer see it: its GGUF name, shape and source
dtype, and a lazy load that applies the architecture's transforms. Its own module because
both the readers (source/) and the architecture adapters (arch/) make these, and neither
should import the other to name the type.

Reading rows: the writer encodes a tensor a slice of rows at a time (`load_rows`), so a
tensor never needs to be in memory whole. That works when the handle can read rows
(`TensorHandle.rows`) and every transform says how it treats rows, by one of two marks:

    t.row_group(shape) -> int   t keeps the shape and mixes values only within runs of that
                                many consecutive rows (1: elementwise; a head's rows: the
                                rope permutation); on a slice of whole runs it is called as
                                t(w, full_rows=rows of the whole input)
    t.row_range = (start, stop) t takes rows start..stop-1 (a part of a fused tensor)

Row ranges come first in the list, then row groups; any other transform, or another order,
makes the tensor load whole (`row_group()` is None)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from .finite import NonFiniteError
from .safetensors_file import TensorHandle

Transform = Callable[[np.ndarray], np.ndarray]


@dataclass
class SourceTensor:
    name: str  # GGUF name
    hf_name: str
    shape: tuple[int, ...]  # numpy order: rows last
    src_dtype: str
    handle: TensorHandle
    transforms: list[Transform] = field(default_factory=list)
    # a tensor the checkpoint already stores in a ggml block type (gpt-oss's MXFP4 experts):
    # that type, and a loader of its bytes in ggml's layout. The writer copies those bytes
    # when the plan keeps the type; load() still gives the decoded floats for any other.
    # (keyword-only, so subclasses' positional fields keep their places)
    packed_type: str = field(default="", kw_only=True)
    packed_loader: Optional[Callable[[], np.ndarray]] = field(default=None, kw_only=True)

    def load(self) -> np.ndarray:
        try:
            arr = self.handle.load()
        except NonFiniteError as e:  # name the tensor as the user will meet it in the GGUF too
            raise self._relabel(e) from None
        for t in self.transforms:
            arr = t(arr)
        return arr

    def load_packed(self) -> np.ndarray:
        """The stored ggml blocks, flat uint8 (only when packed_type is set)."""
        return np.ascontiguousarray(self.packed_loader(), dtype=np.uint8).reshape(-1)

    def _row_layout(self) -> Optional[tuple[int, int, int]]:
        """(first handle row, row count, rows per group) when rows can be read in slices."""
        shape = self.handle.shape
        if self.handle.rows is None or len(shape) < 1 or len(self.shape) < 1:
            return None
        offset, n_rows, group, ranges_done = 0, shape[0], 1, False
        for t in self.transforms:
            rr = getattr(t, "row_range", None)
            if rr is not None and not ranges_done:
                start, stop = rr
                offset, n_rows = offset + start, stop - start
            elif hasattr(t, "row_group"):
                ranges_done = True
                group = math.lcm(group, max(1, int(t.row_group((n_rows, *shape[1:])))))
            else:
                return None
        if n_rows != self.shape[0]:
            return None
        return offset, n_rows, group

    def row_group(self) -> Optional[int]:
        """Slices of `load_rows` must start and end on multiples of this (the last may be
        shorter); None when the tensor can only be loaded whole."""
        layout = self._row_layout()
        return None if layout is None else layout[2]

    def load_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows start..stop-1 (axis 0) of what `load()` returns, reading only those."""
        layout = self._row_layout()
        if layout is None:
            raise ValueError(f"{self.name}: its rows cannot be read apart")
        offset, n_rows, _ = layout
        try:
            arr = self.handle.rows(offset + start, offset + stop)
        except NonFiniteError as e:
            raise self._relabel(e) from None
        for t in self.transforms:
            if getattr(t, "row_range", None) is None:
                arr = t(arr, full_rows=n_rows)
        return arr

    def _relabel(self, e: NonFiniteError) -> NonFiniteError:
        where = f"{self.handle.source}: " if self.handle.source else ""
        label = self.name if self.hf_name == self.name else f"{self.name} ({self.hf_name})"
        return e.relabel(f"{where}{label}")
