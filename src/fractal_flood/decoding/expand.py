"""The one expansion step every decoder shares: draw candidates from pure noise, score them.

A draw for item ``i`` on try ``d`` starts from noise that depends only on
``(seed, level, i, d)`` (``draws.py``), denoises it in one pass at ``t = T - 1``, and picks
each position's token by argmax (temperature 0) or by Gumbel-max sampling at the given
temperature. Scoring is one energy pass at ``t = 0``. The decoders differ only in which
items and tries they send here and how they choose among the results.
"""

from __future__ import annotations

import torch

from .. import draws
from ..renderer import FractalDiffusionModel


class Expander:
    def __init__(self, model: FractalDiffusionModel, seed: int = 0, temperature: float = 0.0):
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        self.model = model
        self.seed = int(seed)
        self.temperature = float(temperature)
        self.device = next(model.parameters()).device
        self.passes = 0  # batched forward passes (denoise + energy)
        self.draws = 0  # candidates drawn

    @torch.no_grad()
    def draw(self, level: int, cond: torch.Tensor, item: torch.Tensor, draw: torch.Tensor) -> torch.Tensor:
        """cond, item, draw: (B,) -> candidate expansions (B, L)."""
        L, C = self.model.max_lens[level], self.model.num_classes(level)
        B = cond.shape[0]
        noise = draws.randint(self.seed, draws.NOISE_STREAM, level, item, draw, (L,), C)  # (B, L)
        t = torch.full((B,), self.model.config.timesteps - 1, dtype=torch.long, device=cond.device)
        logits = self.model.denoise(level, cond, noise, t)  # (B, L, C), the model's dtype
        self.passes += 1
        self.draws += B
        if self.temperature == 0:
            return logits.argmax(-1)
        u = draws.uniform(self.seed, draws.GUMBEL_STREAM, level, item, draw, (L, C))
        gumbel = -torch.log(-torch.log(u))
        return (logits.float() / self.temperature + gumbel).argmax(-1)

    @torch.no_grad()
    def score(self, level: int, cond: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        """-> energies (B,) in float32."""
        e = self.model.energy(level, cond, cand).float()
        self.passes += 1
        return e

    def draw_and_score(self, level, cond, item, draw):
        cand = self.draw(level, cond, item, draw)
        return cand, self.score(level, cond, cand)
