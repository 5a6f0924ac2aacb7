"""One input tensor as the planner and the writer see it: its GGUF name, shape and source
dtype, and a lazy load that applies the architecture's transforms. Its own module because
both the readers (source/) and the architecture adapters (arch/) make these, and neither
should import the other to name the type."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

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

    def load(self) -> np.ndarray:
        arr = self.handle.load()
        for t in self.transforms:
            arr = t(arr)
        return arr
