"""Training losses of the renderer: denoising and length cross-entropies, and the energy
regression."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def diffusion_loss(logits: torch.Tensor, targets: torch.Tensor, valid: Optional[torch.Tensor] = None,
                   denominator: Optional[float] = None) -> torch.Tensor:
    """logits (B, L, C), targets (B, L): cross-entropy over the canvas slots. At the top level
    (``valid`` None) every slot counts, pads included as a class, so the model learns where
    an expansion ends; below it only the real slots (``valid`` (B, L) bool) exist. The same
    serves the length head (a child's own number of children as the class).

    The mean over the counted slots, or their sum over ``denominator`` when given (so that
    equal pieces of one batch average to the whole batch's mean)."""
    logits, targets = logits.float().flatten(0, 1), targets.flatten()
    if valid is not None:
        v = valid.flatten()
        logits, targets = logits[v], targets[v]
    if denominator is None:
        return F.cross_entropy(logits, targets)
    return F.cross_entropy(logits, targets, reduction="sum") / denominator


def energy_loss(energy: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    """MSE towards 0 for correct pairs and 1 for wrong ones. energy, wrong: (B,)."""
    return F.mse_loss(energy.float(), wrong.float())
