"""How a flood chooses among candidates: pure functions over one level's items.

Each takes the items of one level (conditions, their item numbers and canvas lengths) and
returns a :class:`Choice`: the chosen expansion, its children's lengths, its energy (None
where nothing needed one) and the work done. Best-of-K is a ``view(N, K)``, an ``argmin``
and a ``gather``; at K = 1 with no energies asked for it is one denoising pass and nothing
else. The adaptive flood runs the sequential decoder's rule (accept below the threshold,
at most ``max_tries`` draws, else the lowest energy) in parallel rounds, re-flooding only
the rejects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..models.renderer import FractalDiffusionModel
from .canvas import Work, draw, score


@dataclass
class Choice:
    tokens: torch.Tensor  # (N, L) chosen child ids, pads past each item's children
    child_lengths: Optional[torch.Tensor]  # (N, L) or None at the bottom
    energy: Optional[torch.Tensor]  # (N,) float32, None if no energy pass ran
    work: Work
    rounds: int = 1


def best_of_k(model: FractalDiffusionModel, level: int, cond: torch.Tensor, items: torch.Tensor,
              lengths: Optional[torch.Tensor], k: int, seed, temperature: float,
              need_energy: bool, packed: bool = True, max_batch: int = 65536) -> Choice:
    """K candidates per item (draws 0..K-1), keep the lowest energy. ``seed``: an int, or
    (N,) seeds, one per item."""
    work = Work()
    N = cond.shape[0]
    if k == 1:
        d = draw(model, level, cond, items, torch.zeros_like(items), lengths, seed, temperature,
                 packed, max_batch, work)
        e = score(model, level, cond, d.tokens, lengths, packed, max_batch, work) if need_energy else None
        return Choice(d.tokens, d.child_lengths, e, work)
    rep = lambda x: None if x is None else x.repeat_interleave(k)  # noqa: E731
    draw_ids = torch.arange(k, device=cond.device).repeat(N)  # (N * K,)
    seeds = rep(seed) if isinstance(seed, torch.Tensor) else seed
    d = draw(model, level, rep(cond), rep(items), draw_ids, rep(lengths), seeds, temperature,
             packed, max_batch, work)
    e = score(model, level, rep(cond), d.tokens, rep(lengths), packed, max_batch, work).view(N, k)
    best = e.argmin(dim=1)  # (N,)
    rows = torch.arange(N, device=cond.device) * k + best
    child = None if d.child_lengths is None else d.child_lengths[rows]
    return Choice(d.tokens[rows], child, e.gather(1, best.unsqueeze(1)).squeeze(1), work)


def adaptive(model: FractalDiffusionModel, level: int, cond: torch.Tensor, items: torch.Tensor,
             lengths: Optional[torch.Tensor], threshold: float, max_tries: int, seed,
             temperature: float, packed: bool = True, max_batch: int = 65536) -> Choice:
    """Rejection sampling in parallel rounds: round d draws try d for every pending item."""
    work = Work()
    N, L = cond.shape[0], model.max_lens[level]
    best = torch.full((N, L), model.pad_id(level), dtype=torch.long, device=cond.device)
    best_child = torch.zeros((N, L), dtype=torch.long, device=cond.device) \
        if model.has_length_head(level) else None
    best_e = torch.full((N,), float("inf"), device=cond.device)
    pending = torch.arange(N, device=cond.device)
    rounds = 0
    for d_try in range(max_tries):
        if pending.numel() == 0:
            break
        c, it = cond[pending], items[pending]
        ln = None if lengths is None else lengths[pending]
        s = seed[pending] if isinstance(seed, torch.Tensor) else seed
        d = draw(model, level, c, it, torch.full_like(it, d_try), ln, s, temperature, packed,
                 max_batch, work)
        e = score(model, level, c, d.tokens, ln, packed, max_batch, work)
        better = e < best_e[pending]
        best[pending] = torch.where(better.unsqueeze(1), d.tokens, best[pending])
        if best_child is not None:
            best_child[pending] = torch.where(better.unsqueeze(1), d.child_lengths, best_child[pending])
        best_e[pending] = torch.where(better, e, best_e[pending])
        rounds += 1
        pending = pending[e >= threshold]  # one host sync per round, not per item
    return Choice(best, best_child, best_e, work, rounds)
