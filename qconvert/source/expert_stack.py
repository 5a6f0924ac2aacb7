"""A stacked tensor made of 2-D slabs read one at a time: llama.cpp's 3-D expert tensors
(`ffn_{gate,up,down}_exps`, numpy shape (n_expert, rows, cols)) built from a checkpoint
that stores one 2-D weight per expert.

Each slab is itself a `SourceTensor` (its own handle and transforms), so the writer can
pull, encode and write expert after expert: every GGML type packs rows independently and
a slab is a whole number of rows, so encoding slab by slab gives the same bytes as
encoding the stack, with one expert's weights in memory instead of the layer's; and a slab
whose handle reads rows (`TensorHandle.rows`) is itself written a slice of rows at a time
(source/row_chunks.py). `load()` still builds the whole stack for consumers that need it at
once (safetensors output, sensitivity measurements): one stack, never a layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from .safetensors_file import TensorHandle
from .source_tensor import SourceTensor


@dataclass
class ExpertStack(SourceTensor):
    parts: list[SourceTensor] = field(default_factory=list)  # slab i = expert i

    @classmethod
    def of(cls, name: str, hf_name: str, parts: list[SourceTensor]) -> "ExpertStack":
        first = parts[0]
        shape = (len(parts), *first.shape)
        handle = TensorHandle(hf_name, first.src_dtype, shape, lambda: None, source=first.handle.source)
        stack = cls(name=name, hf_name=hf_name, shape=shape, src_dtype=first.src_dtype, handle=handle,
                    transforms=[], parts=parts)
        stack.handle.loader = stack._stacked
        return stack

    def slabs(self) -> Iterator[np.ndarray]:
        """Expert after expert, each float32 (rows, cols) with its transforms applied."""
        for p in self.parts:
            yield p.load()

    def _stacked(self) -> np.ndarray:
        out = np.empty(self.shape, dtype=np.float32)
        for i, slab in enumerate(self.slabs()):
            out[i] = slab
        return out
