"""GGUF output: metadata and tensor infos from the plan first, then tensor data in file
order, each tensor a slice of rows at a time (sink/tensor_pipeline.py), so memory holds a
few slices and their encodings, never a whole tensor or the model."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

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


def encode(tp: TensorPlan, x: np.ndarray, importance: np.ndarray | None = None,
           scale_search: str = "llama") -> np.ndarray:
    """float32 tensor -> the bytes (or float array) GGUF stores for it, after checking the
    type holds its values. scale_search "thorough" refines llama.cpp's K-quant block
    scales (kernels/scale_refine.py), scored with the same importance."""
    check_holds(tp.name, tp.qtype, x)
    if not tp.qtype.quantized:
        return encode_float(tp.qtype.name, x)
    if importance is not None and tp.scheme == "importance":
        # one weight per input column (llama.cpp's imatrix), repeated down the rows;
        # expert stacks have one row of weights per expert: (n_expert, cols)
        imp = np.asarray(importance, dtype=np.float32)
        if imp.ndim == 2 and tp.slab is not None:
            imp = imp[tp.slab]
        elif imp.ndim == 2 and x.ndim == 3:
            imp = imp[:, None, :]
        imp = np.broadcast_to(imp, x.shape)
        return _refined(tp, x, kernels.encode(tp.qtype.name, x, importance=imp), imp, scale_search)
    return _refined(tp, x, kernels.encode(tp.qtype.name, x), None, scale_search)


def _refined(tp: TensorPlan, x: np.ndarray, blocks: np.ndarray, imp, scale_search: str) -> np.ndarray:
    if scale_search == "thorough":
        from ..kernels.scale_refine import refine

        blocks = refine(tp.qtype.name, x, blocks, imp)
    return blocks.reshape(-1)


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

    def write_parts(self, tp: TensorPlan, parts: Iterable[np.ndarray]) -> None:
        """One tensor's data written piece after piece (an expert stack, slab by slab), laid
        out exactly as GGUFWriter.write_tensor_data lays out the whole: padding to the
        alignment, the bytes, padding after. Uses the writer's own file and tensor-info
        queue, so the header written from the plan stays the one source of offsets."""
        w = self.writer
        fout = w.fout[0]
        if next(iter(w.tensors[0]), None) != tp.name:
            raise AssertionError(f"{tp.name}: written out of the header's order")
        info = w.tensors[0].pop(tp.name)
        w.write_padding(fout, fout.tell())
        written = 0
        for data in parts:
            data = np.ascontiguousarray(data)
            data.tofile(fout)
            written += data.nbytes
            del data
        if written != tp.nbytes or info.nbytes != tp.nbytes:
            raise AssertionError(f"{tp.name}: encoded {written} bytes, planned {tp.nbytes}")
        w.write_padding(fout, written)
        w.state = gguf.gguf_writer.WriterState.WEIGHTS

    def close(self) -> None:
        self.writer.close()
