"""What one renderer training step computes: the denoising, length and energy losses of
every level on a fresh batch, and the validation that reports exact expansion and detection.

Canvases are trained as they are decoded (renderer.py): the top level on all its slots with
pads as a class, every lower level on exactly its real slots (the rest masked), trimmed to
the longest item of the batch.
"""

from __future__ import annotations

import torch

from .losses import diffusion_loss, energy_loss
from .noise import corrupt
from .pairs import canvas_lengths, level_tables, sample_conditions, wrong_pairs


def _cat(parts):
    return None if parts[0] is None else torch.cat(parts)


class RendererTask:
    """Per step, the batch is split evenly over the levels. Each level's share is one
    forward of three groups: noisy targets at random t (denoising and length
    cross-entropies), and at t = 0 the clean right expansion (energy -> 0) and a wrong one
    (energy -> 1)."""

    def __init__(self, model, tokenizer, batch, energy_weight, device, gen):
        self.model, self.device, self.gen = model, device, gen
        self.tables = [t.to(device) for t in level_tables(tokenizer)]
        self.per_level = max(2, batch // len(self.tables))
        self.energy_weight = energy_weight
        self.T = model.config.timesteps

    best = None  # the renderer learns a table: the latest weights are the best

    def improved(self, metrics: dict) -> bool:
        return True

    @staticmethod
    def _trim(lengths, *xs):
        """Cut packed canvases to the longest item of the batch (one host sync)."""
        if lengths is None:
            return xs
        n = max(1, int(lengths.max()))
        return tuple(None if x is None else x[:, :n] for x in xs)

    def loss(self):
        total, logs = 0.0, {}
        for level, table in enumerate(self.tables):
            n, e = self.per_level, self.per_level // 2
            cond = sample_conditions(table, n, self.gen)  # (n,)
            right = table.targets[cond]  # (n, L)
            child = None if table.child_lengths is None else table.child_lengths[cond]  # (n, L)
            lengths = canvas_lengths(table, cond)  # (n,) or None at the top
            t = torch.randint(0, self.T, (n,), device=self.device, generator=self.gen)
            noisy = corrupt(right, t, self.T, table.num_classes, self.gen)
            wrong, wrong_len = wrong_pairs(table, cond[:e], self.gen)
            cond_all = torch.cat([cond, cond[:e], cond[:e]])
            len_all = _cat([lengths, None if lengths is None else lengths[:e], None if lengths is None else wrong_len])
            tgt_all = torch.cat([noisy, right[:e], wrong])
            t_all = torch.cat([t, torch.zeros(2 * e, dtype=torch.long, device=self.device)])
            tgt_all, right, child = self._trim(len_all, tgt_all, right, child)
            logits, len_logits, energy = self.model(level, cond_all, tgt_all, t_all, len_all)
            valid = None
            if lengths is not None:
                valid = torch.arange(right.shape[1], device=self.device).view(1, -1) < lengths.view(-1, 1)
            ce = diffusion_loss(logits[:n], right, valid)
            labels = torch.cat([torch.zeros(e), torch.ones(e)]).to(self.device)
            en = energy_loss(energy[n:], labels)
            total = total + ce + self.energy_weight * en
            logs[f"ce{level}"] = ce.detach()  # tensors: no host sync per step
            logs[f"en{level}"] = en.detach()
            if len_logits is not None:
                ln = diffusion_loss(len_logits[:n], child, valid)
                total = total + ln
                logs[f"len{level}"] = ln.detach()
        return total, logs

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
            pred = logits.argmax(-1)
            ok = pred == right
            if len_logits is not None:
                ok &= len_logits.argmax(-1) == table.child_lengths[cond]
            if lengths is not None:  # only the real slots exist below the top
                ok |= torch.arange(right.shape[1], device=self.device).view(1, -1) >= lengths.view(-1, 1)
            out[f"exact{level}"] = ok.all(-1).float().mean().item()
            e_right = self.model.energy(level, cond, right, lengths)
            wrong, wrong_len = wrong_pairs(table, cond, g)
            e_wrong = self.model.energy(level, cond, wrong, None if lengths is None else wrong_len)
            out[f"detect{level}"] = (e_wrong > e_right).float().mean().item()
        return out
