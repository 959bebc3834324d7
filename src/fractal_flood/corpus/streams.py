"""Token streams for the language models: a corpus encoded to one level's ids (roots for
the manager, chunks for the AR peer), split into train and a held-out tail, and random
windows of it as next-token batches."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .shards import ShardedIds

# The held-out data, everywhere (training validation, eval, bench): the last 5% of the
# corpus's token stream. Defined here once.
HELDOUT_FRACTION = 0.05


@dataclass
class TokenStream:
    """A corpus encoded to one level's ids, split into train and a held-out tail. The ids
    are a tensor or, for a corpus larger than memory, a :class:`ShardedIds` (views, no copy)."""

    train: torch.Tensor | ShardedIds
    val: torch.Tensor | ShardedIds

    @classmethod
    def split(cls, ids, val_fraction: float = HELDOUT_FRACTION) -> "TokenStream":
        if not isinstance(ids, ShardedIds):
            ids = torch.as_tensor(ids, dtype=torch.long)
        n_val = max(1, int(len(ids) * val_fraction))
        return cls(ids[:len(ids) - n_val], ids[len(ids) - n_val:])


def random_starts(num_ids: int, batch: int, context: int, generator=None) -> torch.Tensor:
    """Starts of ``batch`` random windows of ``min(context, num_ids - 1) + 1`` ids. -> (B,)"""
    T = min(context, num_ids - 1)
    if T < 1:
        raise ValueError("token stream too short for a language-model batch")
    return torch.randint(0, num_ids - T, (batch,), generator=generator)


def windows(ids, starts: torch.Tensor, context: int):
    """The windows at ``starts`` -> inputs (B, T), next-token targets (B, T)."""
    T = min(context, len(ids) - 1)
    idx = starts.unsqueeze(1) + torch.arange(T + 1)  # (B, T + 1)
    win = ids[idx]
    return win[:, :-1], win[:, 1:]


def lm_batch(ids, batch: int, context: int, generator=None):
    """Random windows of ``context + 1`` tokens -> inputs (B, T), next-token targets (B, T)."""
    return windows(ids, random_starts(len(ids), batch, context, generator), context)
