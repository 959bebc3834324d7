"""What a user asks the tokenizer for: the BPE levels above the characters, top down.

A spec is a :class:`~fractal_flood.hierarchy.levels.Level` read as a request: ``size`` is the most
tokens its BPE may learn (it can learn fewer on a short text) and ``max_children`` the most
tokens of the level below one of its tokens may merge. The characters level is not
specified: the text's alphabet is it. On the command line a hierarchy is written
``name:size:max_children`` per level, comma separated, top first:
``roots:2048:4,chunks:1024:16`` is the default.
"""

from __future__ import annotations

import operator
import re

from ..errors import LevelSpecError
from .levels import Level

BOTTOM_NAME = "chars"  # the implied characters level
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")


def default_specs(num_chunks: int = 1024, num_roots: int = 2048, max_chunk_chars: int = 16,
                  max_root_chunks: int = 4) -> list[Level]:
    """The two-level hierarchy of ``HierarchicalTokenizer.train``'s size arguments."""
    return check_specs([("roots", num_roots, max_root_chunks), ("chunks", num_chunks, max_chunk_chars)])


def check_specs(specs) -> list[Level]:
    """Validate BPE level specs (Level, ``{name, size, max_children}`` dicts or
    ``(name, size, max_children)`` tuples), top first, and return them as Levels."""
    if isinstance(specs, (str, bytes, dict)) or not hasattr(specs, "__iter__"):
        raise LevelSpecError(f"levels must be a list of level specs, got {type(specs).__name__}")
    out = [_one(s) for s in specs]
    if not out:
        raise LevelSpecError("a hierarchy needs at least one level above the characters")
    names = [lv.name for lv in out]
    for name in names:
        check_name(name)
    if len(set(names)) != len(names):
        raise LevelSpecError(f"level names must differ, got {', '.join(names)}")
    for upper, lower in zip(out, out[1:]):
        # a BPE vocabulary holds every token of the level below it
        if upper.size < lower.size:
            raise LevelSpecError(f"level {upper.name!r}: size {upper.size} is smaller than the level "
                                 f"below it ({lower.name!r}, {lower.size}); sizes grow toward the top")
    return out


def check_name(name) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise LevelSpecError(f"level name {name!r} must be a letter then letters, digits or '_'")
    if name == BOTTOM_NAME:
        raise LevelSpecError(f"level name {BOTTOM_NAME!r} is the implied characters level")
    return name


def parse_specs(text: str) -> list[Level]:
    """``"roots:2048:4,chunks:1024:16"`` -> specs, top first."""
    parts = [p.strip() for p in str(text).split(",")]
    if not any(parts):
        raise LevelSpecError("--levels needs at least one level, as name:size:max_children")
    specs = []
    for p in parts:
        fields = p.split(":")
        if len(fields) != 3 or not all(f.strip() for f in fields):
            raise LevelSpecError(f"level {p!r} is not name:size:max_children (e.g. roots:2048:4)")
        name, size, k = (f.strip() for f in fields)
        try:
            size, k = int(size), int(k)
        except ValueError:
            raise LevelSpecError(f"level {p!r}: size and max_children must be integers") from None
        specs.append((name, size, k))
    return check_specs(specs)


def format_specs(levels) -> str:
    """The inverse of :func:`parse_specs` (the characters level, if present, is left out)."""
    return ",".join(f"{lv.name}:{lv.size}:{lv.max_children}" for lv in levels if lv.max_children > 0)


def _one(spec) -> Level:
    if isinstance(spec, Level):
        name, size, k = spec.name, spec.size, spec.max_children
    elif isinstance(spec, dict):
        if set(spec) != {"name", "size", "max_children"}:
            raise LevelSpecError(f"a level spec is {{name, size, max_children}}, got {spec!r}")
        name, size, k = spec["name"], spec["size"], spec["max_children"]
    elif isinstance(spec, (tuple, list)) and len(spec) == 3:
        name, size, k = spec
    else:
        raise LevelSpecError(f"a level spec is (name, size, max_children), got {spec!r}")
    check_name(name)
    checked = []
    for what, v in (("size", size), ("max_children", k)):
        try:
            if isinstance(v, bool):
                raise TypeError
            v = operator.index(v)
        except TypeError:
            raise LevelSpecError(f"level {name!r}: {what} must be an integer, got {v!r}") from None
        if v < 1:
            raise LevelSpecError(f"level {name!r}: {what} must be >= 1, got {v}")
        checked.append(v)
    return Level(name, *checked)
