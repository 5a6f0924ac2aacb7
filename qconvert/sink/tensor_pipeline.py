"""Writing a file's tensors through a three-stage pipeline:

    read thread     slices of rows from the mmap, widened and transformed (source/row_chunks.py)
    encode thread   each slice encoded by its numba kernel (parallel, GIL released)
    calling thread  the bytes written at the tensor's place in the file

Each stage keeps one finished item ahead (prefetch.py), so at most about six slices are in
memory: one being read and one waiting, one being encoded (with its importance weights
broadcast and its output), and up to three encoded ones waiting or being written. With the
default 16 MiB slice (of float32) that bounds the working set near 150 MiB, whatever the
tensors' sizes.
The pipeline runs across tensor boundaries: the next tensor's first slice is read while
this one's last is encoded.

An encoder maps (plan entry, source tensor) to pieces: calls that each return one slice's
bytes (sink/encoded_chunks.py), or already-encoded bytes (GPTQ's staged blocks).
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import numpy as np

from ..plan.tensor_plan import TensorPlan
from ..prefetch import prefetch
from ..source.expert_stack import ExpertStack
from ..source.source_tensor import SourceTensor

Piece = Callable[[], np.ndarray]
Encoder = Callable[[TensorPlan, SourceTensor], Iterable[Piece]]


def tensor_pieces(encoder: Encoder, s: SourceTensor, tp: TensorPlan) -> Iterator[Piece]:
    if isinstance(s, ExpertStack):  # expert after expert, each in slices: never the stack
        for i, part in enumerate(s.parts):
            yield from tensor_pieces(encoder, part, tp.slab_plan(i))
    elif s.packed_type and s.packed_type == tp.qtype.name:  # the checkpoint's own blocks, copied
        yield s.load_packed
    else:
        yield from _as_pieces(encoder(tp, s))


def _as_pieces(made) -> Iterable[Piece]:
    """An encoder may also return the whole tensor's bytes (an array): one piece."""
    if isinstance(made, np.ndarray):
        return (lambda: made,)
    return made


def encoded(pairs: list[tuple[SourceTensor, TensorPlan]], encoder: Encoder) -> Iterator[tuple[int, np.ndarray]]:
    """(index into pairs, bytes of one slice), in file order, from the two worker stages."""
    read = prefetch(((k, piece) for k, (s, tp) in enumerate(pairs) for piece in tensor_pieces(encoder, s, tp)),
                    name="qconvert-read")
    return prefetch(((k, piece()) for k, piece in read), name="qconvert-encode")


def write_tensors(sink, pairs: list[tuple[SourceTensor, TensorPlan]], encoder: Encoder, rep) -> None:
    """Every tensor of `pairs` written to `sink` in order, slice by slice."""
    stream = encoded(pairs, encoder)
    try:
        pending = next(stream, None)
        for k, (_, tp) in enumerate(pairs):
            def parts(k=k):
                nonlocal pending
                while pending is not None and pending[0] == k:
                    data = pending[1]
                    pending = None
                    yield data
                    del data
                    pending = next(stream, None)

            sink.write_parts(tp, parts())
            rep.advance(1, tp.name)
    finally:
        stream.close()
