"""The renderer: one bidirectional transformer shared by every level of the hierarchy.

Input for the expansion at level ``l`` is a *canvas* ``[condition, target_1 .. target_n]``
embedded through one unified table (``vocab.UnifiedVocab``), plus a learned position, a
level embedding and a timestep embedding.

Canvases are sized to the text. Only the top level's length is unknown when it is expanded:
its canvas has ``max_children`` slots and the pad is a class the model predicts. Below it,
every item's number of children was predicted one level up, by the *length head*: at each
target position it gives that child's own number of children. So a chunk of 3 characters is
a canvas of 1 + 3 positions, not 1 + 16. ``lengths`` (B,) tells the model how many target
slots of a batch row are real; the rest are masked out of attention (keys) and of the
energy's pooling, so a padded batch computes what each item would compute alone.

Heads: one token head per level (the child vocabulary plus its pad), one length head per
level whose children have children, and an energy head that gives one scalar per canvas,
about 0 for a valid expansion of the condition and about 1 for a wrong one.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ..hierarchy.levels import check_hierarchy
from ..hierarchy.vocab import UnifiedVocab
from .config import RendererConfig
from . import renderer_kernels
from .layers import Block, init_weights


class FractalDiffusionModel(nn.Module):
    def __init__(self, config: RendererConfig):
        super().__init__()
        if not config.levels:
            raise ValueError("RendererConfig.levels is empty: build it from a tokenizer")
        self.config = config
        self.levels = check_hierarchy(config.levels)
        self.vocab = UnifiedVocab(tuple(self.levels))
        self.max_lens = [lv.max_children for lv in self.levels[:-1]]  # canvas slots per level
        d = config.d_model
        self.wte = nn.Embedding(self.vocab.total, d)
        self.wpe = nn.Embedding(1 + max(self.max_lens), d)
        self.level_emb = nn.Embedding(self.num_levels, d)
        self.time_emb = nn.Embedding(config.timesteps, d)
        self.blocks = nn.ModuleList(Block(d, config.n_heads) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(d)
        # token head per level: the child vocabulary plus its pad
        self.heads = nn.ModuleList(nn.Linear(d, self.levels[l + 1].num_classes) for l in range(self.num_levels))
        # length head per level whose children expand further: 0 .. child.max_children
        self.length_heads = nn.ModuleDict({
            str(l): nn.Linear(d, self.levels[l + 1].max_children + 1)
            for l in range(self.num_levels) if self.levels[l + 1].max_children > 0})
        self.energy_head = nn.Sequential(nn.Linear(d, d), nn.GELU(approximate="tanh"), nn.Linear(d, 1))
        # the top level's lengths (children per root), read off the root's own embedding: no
        # level above predicts them, and with them the top canvas is packed like the others
        self.top_length_head = nn.Sequential(nn.Linear(d, d), nn.GELU(approximate="tanh"),
                                             nn.Linear(d, self.max_lens[0] + 1)) if config.top_lengths else None
        init_weights(self, config.n_layers)

    @property
    def num_levels(self) -> int:
        """Expanding levels: every level but the bottom."""
        return len(self.levels) - 1

    def num_classes(self, level: int) -> int:
        """Output classes of the expansion at ``level``: the child vocabulary plus the pad."""
        return self.levels[level + 1].num_classes

    def pad_id(self, level: int) -> int:
        """The pad of the expansion at ``level`` (the child level's pad id)."""
        return self.levels[level + 1].pad_id

    def packed(self, level: int) -> bool:
        """Below the top, canvases hold exactly the children the parent level predicted; at
        the top too when the model predicts the roots' lengths (``top_lengths``)."""
        return level > 0 or self.has_top_lengths

    @property
    def has_top_lengths(self) -> bool:
        return self.top_length_head is not None

    def top_length_logits(self, roots: torch.Tensor) -> torch.Tensor:
        """(N,) root ids -> (N, max_children + 1) scores of each root's number of children."""
        return self.top_length_head(self.wte(roots + self.vocab.offset(0)))

    def top_lengths(self, roots: torch.Tensor) -> torch.Tensor:
        """(N,) root ids -> (N,) children per root, at least one (class 0 is never chosen)."""
        return self.top_length_logits(roots)[..., 1:].argmax(-1) + 1

    def has_length_head(self, level: int) -> bool:
        return str(level) in self.length_heads

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _hidden(self, level: int, cond: torch.Tensor, targets: torch.Tensor, t: torch.Tensor,
                lengths: Optional[torch.Tensor]):
        # cond (B,), targets (B, L) ids within the child vocabulary, t (B,), lengths (B,) or None
        B, L = targets.shape
        tokens = torch.cat([cond.view(B, 1) + self.vocab.offset(level),
                            targets + self.vocab.offset(level + 1)], dim=1)  # (B, 1 + L)
        pos = torch.arange(1 + L, device=cond.device)
        x = self.wte(tokens) + self.wpe(pos)  # (B, 1 + L, d)
        x = x + (self.level_emb.weight[level] + self.time_emb(t)).unsqueeze(1)
        valid = None
        mask = None
        if lengths is not None:
            valid = pos.view(1, -1) <= lengths.view(B, 1)  # (B, 1 + L): condition + real slots
            mask = valid.view(B, 1, 1, 1 + L)  # keys a query may attend to
        fast = not self.training and renderer_kernels.wanted(x)
        for block in self.blocks:  # bidirectional
            x = renderer_kernels.block_forward(block, x, valid) if fast else block(x, attn_mask=mask)
        return self.ln_f(x), valid

    def _energy(self, h: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
        if valid is None:
            pooled = h.mean(dim=1)
        else:
            w = valid.to(h.dtype).unsqueeze(-1)  # (B, 1 + L, 1)
            pooled = (h * w).sum(dim=1) / w.sum(dim=1)
        return self.energy_head(pooled).squeeze(-1)

    def _length_logits(self, level: int, h: torch.Tensor) -> Optional[torch.Tensor]:
        head = self.length_heads[str(level)] if self.has_length_head(level) else None
        return None if head is None else head(h[:, 1:])

    def forward(self, level: int, cond: torch.Tensor, targets: torch.Tensor, t: torch.Tensor,
                lengths: Optional[torch.Tensor] = None):
        """-> (logits (B, L, V + 1) over the clean targets, child-length logits (B, L, M + 1)
        or None, energy (B,))."""
        h, valid = self._hidden(level, cond, targets, t, lengths)
        return self.heads[level](h[:, 1:]), self._length_logits(level, h), self._energy(h, valid)

    def denoise(self, level: int, cond: torch.Tensor, noisy: torch.Tensor, t: torch.Tensor,
                lengths: Optional[torch.Tensor] = None):
        """Predict the clean expansion: (token logits (B, L, V + 1), child-length logits or None)."""
        h, _ = self._hidden(level, cond, noisy, t, lengths)
        return self.heads[level](h[:, 1:]), self._length_logits(level, h)

    def energy(self, level: int, cond: torch.Tensor, candidate: torch.Tensor,
               lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Score finished expansions at t = 0: (B,), ~0 valid, ~1 wrong."""
        t = torch.zeros(cond.shape[0], dtype=torch.long, device=cond.device)
        h, valid = self._hidden(level, cond, candidate, t, lengths)
        return self._energy(h, valid)
