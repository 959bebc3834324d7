"""Flash Flood: expand every item of a level in one batched pass (per memory-bounded batch).

Best-of-K replicates each condition K times, draws all candidates in one denoising pass,
scores them in one energy pass, and keeps the argmin per condition: a ``view(N, K)``, an
``argmin`` and a ``gather``. The adaptive flood runs the sequential decoder's rule
(accept below the threshold, at most ``max_tries`` draws, else the lowest-energy draw) in
parallel rounds, re-flooding only the rejects. Pads are dropped between levels, so only
real chunks reach the character level.
"""

from __future__ import annotations

import torch

from .base import Decoder
from .result import LevelStats, RenderResult


class FlashFloodDecoder(Decoder):
    """``adaptive=False``: best-of-K. ``adaptive=True``: threshold / max_tries in rounds."""

    def __init__(self, *args, adaptive: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.adaptive = adaptive
        self.name = "adaptive" if adaptive else "flood"

    @torch.no_grad()
    def expand_level_parallel(self, condition_ids: torch.Tensor, level: int, k: int | None = None,
                              item_ids: torch.Tensor | None = None, stats: LevelStats | None = None):
        """Best-of-K for a whole batch: condition_ids (N,) -> (expansions (N, L), energies (N,))."""
        k = self.options.k if k is None else k
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        cond = condition_ids.to(self.device)
        N, L = cond.shape[0], self.model.max_lens[level]
        items = torch.arange(N, device=self.device) if item_ids is None else item_ids
        out = torch.empty((N, L), dtype=torch.long, device=self.device)
        energy = torch.empty((N,), dtype=torch.float32, device=self.device)
        per_batch = max(1, self.options.max_batch // k)
        draw_ids = torch.arange(k, device=self.device)
        before = self.expander.passes
        for s in range(0, N, per_batch):
            c, it = cond[s:s + per_batch], items[s:s + per_batch]
            n = c.shape[0]
            cands, e = self.expander.draw_and_score(
                level, c.repeat_interleave(k), it.repeat_interleave(k), draw_ids.repeat(n))
            e = e.view(n, k)  # (n, K)
            best = e.argmin(dim=1)  # (n,)
            out[s:s + n] = cands.view(n, k, L)[torch.arange(n, device=self.device), best]
            energy[s:s + n] = e.gather(1, best.unsqueeze(1)).squeeze(1)
            if stats is not None:
                stats.rounds += 1
        if stats is not None:
            stats.items += N
            stats.draws += N * k
            stats.passes += self.expander.passes - before
        return out, energy

    @torch.no_grad()
    def expand_level_adaptive(self, condition_ids: torch.Tensor, level: int,
                              item_ids: torch.Tensor | None = None, stats: LevelStats | None = None):
        """Rejection sampling in parallel rounds: round d draws try d for every pending item."""
        opts = self.options
        cond = condition_ids.to(self.device)
        N, L = cond.shape[0], self.model.max_lens[level]
        items = torch.arange(N, device=self.device) if item_ids is None else item_ids
        best = torch.empty((N, L), dtype=torch.long, device=self.device)
        best_e = torch.full((N,), float("inf"), device=self.device)
        pending = torch.arange(N, device=self.device)
        before = self.expander.passes
        for d in range(opts.max_tries):
            if pending.numel() == 0:
                break
            accepted = []
            for s in range(0, pending.numel(), opts.max_batch):
                idx = pending[s:s + opts.max_batch]
                draw = torch.full_like(idx, d)
                cand, e = self.expander.draw_and_score(level, cond[idx], items[idx], draw)
                better = e < best_e[idx]
                best[idx] = torch.where(better.unsqueeze(1), cand, best[idx])
                best_e[idx] = torch.where(better, e, best_e[idx])
                accepted.append(e < opts.threshold)
            if stats is not None:
                stats.rounds += 1
                stats.draws += pending.numel()
            pending = pending[~torch.cat(accepted)]  # one host sync per round, not per item
        if stats is not None:
            stats.items += N
            stats.passes += self.expander.passes - before
        return best, best_e

    @torch.no_grad()
    def render_parallel(self, root_ids) -> RenderResult:
        """Roots -> text: one flood per level, pads dropped between levels."""
        items = self._roots_tensor(root_ids)
        counts, level_stats, energies = [], [], []
        for level in range(self.model.num_levels):
            st = LevelStats()
            if self.adaptive:
                sel, e = self.expand_level_adaptive(items, level, stats=st)
            else:
                sel, e = self.expand_level_parallel(items, level, stats=st)
            keep = sel != self.model.pad_id(level)  # (N, L)
            counts.append(keep.sum(dim=1).cpu())
            st.accepted = int((e < self.options.threshold).sum())
            st.energy_sum = float(e.sum())
            energies.append(e.cpu())
            level_stats.append(st)
            items = sel[keep]  # (M,) children in order; invalid (pad) ids never go on
        return RenderResult(items.cpu(), counts, self.alphabet, level_stats, energies)

    render = render_parallel
