"""The plan's baseline, the original ``render_root`` loop: one item at a time.

Each root is expanded to chunks by rejection sampling (draw from pure noise, score at
t = 0, accept below the threshold, at most ``max_tries`` draws, else keep the lowest
energy), then each real chunk to characters the same way, depth first. Items are numbered
in the same left-to-right order as the flood's, so given the same seed both see the same
noise: this is the reference the flood is tested against.
"""

from __future__ import annotations

import torch

from .base import Decoder
from .result import LevelStats, RenderResult


class SequentialDecoder(Decoder):
    name = "sequential"

    @torch.no_grad()
    def _rejection(self, level: int, cond: int, item: int, stats: LevelStats):
        opts = self.options
        c = torch.tensor([cond], device=self.device)
        it = torch.tensor([item], device=self.device)
        best, best_e = None, float("inf")
        for d in range(opts.max_tries):
            cand, e = self.expander.draw_and_score(level, c, it, torch.tensor([d], device=self.device))
            e = float(e[0])  # the accept test needs the value: one sync per try, inherent
            stats.draws += 1
            stats.passes += 2
            if e < best_e:
                best, best_e = cand[0], e
            if e < opts.threshold:
                break
        stats.items += 1
        stats.accepted += best_e < opts.threshold
        stats.energy_sum += best_e
        return best.tolist(), best_e

    @torch.no_grad()
    def render(self, root_ids) -> RenderResult:
        roots = self._roots_tensor(root_ids).tolist()
        n_levels = self.model.num_levels
        stats = [LevelStats() for _ in range(n_levels)]
        counts = [[] for _ in range(n_levels)]
        energies = [[] for _ in range(n_levels)]
        next_item = [0] * n_levels
        out: list[int] = []

        def visit(level: int, cond: int) -> None:
            sel, e = self._rejection(level, cond, next_item[level], stats[level])
            next_item[level] += 1
            pad = self.model.pad_id(level)
            children = [x for x in sel if x != pad]
            counts[level].append(len(children))
            energies[level].append(e)
            if level == n_levels - 1:
                out.extend(children)
            else:
                for child in children:
                    visit(level + 1, child)

        for r in roots:
            visit(0, r)
        for s in stats:
            s.rounds = s.items
        return RenderResult(torch.tensor(out, dtype=torch.long),
                            [torch.tensor(c, dtype=torch.long) for c in counts], self.alphabet,
                            stats, [torch.tensor(e) for e in energies])
