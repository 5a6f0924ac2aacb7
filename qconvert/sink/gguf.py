"""GGUF output: metadata and tensor infos from the plan first, then tensor data one
tensor at a time, so memory holds one tensor and its encoding, never the model."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from .. import kernels
from ..kernels.floats import encode_float
from ..plan.tensor_plan import Plan, TensorPlan
from ..qtypes import QType, qtype
from ..source.finite import check_range


# types to suggest for a tensor too large for its own, narrowest first
WIDER = ("Q8_0", "BF16", "F32")


def holder(qt: QType) -> str:
    return f"{qt.name} (its F16 block scales)" if qt.quantized else qt.name


def check_holds(name: str, qt: QType, x: np.ndarray) -> None:
    """Refuse (source/finite.py's policy) a tensor whose largest weight `qt` cannot store:
    99840 as F16, or 3e38 as Q8_0, whose F16 block scale would be 3e38/127, are Inf."""
    def hint(amax: float) -> str:
        t = next(t for t in WIDER if t != qt.name and qtype(t).max_abs >= amax)
        return f"give the tensor a type that holds it (--tensor-type '{name}={t}')"

    check_range(x, qt.max_abs, holder(qt), f"tensor {name!r}", hint)


def encode(tp: TensorPlan, x: np.ndarray, importance: np.ndarray | None = None) -> np.ndarray:
    """float32 tensor -> the bytes (or float array) GGUF stores for it, after checking the
    type holds its values."""
    check_holds(tp.name, tp.qtype, x)
    if not tp.qtype.quantized:
        return encode_float(tp.qtype.name, x)
    if importance is not None and tp.scheme == "importance":
        # one weight per input column (llama.cpp's imatrix), repeated down the rows
        imp = np.broadcast_to(np.asarray(importance, dtype=np.float32), x.shape)
        return kernels.encode(tp.qtype.name, x, importance=imp).reshape(-1)
    return kernels.encode(tp.qtype.name, x).reshape(-1)


class GGUFSink:
    def __init__(self, path: Path, arch_name: str) -> None:
        self.path = path
        self.writer = gguf.GGUFWriter(str(path), arch_name)

    def add_plan(self, plan: Plan) -> None:
        for tp in plan.tensors:
            self.writer.add_tensor_info(
                tp.name, tp.shape, np.dtype(np.float32), tp.nbytes, raw_dtype=tp.qtype.ggml
            )

    def begin(self) -> None:
        self.writer.write_header_to_file(path=str(self.path))
        self.writer.write_kv_data_to_file()
        self.writer.write_ti_data_to_file()

    def write(self, tp: TensorPlan, data: np.ndarray) -> None:
        if data.nbytes != tp.nbytes:
            raise AssertionError(f"{tp.name}: encoded {data.nbytes} bytes, planned {tp.nbytes}")
        self.writer.write_tensor_data(data)

    def close(self) -> None:
        self.writer.close()
