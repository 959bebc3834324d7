"""The renderer: one bidirectional transformer shared by every level of the hierarchy.

Input for expansion level ``i`` is ``[condition, target_1 .. target_L]`` (``L`` = the
level's max expansion length), embedded through one unified table (``vocab.UnifiedVocab``),
plus a learned position, a level embedding and a timestep embedding. It has one output
head per level (the next vocabulary plus its pad) and an energy head that gives one scalar
per sequence: about 0 for a valid expansion of the condition, about 1 for a wrong one.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .config import RendererConfig
from .layers import Block, init_weights
from .vocab import UnifiedVocab


class FractalDiffusionModel(nn.Module):
    def __init__(self, config: RendererConfig):
        super().__init__()
        if not config.levels:
            raise ValueError("RendererConfig.levels is empty: build it from a tokenizer")
        self.config = config
        self.vocab = UnifiedVocab.from_levels(config.levels)
        self.max_lens = [int(lv[2]) for lv in config.levels]
        d = config.d_model
        self.wte = nn.Embedding(self.vocab.total, d)
        self.wpe = nn.Embedding(1 + max(self.max_lens), d)
        self.level_emb = nn.Embedding(len(config.levels), d)
        self.time_emb = nn.Embedding(config.timesteps, d)
        self.blocks = nn.ModuleList(Block(d, config.n_heads) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(d)
        # one head per level: the target vocabulary plus its pad
        self.heads = nn.ModuleList(nn.Linear(d, int(lv[1]) + 1) for lv in config.levels)
        self.energy_head = nn.Sequential(nn.Linear(d, d), nn.GELU(approximate="tanh"), nn.Linear(d, 1))
        init_weights(self, config.n_layers)

    @property
    def num_levels(self) -> int:
        return len(self.max_lens)

    def num_classes(self, level: int) -> int:
        """Output classes of a level: its target vocabulary plus the pad."""
        return int(self.config.levels[level][1]) + 1

    def pad_id(self, level: int) -> int:
        return int(self.config.levels[level][1])

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _hidden(self, level: int, cond: torch.Tensor, targets: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # cond (B,), targets (B, L) ids within the level's target vocabulary, t (B,)
        B, L = targets.shape
        tokens = torch.cat([cond.view(B, 1) + self.vocab.offset(level),
                            targets + self.vocab.offset(level + 1)], dim=1)  # (B, 1 + L)
        pos = torch.arange(1 + L, device=cond.device)
        x = self.wte(tokens) + self.wpe(pos)  # (B, 1 + L, d)
        x = x + (self.level_emb.weight[level] + self.time_emb(t)).unsqueeze(1)
        for block in self.blocks:
            x = block(x)  # bidirectional: no mask, pads are a class like any token
        return self.ln_f(x)

    def forward(self, level: int, cond: torch.Tensor, targets: torch.Tensor, t: torch.Tensor):
        """-> (logits (B, L, V + 1) over the clean targets, energy (B,))."""
        h = self._hidden(level, cond, targets, t)
        logits = self.heads[level](h[:, 1:])
        energy = self.energy_head(h.mean(dim=1)).squeeze(-1)
        return logits, energy

    def denoise(self, level: int, cond: torch.Tensor, noisy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predict the clean expansion: logits (B, L, V + 1)."""
        return self.heads[level](self._hidden(level, cond, noisy, t)[:, 1:])

    def energy(self, level: int, cond: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        """Score finished expansions at t = 0: (B,), ~0 valid, ~1 wrong."""
        t = torch.zeros(cond.shape[0], dtype=torch.long, device=cond.device)
        h = self._hidden(level, cond, candidate, t)
        return self.energy_head(h.mean(dim=1)).squeeze(-1)
