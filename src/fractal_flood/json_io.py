"""JSON with limits, both ways. Files we read (tokenizers, part configs, training state)
may come from anywhere: they are size-capped, depth-capped before parsing (so a deeply
nested file cannot exhaust the parser's recursion) and may not hold NaN or Infinity. What
we write is strict JSON: a non-finite float becomes ``null``, never a bare ``NaN``."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from .errors import FractalFloodError

MAX_DEPTH = 32
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_BRACKET = re.compile(r"[\[\]{}]")


def _reject_constant(name: str):
    raise ValueError(f"{name} is not allowed")


def nesting_depth(raw: str) -> int:
    """Deepest bracket nesting outside strings (the text need not be valid JSON)."""
    depth = deepest = 0
    for m in _BRACKET.finditer(_STRING.sub('""', raw)):
        if m.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def read_json(path: Path, what: str, max_bytes: int, error=FractalFloodError,
              max_depth: int = MAX_DEPTH):
    """Parse the JSON file ``path`` or raise ``error`` with one line naming it as ``what``."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise error(f"{what} {path} is {size:,} bytes, over the {max_bytes:,}-byte limit")
        raw = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise error(f"{what} {path} is a directory, not a file") from None
    except UnicodeDecodeError as e:
        raise error(f"{what} {path} is not UTF-8 ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror or e}") from None
    depth = nesting_depth(raw)
    if depth > max_depth:
        raise error(f"{what} {path} nests {depth} levels deep, over the limit of {max_depth}")
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (json.JSONDecodeError, ValueError) as e:
        raise error(f"{what} {path} is truncated or corrupt: {e}") from None


def finite_or_null(obj):
    """A copy of ``obj`` with every NaN or infinite float replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    return obj


def dumps(obj, **kwargs) -> str:
    """Strict JSON text: non-finite floats as null."""
    return json.dumps(finite_or_null(obj), allow_nan=False, **kwargs)
