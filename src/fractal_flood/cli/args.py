"""The command line's argument types, torch-free: each turns one bad value into one line
naming the option, and every number has bounds."""

from __future__ import annotations

import argparse
import math
import os
import re
from pathlib import Path

from ..fileio import why_missing
from ..hierarchy.level_specs import parse_specs

# Upper bounds keep a typo from asking for unbounded memory or time; they sit far above any
# useful value.
MAX_ROOTS = 1_000_000
MAX_K = 256  # one item's K candidates share a forward pass: memory grows with K
MAX_STEPS = 10 ** 9
MAX_BATCH = 1 << 16
SEED_MAX = 2 ** 32 - 1


# argparse takes an argument that starts with "-" for an option unless it looks like a
# negative number, and its own test misses "-inf", "-nan" and "-1e3": this one knows them, so
# `--threshold -inf` reaches the option's type, which accepts or refuses it by value.
NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)


def int_in(lo: int, hi: int):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be in {lo} .. {hi:,}, got {v}")
        return v
    parse.__name__ = "integer"  # argparse names the type in its messages
    parse.lo, parse.hi = lo, hi
    return parse


def positive_int(s: str) -> int:
    return int_in(1, 10 ** 12)(s)


seed_int = int_in(0, SEED_MAX)


def finite_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {s}")
    return v


def nonneg_float(s: str) -> float:
    v = finite_float(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def positive_float(s: str) -> float:
    v = finite_float(s)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {v}")
    return v


def dropout_rate(s: str) -> float:
    v = finite_float(s)
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {v}")
    return v


def class_count(s: str):
    """--head-classes: "auto", 0 (one softmax) or a class count >= 2."""
    if s.strip() == "auto":
        return "auto"
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be auto, 0 or an integer >= 2, got {s!r}") from None
    if v < 0 or v == 1 or v > 1 << 24:
        raise argparse.ArgumentTypeError(f"must be auto, 0 or an integer in 2 .. {1 << 24}, got {v}")
    return v


def lm_shape(s: str) -> tuple:
    """--lm-shape: LAYERSxWIDTHxHEADS, e.g. 2x192x4."""
    parts = s.lower().split("x")
    try:
        layers, width, heads = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be LAYERSxWIDTHxHEADS, e.g. 2x192x4, got {s!r}") from None
    if not (1 <= layers <= 256 and 1 <= heads <= width <= 1 << 16):
        raise argparse.ArgumentTypeError(f"needs 1 <= layers <= 256 and 1 <= heads <= width <= 65536, got {s!r}")
    if width % heads:
        raise argparse.ArgumentTypeError(f"the width {width} must be a multiple of the heads {heads}, got {s!r}")
    return layers, width, heads


def unit_float(s: str) -> float:
    v = finite_float(s)
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {v}")
    return v


def level_list(s: str):
    """``--levels``: ``name:size:max_children`` per BPE level, comma separated, top first."""
    try:
        return parse_specs(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


LEVELS_HELP = ("the BPE levels above the characters, top first, as name:size:max_children, comma "
               "separated; the default hierarchy is roots:2048:4,chunks:1024:16")


def _writable_parent(path: Path) -> None:
    parent = path.parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write {path}: folder {parent} is not writable")


def output_file(s: str) -> str:
    """A file to create or replace: not a directory, in an existing writable folder."""
    path = Path(s)
    if not s or path.is_dir():
        raise argparse.ArgumentTypeError(f"{s!r} is a directory; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write {s}: the file is not writable")
    _writable_parent(path.absolute())
    return s


def output_dir(s: str) -> str:
    """A directory to create or write into: not a file, under a writable existing folder."""
    path = Path(s).absolute()
    if path.is_symlink() and not path.exists():
        raise argparse.ArgumentTypeError(why_missing(s, "directory"))
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{s} is a file, not a directory")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"{s}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write {s}: {existing} is not writable")
    return s


def corpus_spec(s: str) -> str:
    """A corpus: a file or directory that exists, or a glob (checked when it is opened)."""
    if not s:
        raise argparse.ArgumentTypeError("empty path")
    if any(c in s for c in "*?["):
        return s
    return input_file(s) if not Path(s).is_dir() else s


def input_file(s: str) -> str:
    path = Path(s)
    if not path.exists():
        raise argparse.ArgumentTypeError(why_missing(s))
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{s} is a directory, not a file")
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"cannot read {s}: permission denied")
    return s
