"""The discrete noise process, apart from the network.

Each target token is replaced by a uniformly random token (pad included: it is a class)
with probability rising linearly over ``T`` timesteps: ``p(t) = (t + 1) / T``, so
``t = T - 1`` is pure noise (where decoding starts) and ``t = 0`` is all but clean (where a
finished expansion is scored by the energy head).
"""

from __future__ import annotations

import torch


def replace_prob(t: torch.Tensor, timesteps: int) -> torch.Tensor:
    return (t.float() + 1.0) / timesteps


def corrupt(targets: torch.Tensor, t: torch.Tensor, timesteps: int, num_classes: int,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """targets: (B, L) ids in [0, num_classes); t: (B,) timesteps -> noisy (B, L)."""
    B, L = targets.shape
    p = replace_prob(t, timesteps).view(B, 1)
    u = torch.rand((B, L), device=targets.device, generator=generator)
    rnd = torch.randint(0, num_classes, (B, L), device=targets.device, generator=generator)
    return torch.where(u < p, rnd, targets)
