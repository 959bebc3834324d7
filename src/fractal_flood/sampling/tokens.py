"""Token sampling with no host synchronisation: temperature, top-k, top-p, per row.

Everything is a fixed sequence of tensor ops on (B, V) logits: no ``.item()``, no
``nonzero``, no Python loop over rows. So ``sample`` can run inside a captured CUDA graph
and never stalls the host, which can go on queueing other GPU work.

The draw is by inversion: one uniform ``u`` per row picks the token whose slice of the
cumulative distribution holds ``u`` (``searchsorted`` on the cumulative sum), which is
distributed exactly as ``p`` and never picks a token of probability 0. The uniform is
counter-based (the murmur3 finaliser of ``draws.py``): row ``b`` at step ``s`` sees a
number that depends only on ``(seeds[b], steps[b])``, never on the other rows, so a
request gives the same tokens alone or batched with any others (``engine.py``), and every
row may carry its own temperature, top-k and top-p (:class:`RowSampling`).

Cost: one hash per row, a softmax, a cumulative sum and a binary search; for a small CPU
batch the hash runs on Python integers and the search on NumPy (``host_inversion``), the
same numbers with fewer operator calls. The top-k/top-p filter needs a sort over the
vocabulary, the dearest op here, so it runs only when a row asks for one
(``RowSampling.filters``, a host flag). Racing one exponential per token instead (V hashes
per row) with a sort on every draw costs several times as much per manager step at batch 1
on the CPU (measured in docs/log/notebook.md, "Sampling cost").
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from . import host_inversion
from .config import MAX_SEED, SEED_LIMIT, SamplingConfig, check_seed  # noqa: F401 (re-exported)
from .draws import row_hash


class RowSampling:
    """Per-row sampling settings as (B,) tensors: temperature, top_k (0 = off), top_p (1 = off).

    ``filters`` is a host flag: False promises that no row has top-k or top-p on, so
    ``sample`` skips the filter's sort (its output is the same either way, tested). A
    caller that edits the tensors in place keeps the flag true whenever a row filters.
    """

    def __init__(self, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                 filters: bool = True):
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.filters = filters

    @classmethod
    def of(cls, configs: Sequence[SamplingConfig], device=None) -> "RowSampling":
        return cls(torch.tensor([c.temperature for c in configs], dtype=torch.float32, device=device),
                   torch.tensor([c.top_k or 0 for c in configs], dtype=torch.long, device=device),
                   torch.tensor([1.0 if c.top_p is None else c.top_p for c in configs],
                                dtype=torch.float32, device=device),
                   filters=any(c.filters for c in configs))

    def divisors(self) -> torch.Tensor:
        """(B,) what each row's logits are divided by: its temperature, 1 for a greedy row
        (argmax either way; ``host_inversion.divisors`` is the host form)."""
        t = self.temperature
        return torch.where(t > 0, t, torch.ones_like(t))

    def rows(self, index) -> "RowSampling":
        return RowSampling(self.temperature[index], self.top_k[index], self.top_p[index],
                           self.filters)


HOST_HASH_ROWS = 64  # up to this many CPU rows, row_uniform hashes with Python integers


def row_uniform(seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """(B,) seeds, (B,) steps -> (B,) float32 uniforms in (0, 1]: 24 bits of a hash of
    (seed, step), plus a half, over 2**24, rounded to float32 (in the upper half the half
    rounds to even, and 1.0 itself comes once in 2**24 draws; ``invert_cdf`` keeps the
    target below the total, so no draw falls off the end).

    Small CPU batches hash with Python integers (``_row_uniform_host``): the ~20 tiny
    tensor ops would be most of a batch-1 draw (measured in docs/log/notebook.md). Bit for bit the
    same numbers (tested); elsewhere (a GPU, a CUDA graph, big batches) the tensor ops run."""
    if seeds.device.type == "cpu" and steps.device.type == "cpu" and seeds.numel() <= HOST_HASH_ROWS:
        return _row_uniform_host(seeds, steps)
    return _row_uniform_tensor(seeds, steps)


def _row_uniform_tensor(seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    return ((row_hash(seeds, steps) >> 8).float() + 0.5) * (1.0 / (1 << 24))


def _row_uniform_host(seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(host_uniforms(seeds, steps))


def host_uniforms(seeds: torch.Tensor, steps: torch.Tensor) -> np.ndarray:
    """``row_uniform``'s numbers as a float32 NumPy array, for CPU tensors."""
    # seeds are non-negative: the same bits as Python ints; the float is exact in float64
    # and rounded once to float32, as the tensor path's float32 sum rounds it
    return np.array([((row_hash(s, t) >> 8) + 0.5) * (1.0 / (1 << 24))
                     for s, t in zip(seeds.tolist(), steps.tolist())], dtype=np.float32)


def scaled_logits(logits: torch.Tensor, rows: RowSampling) -> torch.Tensor:
    """(B, V) logits -> float32 logits / temperature, filtered only where a row asks for it."""
    if rows.filters:
        return filter_logits(logits, rows)
    return logits.float() / rows.divisors()[:, None]


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """(B, V) probabilities (exact zeros allowed, rows need not sum to 1), (B,) uniforms in
    (0, 1) -> (B,) ids: the token whose cumulative-probability slice holds ``u``.

    A token of probability 0 owns an empty slice, so it is never drawn: the target is kept
    strictly below the total, and ``searchsorted(right=True)`` returns the first token
    whose cumulative sum exceeds it.
    """
    return invert_cdf(probs.cumsum(-1), u)  # non-decreasing: adding non-negative floats never lowers a sum


def invert_cdf(cdf: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``inverse_cdf`` from a cumulative sum already taken: (B, V) cdf, (B,) u -> (B,) ids."""
    return invert_target(cdf, u)[0][:, 0]


def invert_target(cdf: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, V) cdf, (B,) u -> ((B, 1) ids, (B, 1) targets): the target is ``u`` times the
    row's total, kept strictly below it, and the id is the first whose cdf exceeds it
    (``host_inversion.invert`` is this on the host, bit for bit)."""
    total = cdf[:, -1:]
    target = torch.minimum(u[:, None] * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True), target


def filter_logits(logits: torch.Tensor, rows: RowSampling) -> torch.Tensor:
    """(B, V) logits -> (B, V) float32 logits / temperature with filtered tokens at -inf.

    Top-k keeps every token at least as likely as the k-th (ties kept); top-p then keeps the
    smallest prefix of the remaining tokens whose probability reaches p (the most likely
    token always stays). Both come from one descending sort.
    """
    V = logits.size(-1)
    logits = logits.float() / rows.divisors()[:, None]
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    k = torch.where(rows.top_k > 0, rows.top_k.clamp(max=V), torch.full_like(rows.top_k, V))
    kth = sorted_logits.gather(1, (k - 1)[:, None])  # (B, 1)
    sorted_logits = sorted_logits.masked_fill(sorted_logits < kth, float("-inf"))
    probs = sorted_logits.softmax(-1)
    mass_before = probs.cumsum(-1) - probs  # probability of all more likely tokens
    drop_sorted = (mass_before >= rows.top_p[:, None]) & (rows.top_p[:, None] < 1)
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocab order
    return logits.masked_fill(drop | (logits < kth), float("-inf"))


HOST_DRAW_ROWS = 32  # up to this many CPU rows, a draw inverts its cdf on the host (measured faster)


def on_host(x: torch.Tensor) -> bool:
    """Whether a draw over (B, ...) ``x`` inverts on the host (``host_inversion``): a CPU
    tensor of at most ``HOST_DRAW_ROWS`` rows (a single stream, a small server batch); the
    same ids bit for bit."""
    return x.device.type == "cpu" and x.size(0) <= HOST_DRAW_ROWS


def sample(logits: torch.Tensor, rows: RowSampling | SamplingConfig, seeds: torch.Tensor,
           steps: torch.Tensor) -> torch.Tensor:
    """(B, V) logits -> (B,) long ids; row b's draw depends only on (seeds[b], steps[b])."""
    if isinstance(rows, SamplingConfig):
        if rows.greedy:
            return logits.argmax(-1)
        rows = RowSampling.of([rows] * logits.size(0), logits.device)
    if on_host(logits):
        return _sample_host(logits, rows, seeds, steps)
    probs = scaled_logits(logits, rows).softmax(-1)  # (B, V), filtered tokens exactly 0
    drawn = inverse_cdf(probs, row_uniform(seeds, steps))
    return torch.where(rows.temperature > 0, drawn, logits.argmax(-1))


def _sample_host(logits: torch.Tensor, rows: RowSampling, seeds: torch.Tensor,
                 steps: torch.Tensor) -> torch.Tensor:
    """``sample`` with the inversion on the host: the same ids, fewer operator calls."""
    temps = rows.temperature.tolist()
    if rows.filters:
        scaled = filter_logits(logits, rows)
    else:
        scaled = logits.float() / host_inversion.divisors(temps, logits.device)
    ids, _ = host_inversion.invert(host_inversion.host_view(scaled.softmax(-1).cumsum(-1)),
                                   host_uniforms(seeds, steps))
    if not all(t > 0 for t in temps):
        ids = np.where(host_inversion.host_view(rows.temperature) > 0, ids, logits.argmax(-1).numpy())
    return torch.from_numpy(ids)
