"""Inverse-CDF draws on the host, bit for bit the tensor ops', for the CPU's small batches.

A batch-1 decode step on the CPU is bound by operator dispatch: hundreds of aten calls,
each costing more than its arithmetic (measured in docs/log/notebook.md). A draw inverts a
cumulative sum: scale the uniform by the total, keep it below the total, search; the
class-factored draw does that twice, with the slice arithmetic between, and greedy rows
add an argmax and a select. On the CPU those ~10-25 tiny calls cost more than the
arithmetic. Here the cumulative sums
are viewed as NumPy arrays (no copy) and the inversion runs as a few NumPy calls over all
rows at once: the same IEEE float32 operations element by element, and ``searchsorted``
(right side) as the count of entries at or below the target, which is the same index on a
non-decreasing row. So the ids are the tensor path's, bit for bit (tested), and a row
draws the same whichever path its batch takes. Every constant is an explicit
``np.float32``, so nothing depends on NumPy's promotion rules for Python floats.
"""

from __future__ import annotations

import numpy as np
import torch

_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)


def host_view(x: torch.Tensor) -> np.ndarray:
    """A CPU float32 tensor as a NumPy array over the same memory."""
    return x.detach().numpy()


def invert(cdf: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``tokens.invert_target`` on the host: (B, V) float32 cumulative sums, (B,) float32
    uniforms -> ((B,) int64 ids, (B,) float32 targets), where the target is ``u`` times the
    row's total kept strictly below it, and the id is the first whose cdf exceeds it."""
    total = cdf[:, -1]
    target = np.minimum(u * total, np.nextafter(total, _ZERO))
    return (cdf <= target[:, None]).sum(1), target


def place_in_slice(target: np.ndarray, hi: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Where each target sits in its slice ``[hi - p, hi)`` of width ``p`` > 0, in [0, 1]:
    ``class_head.draw``'s ``((target - (hi - p)) / p).clamp(0, 1)`` in float32."""
    return np.clip((target - (hi - p)) / p, _ZERO, _ONE)


def divisors(temperatures: list, device) -> torch.Tensor:
    """(B, 1) float32 temperature divisors (1 for a greedy row), made in one call."""
    return torch.tensor([[t if t > 0 else 1.0] for t in temperatures], dtype=torch.float32, device=device)
