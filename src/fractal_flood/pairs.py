"""Training data as tensors: expansion pairs per level, wrong pairs for the energy head, and
token streams (roots for the manager, chunks for the AR peer) with a held-out tail.

The renderer learns a table (every root's chunks, every chunk's characters), so pairs are
drawn uniformly over each level's conditions: rare entries are seen as often as frequent
ones. Everything is batched tensor indexing; nothing loops over items in Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .shards import ShardedIds


@dataclass
class LevelTable:
    """All expansions of one level: targets (N, L) padded with ``pad_id``, lengths (N,)."""

    targets: torch.Tensor
    lengths: torch.Tensor
    pad_id: int

    @property
    def num_conditions(self) -> int:
        return self.targets.shape[0]

    @property
    def num_classes(self) -> int:
        return self.pad_id + 1

    def to(self, device) -> "LevelTable":
        return LevelTable(self.targets.to(device), self.lengths.to(device), self.pad_id)


def level_tables(tokenizer) -> list[LevelTable]:
    out = []
    for spec in tokenizer.levels:
        targets, lengths = tokenizer.expansion_table(spec.index)
        out.append(LevelTable(targets, lengths, spec.pad_id))
    return out


def sample_conditions(table: LevelTable, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n condition ids drawn uniformly over the whole table. -> (n,)"""
    return torch.randint(0, table.num_conditions, (n,), device=table.targets.device, generator=generator)


def random_negatives(table: LevelTable, cond: torch.Tensor, generator=None) -> torch.Tensor:
    """The expansion of another, random condition. -> (n, L)"""
    n = table.num_conditions
    shift = torch.randint(1, n, cond.shape, device=cond.device, generator=generator)
    return table.targets[(cond + shift) % n]


def hard_negatives(table: LevelTable, cond: torch.Tensor, generator=None) -> torch.Tensor:
    """The right expansion with one or two tokens changed (a one-letter misspelling, a
    dropped or extra chunk). Changed positions lie within the real tokens or the first pad,
    and each replacement differs from the original. -> (n, L)"""
    right = table.targets[cond]  # (n, L)
    n, L = right.shape
    dev = cond.device
    span = torch.clamp(table.lengths[cond] + 1, max=L)  # positions 0 .. len (first pad)
    pos1 = (torch.rand(n, device=dev, generator=generator) * span).long()
    two = (torch.rand(n, device=dev, generator=generator) < 0.5) & (span >= 2)
    # a second, distinct position
    step = 1 + (torch.rand(n, device=dev, generator=generator) * (span - 1).clamp(min=1)).long()
    pos2 = (pos1 + step) % span
    out = right.clone()
    C = table.num_classes
    rows = torch.arange(n, device=dev)
    out[rows, pos1] = (right[rows, pos1] + torch.randint(1, C, (n,), device=dev, generator=generator)) % C
    new2 = (right[rows, pos2] + torch.randint(1, C, (n,), device=dev, generator=generator)) % C
    out[rows, pos2] = torch.where(two, new2, out[rows, pos2])
    return out


def wrong_pairs(table: LevelTable, cond: torch.Tensor, generator=None) -> torch.Tensor:
    """Half random negatives, half hard negatives. -> (n, L)"""
    half = cond.shape[0] // 2
    return torch.cat([random_negatives(table, cond[:half], generator),
                      hard_negatives(table, cond[half:], generator)])


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
