"""Flash Flood: every item of a level in one batched pass, one level after another.

``render`` is the one loop over levels: choose an expansion for every item of the level
(best-of-K or adaptive, ``choose.py``), drop the pads, and hand the real children, with
the lengths the length head gave them, to the next level. The decoder classes only bind
the options to a choice function.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from .base import Decoder
from .choose import Choice, adaptive, best_of_k
from .result import LevelStats, RenderResult


@torch.no_grad()
def render(model, alphabet: str, roots: torch.Tensor, choose: Callable[..., Choice],
           threshold: float, seed=0, sizes: Optional[Sequence[int]] = None) -> RenderResult:
    """roots (N,) on the model's device -> text. ``choose(level, cond, items, lengths, seed)``.

    One request: ``seed`` an int, items numbered 0.. per level. Several requests pooled in
    one flood: ``sizes`` (consecutive roots per request) and ``seed`` one int per request;
    every item is numbered within its own request and draws with its request's seed, so
    each request gets exactly the text it gets alone (tested).
    """
    items, lengths, owner, seeds = roots, None, None, seed
    if sizes is not None:
        if len(sizes) != len(seed) or sum(sizes) != roots.shape[0]:
            raise ValueError("sizes must give one count per seed and sum to the number of roots")
        seeds = torch.as_tensor(list(seed), dtype=torch.long, device=roots.device)
        owner = torch.repeat_interleave(torch.arange(len(sizes), device=roots.device),
                                        torch.as_tensor(list(sizes), device=roots.device))
    counts, level_stats, energies = [], [], []
    for level in range(model.num_levels):
        ids = torch.arange(items.shape[0], device=items.device)
        item_seed = seed
        if owner is not None:  # number items within their request; each draws with its seed
            per = torch.bincount(owner, minlength=len(sizes))
            ids = ids - (per.cumsum(0) - per)[owner]
            item_seed = seeds[owner]
        ch = choose(level, items, ids, lengths, item_seed)
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
        if owner is not None:
            owner = owner[:, None].expand_as(keep)[keep]
        items = ch.tokens[keep]  # (M,) children in order; pads never go on
    return RenderResult(items.cpu(), counts, alphabet, level_stats, energies)


class FlashFloodDecoder(Decoder):
    """Best-of-K Flash Flood. K = 1 runs one denoising pass per level and no energy pass
    unless ``DecodeOptions.energies`` asks for the energies."""

    name = "flood"

    def choose(self, level, cond, items, lengths, seed) -> Choice:
        o = self.options
        return best_of_k(self.model, level, cond, items, lengths, o.k, seed, o.temperature,
                         need_energy=o.k > 1 or o.energies, packed=o.packed, max_batch=o.max_batch)

    def render(self, root_ids) -> RenderResult:
        return render(self.model, self.alphabet, self._roots_tensor(root_ids), self.choose,
                      self.options.threshold, self.options.seed)

    def render_pooled(self, blocks: Sequence[Sequence[int]], seeds: Sequence[int]) -> RenderResult:
        """Several requests' root blocks in one flood, block i drawn with ``seeds[i]``: the
        same text per block as ``render`` with that seed (the options' own seed unused).
        Split the result per block with ``engine.split_render``."""
        flat = self._roots_tensor([r for b in blocks for r in b])
        return render(self.model, self.alphabet, flat, self.choose, self.options.threshold,
                      list(seeds), [len(b) for b in blocks])


class AdaptiveFloodDecoder(FlashFloodDecoder):
    """The sequential rule (threshold, max_tries) in parallel rounds."""

    name = "adaptive"

    def choose(self, level, cond, items, lengths, seed) -> Choice:
        o = self.options
        return adaptive(self.model, level, cond, items, lengths, o.threshold, o.max_tries, seed,
                        o.temperature, packed=o.packed, max_batch=o.max_batch)
