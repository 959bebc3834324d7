"""The manager's sampling settings and the seed's range, torch-free (the command line
reads their defaults without importing torch; ``tokens.py`` does the sampling)."""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real
from typing import Optional

SEED_LIMIT = 1 << 63  # seeds are non-negative 63-bit integers (both halves are hashed)
MAX_SEED = SEED_LIMIT - 1


def _number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


@dataclass(frozen=True)
class SamplingConfig:
    """How to turn logits into a token. ``temperature == 0`` means argmax (no random draw).

    The class default (temperature 1: the model's own distribution) is the neutral setting
    for code that samples directly; a generation request's default manager sampling is
    ``generation.request.DEFAULT_MANAGER``."""

    temperature: float = 1.0
    top_k: Optional[int] = None  # keep the k most likely tokens
    top_p: Optional[float] = None  # keep the smallest set whose probability reaches top_p

    def __post_init__(self):
        t = self.temperature
        if not _number(t) or not t >= 0 or t == float("inf"):  # also rejects NaN
            raise ValueError(f"temperature must be a number >= 0 (0 = argmax), got {t!r}")
        if self.top_k is not None and (not _number(self.top_k) or int(self.top_k) != self.top_k
                                       or self.top_k < 1):
            raise ValueError(f"top_k must be an integer >= 1 or None, got {self.top_k!r}")
        if self.top_p is not None and (not _number(self.top_p) or not 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1] or None, got {self.top_p!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def filters(self) -> bool:
        """Whether top-k or top-p can drop a token (the sort in ``filter_logits`` is needed)."""
        return bool(self.top_k) or (self.top_p is not None and self.top_p < 1)


def check_seed(seed) -> int:
    """``seed`` as an int, or ValueError: every seed is an integer in [0, 2**63)."""
    if isinstance(seed, bool) or not isinstance(seed, (Integral, Real)) or int(seed) != seed \
            or not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    return int(seed)
