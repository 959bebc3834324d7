"""The two renderer passes every decoder is made of, on canvases sized to the text.

``draw`` turns noise into candidate expansions in one denoising pass at ``t = T - 1``;
``score`` gives their energies in one pass at ``t = 0``. A draw for item ``i`` on try ``d``
starts from noise that depends only on ``(seed, level, i, d)`` (``draws.py``), whatever
batch it sits in, so any two decoders that send the same (item, try) get the same candidate.
``seed`` is an int shared by all items, or a (B,) tensor: one per item, so one pass can
serve several requests, each drawing what it draws alone.

Packing: the top level's canvas has all its ``max_children`` slots (its length is what the
model predicts). Below it each item has a known length, and ``packed=True`` sorts the items
by length and runs one pass per length on exactly that many slots: no padding at all. The
reference (``packed=False``) pads every canvas to the level's maximum and masks the pad
slots out of attention: the same computation, many more FLOPs. Both are tested to agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..models import renderer_kernels
from ..models.flops import renderer_pass_flops
from ..models.renderer import FractalDiffusionModel
from ..sampling import draws


@dataclass
class Work:
    """What the passes of one level cost: the bench's FLOPs per token come from here."""

    passes: int = 0  # batched forward passes
    draws: int = 0  # candidates drawn
    positions: int = 0  # canvas positions computed (condition included)
    flops: int = 0  # matrix FLOPs, counted from shapes (flops.py)

    def add(self, other: "Work") -> None:
        for k in self.__dict__:
            setattr(self, k, getattr(self, k) + getattr(other, k))


@dataclass
class Draw:
    tokens: torch.Tensor  # (B, L) child ids; slots beyond an item's length hold the pad
    child_lengths: Optional[torch.Tensor]  # (B, L) children of each child, None at the bottom


def _groups(lengths: Optional[torch.Tensor], B: int, L: int, packed: bool, max_batch: int, device):
    """-> [(row indices, or None for the whole batch; canvas slots; mask lengths or None)]."""
    if lengths is None or not packed:  # the full canvas: the top level, or the padded reference
        if B <= max_batch:
            return [(None, L, lengths)]
        return [(torch.arange(s, min(B, s + max_batch), device=device), L, lengths)
                for s in range(0, B, max_batch)]
    order = torch.argsort(lengths, stable=True)
    counts = torch.bincount(lengths, minlength=L + 1).tolist()  # one host sync per level
    out, start = [], 0
    for n, c in enumerate(counts):
        for s in range(start, start + c, max_batch):
            out.append((order[s:min(start + c, s + max_batch)], n, None))
        start += c
    return out


def _add_pass(work: Work, model, level: int, b: int, n: int, energy: bool, length_head: bool) -> None:
    """One pass over b canvases of 1 + n positions, into ``work``."""
    work.passes += 1
    work.positions += b * (1 + n)
    work.flops += renderer_pass_flops(model.config, level, b, 1 + n, energy=energy, length_head=length_head)


def _count(work: Work, model, level: int, lengths: Optional[torch.Tensor], B: int, L: int, max_batch: int,
           has_len: bool) -> None:
    """What the packed draw's passes (``_groups``) add to ``work``, from the lengths alone."""
    per = [(L, B)] if lengths is None else enumerate(torch.bincount(lengths, minlength=L + 1).tolist())
    for n, c in per:
        if n == 0 or c == 0:
            continue
        for s in range(0, c, max_batch):
            _add_pass(work, model, level, min(c - s, max_batch), n, False, has_len)
    work.draws += B


def _take(x: Optional[torch.Tensor], rows):
    return x if x is None or rows is None else x[rows]


def _take_seed(seed, rows):
    return _take(seed, rows) if isinstance(seed, torch.Tensor) else seed


@torch.no_grad()
def draw(model: FractalDiffusionModel, level: int, cond: torch.Tensor, item: torch.Tensor,
         draw_id: torch.Tensor, lengths: Optional[torch.Tensor], seed, temperature: float,
         packed: bool = True, max_batch: int = 65536, work: Optional[Work] = None) -> Draw:
    """cond, item, draw_id: (B,); lengths (B,) or None at the top -> candidates (B, L)."""
    B, L, C = cond.shape[0], model.max_lens[level], model.num_classes(level)
    pad = model.pad_id(level)
    has_len = model.has_length_head(level)
    if temperature == 0 and (packed or lengths is None) and renderer_kernels.draw_wanted(model):
        # the whole level in one C call (models/renderer_kernels.py), canvases sized to the
        # lengths as the packed passes size them; the work counted as they count it
        noise = renderer_kernels.noise(seed, draws.NOISE_STREAM, level, item, draw_id, L, C)
        tokens, child, _ = renderer_kernels.draw(model, level, cond, noise, lengths)
        if work is not None:
            _count(work, model, level, lengths, B, L, max_batch, has_len)
        return Draw(tokens, child)
    noise = draws.randint(seed, draws.NOISE_STREAM, level, item, draw_id, (L,), C)  # (B, L)
    tokens = torch.full((B, L), pad, dtype=torch.long, device=cond.device)
    child = torch.zeros((B, L), dtype=torch.long, device=cond.device) if has_len else None
    t_noise = model.config.timesteps - 1
    for rows, n, mask_len in _groups(lengths, B, L, packed, max_batch, cond.device):
        b = B if rows is None else rows.shape[0]
        if n == 0 or b == 0:
            continue
        c, x = _take(cond, rows), _take(noise, rows)[:, :n]
        t = torch.full((b,), t_noise, dtype=torch.long, device=cond.device)
        logits, len_logits = model.denoise(level, c, x, t, _take(mask_len, rows))  # (b, n, C)
        if temperature == 0:
            pick = logits.argmax(-1)
        else:
            u = draws.uniform(_take_seed(seed, rows), draws.GUMBEL_STREAM, level, _take(item, rows),
                              _take(draw_id, rows), (L, C))[:, :n]
            pick = (logits.float() / temperature - torch.log(-torch.log(u))).argmax(-1)
        if len_logits is not None:
            # a real token has at least one child: class 0 is for pads only
            n_child = len_logits[..., 1:].argmax(-1) + 1  # (b, n)
        if rows is None:
            tokens[:, :n] = pick
            if has_len:
                child[:, :n] = n_child
        else:
            tokens[rows, :n] = pick
            if has_len:
                child[rows, :n] = n_child
        if work is not None:
            _add_pass(work, model, level, b, n, False, has_len)
    if lengths is not None:  # slots past an item's length are pads, whatever the reference computed
        beyond = torch.arange(L, device=cond.device).view(1, L) >= lengths.view(B, 1)
        tokens = tokens.masked_fill(beyond, pad)
    if has_len:
        child = child.masked_fill(tokens == pad, 0)
    if work is not None:
        work.draws += B
    return Draw(tokens, child)


@torch.no_grad()
def score(model: FractalDiffusionModel, level: int, cond: torch.Tensor, cand: torch.Tensor,
          lengths: Optional[torch.Tensor], packed: bool = True, max_batch: int = 65536,
          work: Optional[Work] = None) -> torch.Tensor:
    """Energies (B,) float32 of candidates (B, L) at t = 0."""
    B, L = cand.shape
    energy = torch.empty((B,), dtype=torch.float32, device=cond.device)
    for rows, n, mask_len in _groups(lengths, B, L, packed, max_batch, cond.device):
        b = B if rows is None else rows.shape[0]
        if b == 0:
            continue
        e = model.energy(level, _take(cond, rows), _take(cand, rows)[:, :n], _take(mask_len, rows)).float()
        if rows is None:
            energy[:] = e
        else:
            energy[rows] = e
        if work is not None:
            _add_pass(work, model, level, b, n, True, False)
    return energy
