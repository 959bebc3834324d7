"""The plan's baseline, the original ``render_root`` loop: one item at a time.

Each root is expanded to chunks by rejection sampling (draw from pure noise, score at
t = 0, accept below the threshold, at most ``max_tries`` draws, else keep the lowest
energy), then each real chunk to characters the same way, depth first, on a canvas of the
length the level above predicted. Items are numbered in the same left-to-right order as the
flood's, so given the same seed both see the same noise: this is the reference the floods
are tested against.
"""

from __future__ import annotations

import torch

from ..models.flops import top_length_flops
from .base import Decoder
from .canvas import Work, draw, score
from .result import LevelStats, RenderResult


class SequentialDecoder(Decoder):
    name = "sequential"

    @torch.no_grad()
    def _rejection(self, level: int, cond: int, item: int, length, stats: LevelStats):
        opts = self.options
        c = torch.tensor([cond], device=self.device)
        it = torch.tensor([item], device=self.device)
        ln = None if length is None else torch.tensor([length], device=self.device)
        best, best_e = None, float("inf")
        work = Work()
        for d in range(opts.max_tries):
            cand = draw(self.model, level, c, it, torch.tensor([d], device=self.device), ln, opts.seed,
                        opts.temperature, work=work)
            e = float(score(self.model, level, c, cand.tokens, ln, work=work)[0])  # one sync per try
            if e < best_e:
                best, best_e = cand, e
            if e < opts.threshold:
                break
        stats.items += 1
        stats.draws += work.draws
        stats.passes += work.passes
        stats.positions += work.positions
        stats.flops += work.flops
        stats.accepted += best_e < opts.threshold
        stats.energy_sum += best_e
        child = None if best.child_lengths is None else best.child_lengths[0].tolist()
        return best.tokens[0].tolist(), child, best_e

    @torch.no_grad()
    def render(self, root_ids, offsets=None) -> RenderResult:
        roots = self._roots_tensor(root_ids).tolist()
        n_levels = self.model.num_levels
        stats = [LevelStats(scored=True) for _ in range(n_levels)]
        counts = [[] for _ in range(n_levels)]
        energies = [[] for _ in range(n_levels)]
        next_item = [0] * n_levels if offsets is None else [int(o) for o in offsets]
        if len(next_item) != n_levels:
            raise ValueError(f"offsets must give one start per level ({n_levels})")
        out: list[int] = []

        def visit(level: int, cond: int, length) -> None:
            sel, child, e = self._rejection(level, cond, next_item[level], length, stats[level])
            next_item[level] += 1
            pad = self.model.pad_id(level)
            keep = [i for i, x in enumerate(sel) if x != pad]
            counts[level].append(len(keep))
            energies[level].append(e)
            if level == n_levels - 1:
                out.extend(sel[i] for i in keep)
            else:
                for i in keep:
                    visit(level + 1, sel[i], None if child is None else child[i])

        top = [None] * len(roots)
        if self.model.has_top_lengths and roots:  # the roots' lengths, as the flood reads them
            top = self.model.top_lengths(torch.tensor(roots, device=self.device)).tolist()
            stats[0].flops += top_length_flops(self.model.config, len(roots))
        for r, length in zip(roots, top):
            visit(0, r, length)
        for s in stats:
            s.rounds = s.items
        return RenderResult(torch.tensor(out, dtype=torch.long),
                            [torch.tensor(c, dtype=torch.long) for c in counts], self.alphabet,
                            stats, [torch.tensor(e) for e in energies])
