"""What one renderer training step computes: the denoising, length and energy losses of
every level on a fresh batch, and the validation that reports exact expansion and detection.

Canvases are trained as they are decoded (renderer.py): the top level on all its slots with
pads as a class, every lower level on exactly its real slots (the rest masked out), trimmed
to the longest item of the piece.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..corpus.expansions import canvas_lengths, level_tables, sample_conditions, wrong_pairs
from .distributed import piece_slice
from .losses import diffusion_loss, energy_loss
from .noise import corrupt


@dataclass
class LevelBatch:
    """One level's share of a step. The first ``len(wrong)`` conditions also form the energy
    group: their right expansion (energy -> 0) and a wrong one (energy -> 1)."""

    cond: torch.Tensor  # (n,)
    right: torch.Tensor  # (n, L) clean expansions
    t: torch.Tensor  # (n,) noise steps
    noisy: torch.Tensor  # (n, L)
    wrong: torch.Tensor  # (e, L)
    wrong_len: torch.Tensor  # (e,)
    lengths: Optional[torch.Tensor]  # (n,) real slots on packed levels, None at the top
    child: Optional[torch.Tensor]  # (n, L) the length head's targets, None above the bottom
    slots: int  # real target slots of the whole level batch: the token loss's denominator


FIDELITY_BAR = 0.999  # render fidelity per level: the bar of docs/DESIGN.md


def _slots_mask(lengths: torch.Tensor, L: int) -> torch.Tensor:
    return torch.arange(L, device=lengths.device).view(1, L) < lengths.view(-1, 1)


class RendererTask:
    """Per step, the batch is split evenly over the levels. Each level's share is one
    forward of three groups: noisy targets at random t (denoising and length
    cross-entropies), and at t = 0 the clean right expansion (energy -> 0) and a wrong one
    (energy -> 1)."""

    def __init__(self, model, tokenizer, batch, energy_weight, device, gen):
        self.model, self.device, self.gen = model, device, gen
        self.tables = [t.to(device) for t in level_tables(tokenizer, model.has_top_lengths)]
        self.per_level = max(2, batch // len(self.tables))
        self.energy_weight = energy_weight
        self.T = model.config.timesteps
        self.groups = 4  # passes per packed level: rows sorted by length, canvases trimmed

    best = None  # the renderer learns a table: the latest weights are the best

    def improved(self, metrics: dict) -> bool:
        return True

    def below_bar(self, metrics: dict) -> str | None:
        """Why the validation ``metrics`` miss the renderer's bar (render fidelity from pure
        noise below 99.9% at some level), or None."""
        low = [f"{k}={v:.4f}" for k, v in metrics.items() if k.startswith("exact") and not v >= FIDELITY_BAR]
        return f"render fidelity {', '.join(low)}, under the {FIDELITY_BAR:.1%} bar" if low else None

    def draw(self) -> list[LevelBatch]:
        """The step's whole batch (the same on every rank; each takes its pieces)."""
        out = []
        for table in self.tables:
            n, e = self.per_level, self.per_level // 2
            cond = sample_conditions(table, n, self.gen)  # (n,)
            right = table.targets[cond]  # (n, L)
            t = torch.randint(0, self.T, (n,), device=self.device, generator=self.gen)
            noisy = corrupt(right, t, self.T, table.num_classes, self.gen)
            wrong, wrong_len = wrong_pairs(table, cond[:e], self.gen)
            lengths = canvas_lengths(table, cond)
            child = None if table.child_lengths is None else table.child_lengths[cond]
            slots = right.numel() if lengths is None else int(lengths.sum())
            out.append(LevelBatch(cond, right, t, noisy, wrong, wrong_len, lengths, child, slots))
        return out

    def loss(self, batch: list[LevelBatch], piece: int = 0, pieces: int = 1):
        """The losses on piece ``piece`` of ``pieces`` equal parts of every group. The token
        losses are summed over the piece's real slots and divided by the whole batch's share
        per piece, so the mean over the pieces is exactly the whole batch's loss."""
        total, logs = 0.0, {}
        for level, b in enumerate(batch):
            d = piece_slice(len(b.cond), piece, pieces)  # denoising group
            g = piece_slice(len(b.wrong), piece, pieces)  # energy group: right and wrong alike
            cond, right, t, noisy = b.cond[d], b.right[d], b.t[d], b.noisy[d]
            child = None if b.child is None else b.child[d]
            e_cond, e_right, wrong = b.cond[g], b.right[g], b.wrong[g]
            n, e = len(cond), len(e_cond)
            cond_all = torch.cat([cond, e_cond, e_cond])
            tgt_all = torch.cat([noisy, e_right, wrong])
            t_all = torch.cat([t, torch.zeros(2 * e, dtype=torch.long, device=self.device)])
            per_piece = b.slots / pieces
            if b.lengths is None:  # the top level: one padded canvas, pads are a class
                logits, len_logits, energy = self.model(level, cond_all, tgt_all, t_all)
                ce = diffusion_loss(logits[:n], right, None, per_piece)
                ln = None if len_logits is None else diffusion_loss(len_logits[:n], child, None, per_piece)
            else:
                len_all = torch.cat([b.lengths[d], b.lengths[g], b.wrong_len[g]])
                ce, ln, energy = self._packed(level, cond_all, tgt_all, t_all, len_all, right, child, n)
                ce, ln = ce / per_piece, None if ln is None else ln / per_piece
            labels = torch.cat([torch.zeros(e), torch.ones(e)]).to(self.device)
            en = energy_loss(energy[n:], labels)
            total = total + ce + self.energy_weight * en
            logs[f"ce{level}"] = ce.detach()  # tensors: no host sync per step
            logs[f"en{level}"] = en.detach()
            if ln is not None:
                total = total + ln
                logs[f"len{level}"] = ln.detach()
            if level == 0 and self.model.has_top_lengths:  # each root's number of children
                top = F.cross_entropy(self.model.top_length_logits(cond).float(), b.lengths[d],
                                      reduction="sum") / (len(b.cond) / pieces)
                total = total + top
                logs["len_top"] = top.detach()
        return total, logs

    def _packed(self, level, cond, tgt, t, lengths, right, child, n):
        """A packed level in ``groups`` passes of rows sorted by length, each canvas trimmed
        to its group's longest row (as the flood decodes them). -> (summed token loss over
        the real slots of the first ``n`` rows, summed length loss or None, energies (R,))."""
        R = cond.shape[0]
        order = torch.argsort(lengths)
        energy = torch.empty(R, device=self.device)
        ce = ln = 0.0
        has_len = self.model.has_length_head(level)
        for idx in order.chunk(self.groups):
            if idx.numel() == 0:
                continue
            ln_g = lengths[idx]
            L = max(1, int(ln_g.max()))  # one host sync per group
            logits, len_logits, e = self.model(level, cond[idx], tgt[idx, :L], t[idx], ln_g)
            energy[idx] = e.float()
            dn = idx < n  # rows of the denoising group
            valid = _slots_mask(ln_g[dn], L)
            r = right[idx[dn], :L]
            ce = ce + diffusion_loss(logits[dn], r, valid, 1.0)
            if has_len:
                ln = ln + diffusion_loss(len_logits[dn], child[idx[dn], :L], valid, 1.0)
        return ce, (ln if has_len else None), energy

    @torch.no_grad()
    def validate(self, n: int = 512) -> dict:
        """Exact expansion from pure noise (argmax, K = 1: the tokens and, where the level
        has a length head, every child's length) and energy separation, per level."""
        out = {}
        g = torch.Generator(device=self.device)
        g.manual_seed(1234)
        for level, table in enumerate(self.tables):
            cond = sample_conditions(table, n, g)
            right = table.targets[cond]
            lengths = canvas_lengths(table, cond)
            noise = torch.randint(0, table.num_classes, right.shape, device=self.device, generator=g)
            t = torch.full((n,), self.T - 1, device=self.device, dtype=torch.long)
            logits, len_logits = self.model.denoise(level, cond, noise, t, lengths)
            ok = logits.argmax(-1) == right
            if len_logits is not None:
                ok &= len_logits.argmax(-1) == table.child_lengths[cond]
            if lengths is not None:  # only the real slots exist on packed levels
                ok |= ~_slots_mask(lengths, right.shape[1])
            if level == 0 and self.model.has_top_lengths:  # and the roots' lengths are predicted
                ok &= (self.model.top_lengths(cond) == lengths)[:, None]
            out[f"exact{level}"] = ok.all(-1).float().mean().item()
            e_right = self.model.energy(level, cond, right, lengths)
            wrong, wrong_len = wrong_pairs(table, cond, g)
            e_wrong = self.model.energy(level, cond, wrong, None if lengths is None else wrong_len)
            out[f"detect{level}"] = (e_wrong > e_right).float().mean().item()
        return out
