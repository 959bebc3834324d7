"""Inverse-CDF draws on the host, bit for bit the tensor ops', for the CPU's smallest batches.

A batch-1 decode step on the CPU is bound by operator dispatch (RESULTS.md: hundreds of
aten calls of about a microsecond each). A draw inverts a cumulative sum: scale the
uniform by the total, keep it below the total, search; the class-factored draw does that
twice, with the slice arithmetic between, and greedy rows add an argmax and a select. On
the CPU those ~10-25 tiny calls cost more than the arithmetic. Here the cumulative sum is
viewed as a NumPy array (no copy) and the inversion runs on NumPy float32 scalars: the
same IEEE float32 operations, one at a time, and ``searchsorted`` with the same side, so
the ids are the tensor path's, bit for bit (tested), and a row draws the same whichever
path its batch takes. Every value is an explicit ``np.float32``, so the result does not
depend on NumPy's promotion rules for Python floats (which changed in NumPy 2).
"""

from __future__ import annotations

import numpy as np
import torch

_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)


def host_view(x: torch.Tensor) -> np.ndarray:
    """A CPU float32 tensor as a NumPy array over the same memory."""
    return x.detach().numpy()


def invert(cdf: np.ndarray, u) -> tuple[int, np.float32]:
    """One row of ``sampling.invert_target``: a float32 cumulative sum and a uniform (a
    float32 value) -> (the first index whose cdf exceeds the target, the target), where the
    target is ``u`` times the total, kept strictly below the total."""
    total = cdf[-1]
    target = min(np.float32(u) * total, np.nextafter(total, _ZERO))
    return int(np.searchsorted(cdf, target, side="right")), target


def place_in_slice(target: np.float32, hi: np.float32, p: np.float32) -> np.float32:
    """Where ``target`` sits in the slice ``[hi - p, hi)`` of width ``p`` > 0, in [0, 1]:
    ``class_head.draw``'s ``((target - (hi - p)) / p).clamp(0, 1)`` in float32."""
    return min(max((target - (hi - p)) / p, _ZERO), _ONE)


def divisors(temperatures: list, device) -> torch.Tensor:
    """(B, 1) float32 temperature divisors (1 for a greedy row), made in one call."""
    return torch.tensor([[t if t > 0 else 1.0] for t in temperatures], dtype=torch.float32, device=device)
