"""Token sampling with no host synchronisation: temperature, top-k, top-p.

Everything is a fixed sequence of tensor ops on (B, V) logits: no ``.item()``, no
``nonzero``, no Python loop over rows. So ``sample`` can run inside a captured CUDA graph
and never stalls the host, which can go on queueing other GPU work.

The draw is the exponential race: with E_i ~ Exponential(1) i.i.d., ``argmax_i p_i / E_i``
is distributed exactly as ``p`` (the Gumbel-max trick in disguise), and it needs one
random tensor of fixed shape, drawn from the caller's ``torch.Generator`` so a seed fixes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class SamplingConfig:
    """How to turn logits into a token. ``temperature == 0`` means argmax (no random draw)."""

    temperature: float = 1.0
    top_k: Optional[int] = None  # keep the k most likely tokens
    top_p: Optional[float] = None  # keep the smallest set whose probability reaches top_p

    def __post_init__(self):
        if not self.temperature >= 0:  # also rejects NaN
            raise ValueError(f"temperature must be >= 0 (0 = argmax), got {self.temperature}")
        if self.top_k is not None and (isinstance(self.top_k, bool) or int(self.top_k) != self.top_k
                                       or self.top_k < 1):
            raise ValueError(f"top_k must be an integer >= 1 or None, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] or None, got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def filter_logits(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """(B, V) logits -> (B, V) float32 logits / temperature with filtered tokens at -inf."""
    logits = logits.float() / cfg.temperature
    V = logits.size(-1)
    if cfg.top_k is not None and cfg.top_k < V:
        kth = torch.topk(logits, int(cfg.top_k), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p is not None and cfg.top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        probs = sorted_logits.softmax(-1)
        mass_before = probs.cumsum(-1) - probs  # probability of all more likely tokens
        drop_sorted = mass_before >= cfg.top_p  # the most likely token is always kept
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocab order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample(logits: torch.Tensor, cfg: SamplingConfig,
           generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(B, V) logits -> (B,) long token ids. Draws one (B, V) exponential tensor unless greedy."""
    if cfg.greedy:
        return logits.argmax(-1)
    probs = filter_logits(logits, cfg).softmax(-1)  # (B, V), filtered tokens exactly 0
    race = torch.empty_like(probs).exponential_(1.0, generator=generator)
    race.clamp_min_(torch.finfo(race.dtype).tiny)  # never divide by 0 (0/0 would be NaN)
    return (probs / race).argmax(-1)
