"""Sizes and counts as people type them: parameter counts ("70B", "1.5T", "70e9") and byte
sizes ("24GB" decimal, "24GiB" binary), parsed exactly."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from ..errors import InputError

# --- parsing ------------------------------------------------------------------------------

_COUNT_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)(?:[eE]([+-]?\d+))?"


def _decimal(num: str, exp: str | None) -> Decimal:
    return Decimal(num) * (Decimal(10) ** int(exp or 0))


def parse_params(text: str | int, option: str = "--params") -> int:
    """A parameter count: "70B", "7b", "1.5T", "125M", "70e9", "8000000000" -> int.
    Suffixes K/M/B/T are decimal (B = billion); a fractional result is rounded."""
    if isinstance(text, int) and not isinstance(text, bool):
        n = text
    else:
        m = re.fullmatch(r"\s*" + _NUMBER + r"\s*([kKmMbBtT]?)\s*", str(text))
        if not m:
            raise InputError(f"{option} {text!r}: expected a parameter count such as 7B, 1.5T, 125M or 70e9")
        try:
            n = int((_decimal(m[1], m[2]) * _COUNT_SUFFIX[m[3].upper()]).to_integral_value())
        except (InvalidOperation, OverflowError):
            raise InputError(f"{option} {text!r}: not a usable number") from None
    if n < 1:
        raise InputError(f"{option} {text!r}: must be at least one parameter")
    return n


# GB/MB/kB/TB are decimal (SI, as disks and `df -H` count); GiB/MiB/KiB/TiB are binary.
# A bare unit letter follows the decimal reading: "8G" is 8 GB, not 8 GiB.
_BYTE_UNITS = {
    "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9,
    "T": 10**12, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
}


def parse_bytes(text: str | int, option: str = "--vram") -> int:
    """A size with a unit: "24GB" (decimal), "24GiB" (binary), "8G" (= 8 GB), "16000MB"."""
    if isinstance(text, int) and not isinstance(text, bool):
        n = text
    else:
        m = re.fullmatch(r"\s*" + _NUMBER + r"\s*([a-zA-Z]*)\s*", str(text))
        unit = _BYTE_UNITS.get(m[3].upper()) if m else None
        if not m or not m[3]:
            raise InputError(f"{option} {text!r}: expected a size with a unit, such as 24GB, 24GiB or 16000MB")
        if unit is None:
            raise InputError(f"{option} {text!r}: unknown unit {m[3]!r}; use B, kB, MB, GB, TB, KiB, MiB, GiB or TiB")
        n = int((_decimal(m[1], m[2]) * unit).to_integral_value())
    if n < 0:
        raise InputError(f"{option} {text!r}: must not be negative")
    return n
