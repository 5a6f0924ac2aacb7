"""NaN and Inf in weights: found where the stored bytes are read, refused unless the
caller allows them.

A single Inf turns a whole Q8_0/Q4_K block into NaN when quantized, and NaN becomes
arbitrary finite numbers: the file converts, loads, and computes garbage. llama.cpp's
own quantizer refuses such weights too. The check reads the stored bits (exponent all
ones = NaN or Inf) in chunks, so it costs one pass over memory already being read and no
array the size of the tensor; counting NaN apart from Inf happens only once one is found.

A finite weight can still overflow the type it is written as (99840 as F16, 3e38 as Q8_0,
whose F16 block scale would be amax/127): `check_range`, called where a tensor meets its
output type, refuses that too, under the same policy.

The policy is a context variable rather than an argument: weights are read by the GGUF
writer, the sensitivity measurements of sized plans, the safetensors writer and the
calibration passes (through transformers' module tree), and `qconvert.quantize` sets it
once for all of them (`allow_nonfinite=True`, CLI `--allow-nonfinite`).
"""

from __future__ import annotations

import functools
import math
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator

import numpy as np

from ..errors import InputError

# stored dtype -> (unsigned view, exponent mask, mantissa mask)
_BITS = {
    "F16": (np.uint16, 0x7C00, 0x03FF),
    "BF16": (np.uint16, 0x7F80, 0x007F),
    "F32": (np.uint32, 0x7F800000, 0x007FFFFF),
    "F64": (np.uint64, 0x7FF0000000000000, 0x000FFFFFFFFFFFFF),
}
_CHUNK = 1 << 22  # elements per pass: a few MB of temporaries, whatever the tensor's size
_ALLOW: ContextVar[bool] = ContextVar("qconvert_allow_nonfinite", default=False)


class NonFiniteError(InputError):
    """A weight holds NaN or Inf values (exit 2, like any unusable input)."""

    def __init__(self, what: str, nan: int, inf: int) -> None:
        self.what, self.nan, self.inf = what, nan, inf
        super().__init__(f"{what}: {nan} NaN, {inf} Inf values; pass --allow-nonfinite to convert anyway")

    def relabel(self, what: str) -> "NonFiniteError":
        return NonFiniteError(what, self.nan, self.inf)


@contextmanager
def nonfinite_allowed(allow: bool = True) -> Iterator[None]:
    token = _ALLOW.set(bool(allow))
    try:
        yield
    finally:
        _ALLOW.reset(token)


def allowed() -> bool:
    return _ALLOW.get()


def count_nonfinite(arr: np.ndarray, dtype: str) -> tuple[int, int]:
    """(NaN count, Inf count) of a stored float array (`dtype` F16/BF16/F32/F64; bf16 as
    its uint16 bits). Other dtypes hold no NaN: (0, 0)."""
    if dtype not in _BITS or arr.size == 0:
        return 0, 0
    view, exp, man = _BITS[dtype]
    bits = np.ascontiguousarray(arr).reshape(-1).view(view)
    nan = inf = 0
    for i in range(0, bits.size, _CHUNK):
        c = bits[i:i + _CHUNK]
        if (c & view(exp)).max() != exp:  # the common case: no exponent is all ones
            continue
        special = (c & view(exp)) == exp
        n_nan = int(np.count_nonzero(special & ((c & view(man)) != 0)))
        nan += n_nan
        inf += int(np.count_nonzero(special)) - n_nan
    return nan, inf


def check_finite(arr: np.ndarray, dtype: str, what: str) -> None:
    """Raise NonFiniteError naming `what` unless every value is finite or the caller allowed
    non-finite weights."""
    if allowed():
        return
    nan, inf = count_nonfinite(arr, dtype)
    if nan or inf:
        raise NonFiniteError(what, nan, inf)


class RangeError(InputError):
    """A finite weight too large for the type it is written as: its encoding would hold Inf
    (exit 2, like NaN/Inf in the input, and let through by the same --allow-nonfinite)."""


def abs_max(arr: np.ndarray) -> float:
    """max |x| of a float array: two reductions, no temporary the size of the array."""
    if arr.size == 0:
        return 0.0
    return float(max(arr.max(), -arr.min()))


def check_range(arr: np.ndarray, limit: float, holder: str, what: str,
                hint: str | Callable[[float], str]) -> None:
    """Raise RangeError naming `what` when max |arr| is above `limit`, the largest value
    `holder` (e.g. "Q8_0 (its F16 block scales)") stores finitely, unless the caller allowed
    non-finite output. `hint` (or hint(max |arr|)) says what to do instead. NaN is not
    judged here: it was refused (or allowed) where the weights were read."""
    if allowed() or limit == math.inf:
        return
    amax = abs_max(arr)
    if amax > limit:
        raise RangeError(f"{what}: max |value| {amax:.6g} is beyond {holder}, which holds up to {limit:.6g}; "
                         f"{hint(amax) if callable(hint) else hint}, or pass --allow-nonfinite to write it as Inf")


def nonfinite_policy(fn: Callable) -> Callable:
    """Decorate an entry point that takes an `allow_nonfinite` keyword: the policy holds for
    everything the call reads."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with nonfinite_allowed(kwargs.get("allow_nonfinite", False)):
            return fn(*args, **kwargs)

    return wrapper
