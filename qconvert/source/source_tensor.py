"""One input tensor as the planner and the writer see it: its GGUF name, shape and source
dtype, and a lazy load that applies the architecture's transforms. Its own module because
both the readers (source/) and the architecture adapters (arch/) make these, and neither
should import the other to name the type."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

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

    def load(self) -> np.ndarray:
        try:
            arr = self.handle.load()
        except NonFiniteError as e:  # name the tensor as the user will meet it in the GGUF too
            where = f"{self.handle.source}: " if self.handle.source else ""
            label = self.name if self.hf_name == self.name else f"{self.name} ({self.hf_name})"
            raise e.relabel(f"{where}{label}") from None
        for t in self.transforms:
            arr = t(arr)
        return arr
