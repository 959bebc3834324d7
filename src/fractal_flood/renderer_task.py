"""What one renderer training step computes: the denoising and energy losses of every
level on a fresh batch, and the validation that reports exact expansion and detection."""

from __future__ import annotations

import torch

from .distributed import piece_slice
from .losses import diffusion_loss, energy_loss
from .noise import corrupt
from .pairs import level_tables, sample_conditions, wrong_pairs


class RendererTask:
    """Per step, the batch is split evenly over the levels. Each level's share is one
    forward of three groups: noisy targets at random t (denoising cross-entropy), and at
    t = 0 the clean right expansion (energy -> 0) and a wrong one (energy -> 1)."""

    def __init__(self, model, tokenizer, batch, energy_weight, device, gen):
        self.model, self.device, self.gen = model, device, gen
        self.tables = [t.to(device) for t in level_tables(tokenizer)]
        self.per_level = max(2, batch // len(self.tables))
        self.energy_weight = energy_weight
        self.T = model.config.timesteps

    best = None  # the renderer learns a table: the latest weights are the best

    def improved(self, metrics: dict) -> bool:
        return True

    def draw(self) -> list[tuple]:
        """The step's batch, per level: conditions (n,), their right expansions (n, L), noise
        steps (n,), noisy targets (n, L) and wrong expansions (n // 2, L) of the first half."""
        out = []
        for table in self.tables:
            n, e = self.per_level, self.per_level // 2
            cond = sample_conditions(table, n, self.gen)  # (n,)
            right = table.targets[cond]  # (n, L)
            t = torch.randint(0, self.T, (n,), device=self.device, generator=self.gen)
            noisy = corrupt(right, t, self.T, table.num_classes, self.gen)
            wrong = wrong_pairs(table, cond[:e], self.gen)
            out.append((cond, right, t, noisy, wrong))
        return out

    def loss(self, batch: list[tuple], piece: int = 0, pieces: int = 1):
        """The losses on piece ``piece`` of ``pieces`` equal parts of every group."""
        total, logs = 0.0, {}
        for level, (cond, right, t, noisy, wrong) in enumerate(batch):
            d = piece_slice(len(cond), piece, pieces)  # denoising group
            g = piece_slice(len(wrong), piece, pieces)  # energy group: right and wrong alike
            e_cond, e_right, wrong = cond[g], right[g], wrong[g]  # g lies in the first half
            cond, right, t, noisy = cond[d], right[d], t[d], noisy[d]
            n, e = len(cond), len(e_cond)
            cond_all = torch.cat([cond, e_cond, e_cond])
            tgt_all = torch.cat([noisy, e_right, wrong])
            t_all = torch.cat([t, torch.zeros(2 * e, dtype=torch.long, device=self.device)])
            logits, energy = self.model(level, cond_all, tgt_all, t_all)
            ce = diffusion_loss(logits[:n], right)
            labels = torch.cat([torch.zeros(e), torch.ones(e)]).to(self.device)
            en = energy_loss(energy[n:], labels)
            total = total + ce + self.energy_weight * en
            logs[f"ce{level}"] = ce.detach()  # tensors: no host sync per step
            logs[f"en{level}"] = en.detach()
        return total, logs

    @torch.no_grad()
    def validate(self, n: int = 512) -> dict:
        """Exact expansion from pure noise (argmax, K = 1) and energy separation, per level."""
        out = {}
        g = torch.Generator(device=self.device)
        g.manual_seed(1234)
        for level, table in enumerate(self.tables):
            cond = sample_conditions(table, n, g)
            right = table.targets[cond]
            noise = torch.randint(0, table.num_classes, right.shape, device=self.device, generator=g)
            t = torch.full((n,), self.T - 1, device=self.device, dtype=torch.long)
            pred = self.model.denoise(level, cond, noise, t).argmax(-1)
            out[f"exact{level}"] = (pred == right).all(-1).float().mean().item()
            e_right = self.model.energy(level, cond, right)
            e_wrong = self.model.energy(level, cond, wrong_pairs(table, cond, g))
            out[f"detect{level}"] = (e_wrong > e_right).float().mean().item()
        return out
