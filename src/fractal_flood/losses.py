"""Training losses of the renderer: denoising and length cross-entropies, and the energy
regression."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def diffusion_loss(logits: torch.Tensor, targets: torch.Tensor,
                   valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """logits (B, L, C), targets (B, L): cross-entropy over the canvas slots. At the top level
    (``valid`` None) every slot counts, pads included as a class, so the model learns where
    an expansion ends; below it only the real slots (``valid`` (B, L) bool) exist. Also the
    length head's loss: the same shapes, a child's own number of children as the class."""
    logits, targets = logits.float().flatten(0, 1), targets.flatten()
    if valid is None:
        return F.cross_entropy(logits, targets)
    v = valid.flatten()
    return F.cross_entropy(logits[v], targets[v])


def energy_loss(energy: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    """MSE towards 0 for correct pairs and 1 for wrong ones. energy, wrong: (B,)."""
    return F.mse_loss(energy.float(), wrong.float())
