"""Flash Flood: every item of a level in one batched pass, one level after another.

``render`` is the one loop over levels: choose an expansion for every item of the level
(best-of-K or adaptive, ``choose.py``), drop the pads, and hand the real children, with
the lengths the length head gave them, to the next level. The decoder classes only bind
the options to a choice function.
"""

from __future__ import annotations

from typing import Callable

import torch

from .base import Decoder
from .choose import Choice, adaptive, best_of_k
from .result import LevelStats, RenderResult


@torch.no_grad()
def render(model, alphabet: str, roots: torch.Tensor, choose: Callable[..., Choice],
           threshold: float) -> RenderResult:
    """roots (N,) on the model's device -> text. ``choose(level, cond, items, lengths)``."""
    items, lengths = roots, None
    counts, level_stats, energies = [], [], []
    for level in range(model.num_levels):
        ids = torch.arange(items.shape[0], device=items.device)
        ch = choose(level, items, ids, lengths)
        keep = ch.tokens != model.pad_id(level)  # (N, L)
        counts.append(keep.sum(dim=1).cpu())
        st = LevelStats(items=items.shape[0], draws=ch.work.draws, passes=ch.work.passes,
                        rounds=ch.rounds, positions=ch.work.positions, flops=ch.work.flops)
        if ch.energy is not None:
            st.accepted = int((ch.energy < threshold).sum())
            st.energy_sum = float(ch.energy.sum())
            st.scored = True
        energies.append(None if ch.energy is None else ch.energy.cpu())
        level_stats.append(st)
        lengths = None if ch.child_lengths is None else ch.child_lengths[keep]
        items = ch.tokens[keep]  # (M,) children in order; pads never go on
    return RenderResult(items.cpu(), counts, alphabet, level_stats, energies)


class FlashFloodDecoder(Decoder):
    """Best-of-K Flash Flood. K = 1 runs one denoising pass per level and no energy pass
    unless ``DecodeOptions.energies`` asks for the energies."""

    name = "flood"

    def choose(self, level, cond, items, lengths) -> Choice:
        o = self.options
        return best_of_k(self.model, level, cond, items, lengths, o.k, o.seed, o.temperature,
                         need_energy=o.k > 1 or o.energies, packed=o.packed, max_batch=o.max_batch)

    def render(self, root_ids) -> RenderResult:
        return render(self.model, self.alphabet, self._roots_tensor(root_ids), self.choose,
                      self.options.threshold)


class AdaptiveFloodDecoder(FlashFloodDecoder):
    """The sequential rule (threshold, max_tries) in parallel rounds."""

    name = "adaptive"

    def choose(self, level, cond, items, lengths) -> Choice:
        o = self.options
        return adaptive(self.model, level, cond, items, lengths, o.threshold, o.max_tries, o.seed,
                        o.temperature, packed=o.packed, max_batch=o.max_batch)
