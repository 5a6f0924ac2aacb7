"""One stage of a pipeline: an iterator run in a background thread, a few items ahead of
its consumer.

The GGUF writer chains two: a thread reads and widens the next slices of rows, another
encodes (numba kernels release the GIL and use their own thread team), and the calling
thread writes. Each stage holds at most `depth` finished items plus the one it is making,
so memory stays a fixed number of slices.

The thread runs in a copy of the caller's context (the NaN/Inf policy is a context
variable); an exception in the thread is raised in the consumer, and a consumer that
stops early (an error while writing, Ctrl-C) stops the thread at its next item.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

_DONE = object()


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def prefetch(items: Iterable[T], depth: int = 1, name: str = "qconvert-stage") -> Iterator[T]:
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(v) -> bool:
        while not stop.is_set():
            try:
                q.put(v, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        it = iter(items)
        try:
            for v in it:
                if not put(v):
                    return
                del v  # hold nothing the consumer already has
        except BaseException as e:  # handed over, raised in the consumer's thread
            put(_Failed(e))
            return
        finally:
            close = getattr(it, "close", None)  # an upstream stage stops its own thread
            if close is not None:
                close()
        put(_DONE)

    ctx = contextvars.copy_context()
    t = threading.Thread(target=ctx.run, args=(work,), name=name, daemon=True)
    t.start()
    try:
        while True:
            v = q.get()
            if v is _DONE:
                return
            if isinstance(v, _Failed):
                raise v.exc
            yield v
            del v
    finally:
        stop.set()
        t.join()
