"""Flash Flood: every item of a level in one batched pass, one level after another.

``render`` is the one loop over levels: choose an expansion for every item of the level
(best-of-K or adaptive, ``choose.py``), drop the pads, and hand the real children, with
the lengths the length head gave them, to the next level. The decoder classes only bind
the options to a choice function.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from ..models.flops import top_length_flops
from .base import Decoder
from .choose import Choice, adaptive, best_of_k
from .result import LevelStats, RenderResult


@torch.no_grad()
def render(model, alphabet: str, roots: torch.Tensor, choose: Callable[..., Choice],
           threshold: float, seed=0, sizes: Optional[Sequence[int]] = None,
           offsets: Optional[Sequence] = None) -> RenderResult:
    """roots (N,) on the model's device -> text. ``choose(level, cond, items, lengths, seed)``.

    Items are numbered per level in text order, from ``offsets[level]`` (the items a request
    has already rendered at that level; default 0), and item ``i`` draws noise keyed on
    ``(seed, level, i)``: so a request's text does not depend on how its roots are cut into
    blocks (tested). Several requests pooled in one flood: ``sizes`` (consecutive roots per
    request), ``seed`` one int per request and ``offsets`` one list per request; every item
    is numbered within its own request and draws with its request's seed, so each request
    gets exactly the text it gets alone (tested).
    """
    items, lengths, owner, seeds = roots, None, None, seed
    n_levels = model.num_levels
    if sizes is not None:
        if len(sizes) != len(seed) or sum(sizes) != roots.shape[0]:
            raise ValueError("sizes must give one count per seed and sum to the number of roots")
        seeds = torch.as_tensor(list(seed), dtype=torch.long, device=roots.device)
        owner = torch.repeat_interleave(torch.arange(len(sizes), device=roots.device),
                                        torch.as_tensor(list(sizes), device=roots.device))
        offsets = [[0] * n_levels] * len(sizes) if offsets is None else offsets
    else:
        offsets = [[0] * n_levels] if offsets is None else [offsets]
    if len(offsets) != (1 if owner is None else len(sizes)) or any(len(o) != n_levels for o in offsets):
        raise ValueError(f"offsets must give one start per level ({n_levels}) per request")
    starts = torch.as_tensor([list(o) for o in offsets], dtype=torch.long, device=roots.device)  # (R, levels)
    counts, level_stats, energies = [], [], []
    for level in range(model.num_levels):
        ids = torch.arange(items.shape[0], device=items.device)
        item_seed = seed
        if owner is None:
            ids = ids + starts[0, level]
        else:  # number items within their request; each draws with its seed
            per = torch.bincount(owner, minlength=len(sizes))
            ids = ids - (per.cumsum(0) - per)[owner] + starts[owner, level]
            item_seed = seeds[owner]
        top = level == 0 and model.has_top_lengths
        if top:  # the roots' lengths: the top canvas is packed like the others
            lengths = model.top_lengths(items)
        ch = choose(level, items, ids, lengths, item_seed)
        keep = ch.tokens != model.pad_id(level)  # (N, L)
        counts.append(keep.sum(dim=1).cpu())
        st = LevelStats(items=items.shape[0], draws=ch.work.draws, passes=ch.work.passes,
                        rounds=ch.rounds, positions=ch.work.positions,
                        flops=ch.work.flops + (top_length_flops(model.config, items.shape[0]) if top else 0))
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

    def render(self, root_ids, offsets=None) -> RenderResult:
        return render(self.model, self.alphabet, self._roots_tensor(root_ids), self.choose,
                      self.options.threshold, self.options.seed, offsets=offsets)

    def render_pooled(self, blocks: Sequence[Sequence[int]], seeds: Sequence[int],
                      offsets: Optional[Sequence] = None) -> RenderResult:
        """Several requests' root blocks in one flood, block i drawn with ``seeds[i]`` from
        ``offsets[i]``: the same text per block as ``render`` with that seed and offsets
        (the options' own seed unused). Split the result with ``result.split_render``."""
        flat = self._roots_tensor([r for b in blocks for r in b])
        return render(self.model, self.alphabet, flat, self.choose, self.options.threshold,
                      list(seeds), [len(b) for b in blocks], offsets)


class AdaptiveFloodDecoder(FlashFloodDecoder):
    """The sequential rule (threshold, max_tries) in parallel rounds."""

    name = "adaptive"

    def choose(self, level, cond, items, lengths, seed) -> Choice:
        o = self.options
        return adaptive(self.model, level, cond, items, lengths, o.threshold, o.max_tries, seed,
                        o.temperature, packed=o.packed, max_batch=o.max_batch)
