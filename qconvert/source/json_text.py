"""JSON from files qconvert did not write (config.json, the safetensors index and headers,
tokenizer files), parsed so that every way hostile text can fail is one FormatError."""

from __future__ import annotations

import json
import re
from typing import Any

from ..errors import FormatError


def parse_json(text: str | bytes, where: str) -> Any:
    """json.loads that turns every way hostile text can fail into one FormatError naming
    `where`: deep nesting (RecursionError), integers too long to convert, bytes that are not
    UTF-8, NaN/Infinity constants, keys given twice. No input bytes are echoed."""
    try:
        data = json.loads(text, parse_constant=_no_constant, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise FormatError(f"{where}: JSON nested too deeply") from None
    except UnicodeDecodeError as e:
        raise FormatError(f"{where}: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise FormatError(f"{where}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except _Duplicate as e:
        raise FormatError(f"{where}: key {e.args[0]!r} appears twice in one JSON object") from None
    except _Constant as e:
        raise FormatError(f"{where}: holds {e.args[0]}, which is not a JSON value") from None
    except ValueError:  # a number json cannot convert (thousands of digits)
        raise FormatError(f"{where}: holds a number too long to read") from None
    # "\ud800" is valid JSON but not text: no writer can encode it. An escape makes one, and
    # so do raw surrogate bytes (ED A0..BF xx), which json.loads decodes with 'surrogatepass';
    # the walk runs only when the raw text holds either at all.
    if _SURROGATE_ESCAPE.search(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")):
        _check_text(data, where)
    return data


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


def _check_text(data: Any, where: str) -> None:
    stack = [data]
    while stack:  # iterative: the parsed value may nest as deep as json allowed
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise FormatError(f"{where}: holds a string with an unpaired UTF-16 surrogate "
                                  "(\\ud800-\\udfff), which is not text") from None


class _Duplicate(Exception):
    pass


class _Constant(Exception):
    pass


def _no_constant(name: str) -> Any:
    raise _Constant(name)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _Duplicate(k)
            seen.add(k)
    return out
