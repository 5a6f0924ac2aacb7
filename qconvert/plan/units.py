"""Sizes and counts as people type them: parameter counts ("70B", "1.5T", "70e9") and byte
sizes ("24GB" decimal, "24GiB" binary), parsed exactly; and the bounds every count and size
a user gives must keep.

The bounds are far beyond any real model yet small enough that arithmetic on them is
instant and nothing sized by them (a per-layer list, a bisection over the context) can run
out of memory or time: `1e999999` must be refused, not expanded into a million digits."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from ..errors import InputError

# --- bounds ------------------------------------------------------------------------------

MAX_PARAMS = 10**15  # a quadrillion parameters; the largest published models have ~2e12
MAX_BYTES = 10**18  # an exabyte of --vram / --overhead / --target-size
MAX_LAYERS = 100_000  # real models: up to a few hundred
MAX_CONTEXT = 2**31  # tokens; trained contexts reach a few million
MAX_KV_HEADS = 2**16  # real models: up to 128
MAX_HEAD_DIM = 2**16  # real models: up to 512


def check_count(option: str, value: int, maximum: int, what: str = "a positive whole number") -> int:
    """`value` if 1 <= value <= maximum, else an InputError naming `option`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{option} {value!r}: expected {what}")
    if value < 1:
        raise InputError(f"{option} {_shown(value)}: must be {what}")
    if value > maximum:
        raise InputError(f"{option} {_shown(value)}: more than {maximum:,}, the most qconvert accepts")
    return value


def _shown(value: object) -> str:
    """What the user typed, quoted, without echoing all of a 5,000-digit argument."""
    if isinstance(value, int) and value.bit_length() > 256:  # str() of a 5,000-digit int is refused
        return f"(a number of about {int(value.bit_length() * 0.30103):,} digits)"
    s = repr(value) if isinstance(value, str) else str(value)
    return s if len(s) <= 40 else f"{s[:24]}... ({len(str(value)):,} characters)"


def _e(n: int) -> str:
    """10**15 -> "1e15"."""
    return f"{n:.0e}".replace("+", "")


# --- parsing ------------------------------------------------------------------------------

_COUNT_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)(?:[eE]([+-]?\d+))?"


def _bounded(option: str, text: object, num: str, exp: str | None, unit: int, maximum: int, what: str) -> int:
    """num x 10^exp x unit as an int, refused above `maximum` before it is ever expanded:
    the Decimal keeps `1e999999` as a digit and an exponent, and comparing it is instant."""
    try:
        d = Decimal(f"{num}e{exp or 0}")
    except (InvalidOperation, ValueError):
        raise InputError(f"{option} {_shown(text)}: not a usable number") from None
    if d > Decimal(maximum) / unit:
        raise InputError(f"{option} {_shown(text)}: more than {_e(maximum)} {what}, the most qconvert accepts")
    return int((d * unit).to_integral_value())


def parse_params(text: str | int, option: str = "--params") -> int:
    """A parameter count: "70B", "7b", "1.5T", "125M", "70e9", "8000000000" -> int.
    Suffixes K/M/B/T are decimal (B = billion); a fractional result is rounded."""
    if isinstance(text, int) and not isinstance(text, bool):
        n = text
    else:
        m = re.fullmatch(r"\s*" + _NUMBER + r"\s*([kKmMbBtT]?)\s*", str(text))
        if not m:
            raise InputError(f"{option} {_shown(text)}: expected a parameter count such as 7B, 1.5T, 125M or 70e9")
        n = _bounded(option, text, m[1], m[2], _COUNT_SUFFIX[m[3].upper()], MAX_PARAMS, "parameters")
    if n < 1:
        raise InputError(f"{option} {_shown(text)}: must be at least one parameter")
    if n > MAX_PARAMS:
        raise InputError(f"{option} {_shown(n)}: more than {_e(MAX_PARAMS)} parameters, the most qconvert accepts")
    return n


# GB/MB/kB/TB are decimal (SI, as disks and `df -H` count); GiB/MiB/KiB/TiB are binary.
# A bare unit letter follows the decimal reading: "8G" is 8 GB, not 8 GiB.
_BYTE_UNITS = {
    "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9,
    "T": 10**12, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
}


def parse_bytes(text: str | int, option: str = "--vram", minimum: int = 0) -> int:
    """A size with a unit: "24GB" (decimal), "24GiB" (binary), "8G" (= 8 GB), "16000MB";
    at least `minimum` and at most MAX_BYTES."""
    if isinstance(text, int) and not isinstance(text, bool):
        n = text
    else:
        m = re.fullmatch(r"\s*" + _NUMBER + r"\s*([a-zA-Z]*)\s*", str(text))
        unit = _BYTE_UNITS.get(m[3].upper()) if m else None
        if not m or not m[3]:
            raise InputError(f"{option} {_shown(text)}: expected a size with a unit, such as 24GB, 24GiB or 16000MB")
        if unit is None:
            raise InputError(f"{option} {_shown(text)}: unknown unit {m[3]!r}; use B, kB, MB, GB, TB, KiB, MiB, GiB or TiB")
        n = _bounded(option, text, m[1], m[2], unit, MAX_BYTES, "bytes")
    if n < minimum:
        need = "must not be negative" if minimum <= 0 else "must be more than zero" if minimum == 1 else \
            f"must be at least {minimum:,} bytes"
        raise InputError(f"{option} {_shown(text)}: {need}")
    if n > MAX_BYTES:
        raise InputError(f"{option} {_shown(n)}: more than {_e(MAX_BYTES)} bytes, the most qconvert accepts")
    return n
