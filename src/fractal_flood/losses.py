"""Training losses of the renderer: denoising cross-entropy and the energy regression."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def diffusion_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits (B, L, V + 1), targets (B, L): cross-entropy over every position, pads
    included as a class, so the model learns where an expansion ends."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def energy_loss(energy: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    """MSE towards 0 for correct pairs and 1 for wrong ones. energy, wrong: (B,)."""
    return F.mse_loss(energy.float(), wrong.float())
