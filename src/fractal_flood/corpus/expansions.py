"""The renderer's training data as tensors: every item's expansion at each level (a
:class:`LevelTable`), conditions drawn from it, and wrong expansions for the energy head.

The renderer learns a table (every root's chunks, every chunk's characters), so pairs are
drawn uniformly over each level's conditions: rare entries are seen as often as frequent
ones. Everything is batched tensor indexing; nothing loops over items in Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LevelTable:
    """All expansions at one level: targets (N, L) padded with ``pad_id``, lengths (N,), and
    ``child_lengths`` (N, L): each target's own number of children (0 for pads), which the
    length head learns; None where the children are the bottom level."""

    targets: torch.Tensor
    lengths: torch.Tensor
    pad_id: int
    packed: bool  # canvases hold exactly ``lengths`` slots (below the top; the top too with top lengths)
    child_lengths: torch.Tensor | None = None

    @property
    def num_conditions(self) -> int:
        return self.targets.shape[0]

    @property
    def num_classes(self) -> int:
        return self.pad_id + 1

    def to(self, device) -> "LevelTable":
        cl = None if self.child_lengths is None else self.child_lengths.to(device)
        return LevelTable(self.targets.to(device), self.lengths.to(device), self.pad_id, self.packed, cl)


def level_tables(tokenizer, top_packed: bool = False) -> list[LevelTable]:
    """One table per expanding level of ``tokenizer.levels``, top to bottom. ``top_packed``:
    the top level's canvases hold exactly its items' children too (a renderer with
    ``top_lengths``)."""
    levels = tokenizer.levels
    raw = [tokenizer.expansion_table(i) for i in range(len(levels) - 1)]
    out = []
    for i, (targets, lengths) in enumerate(raw):
        child = levels[i + 1]
        child_lengths = None
        if i + 1 < len(raw):  # the children expand too: their lengths, pads -> 0
            below = torch.cat([raw[i + 1][1], torch.zeros(1, dtype=torch.long)])  # pad id -> 0
            child_lengths = below[targets]
        out.append(LevelTable(targets, lengths, child.pad_id, i > 0 or top_packed, child_lengths))
    return out


def sample_conditions(table: LevelTable, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n condition ids drawn uniformly over the whole table. -> (n,)"""
    return torch.randint(0, table.num_conditions, (n,), device=table.targets.device, generator=generator)


def canvas_lengths(table: LevelTable, cond: torch.Tensor) -> torch.Tensor | None:
    """The real slots of each condition's canvas: its length where the level is packed,
    None (the whole padded canvas) at the top."""
    return table.lengths[cond] if table.packed else None


def random_negatives(table: LevelTable, cond: torch.Tensor, generator=None):
    """The expansion of another, random condition, with its own length.
    -> (targets (n, L), lengths (n,))"""
    n = table.num_conditions
    shift = torch.randint(1, n, cond.shape, device=cond.device, generator=generator)
    other = (cond + shift) % n
    return table.targets[other], table.lengths[other]


def hard_negatives(table: LevelTable, cond: torch.Tensor, generator=None):
    """The right expansion with one or two tokens changed (a one-letter misspelling; at the
    top level also a dropped or extra child, since the first pad may change). Changed
    positions lie within the real tokens (or the first pad at the top), and each replacement
    differs from the original; on packed levels it is never a pad.
    -> (targets (n, L), lengths (n,))"""
    right = table.targets[cond]  # (n, L)
    lengths = table.lengths[cond]
    n, L = right.shape
    dev = cond.device
    if table.packed:  # the canvas is the real length: change real tokens into real tokens
        span, C = lengths.clamp(min=1), table.num_classes - 1
    else:  # positions 0 .. len (the first pad), any class
        span, C = torch.clamp(lengths + 1, max=L), table.num_classes
    pos1 = (torch.rand(n, device=dev, generator=generator) * span).long()
    two = (torch.rand(n, device=dev, generator=generator) < 0.5) & (span >= 2)
    # a second, distinct position
    step = 1 + (torch.rand(n, device=dev, generator=generator) * (span - 1).clamp(min=1)).long()
    pos2 = (pos1 + step) % span
    out = right.clone()
    rows = torch.arange(n, device=dev)
    out[rows, pos1] = (right[rows, pos1] + torch.randint(1, C, (n,), device=dev, generator=generator)) % C
    new2 = (right[rows, pos2] + torch.randint(1, C, (n,), device=dev, generator=generator)) % C
    out[rows, pos2] = torch.where(two, new2, out[rows, pos2])
    return out, lengths


def wrong_pairs(table: LevelTable, cond: torch.Tensor, generator=None):
    """Half random negatives, half hard negatives. -> (targets (n, L), lengths (n,))"""
    half = cond.shape[0] // 2
    (ra, rl), (ha, hl) = random_negatives(table, cond[:half], generator), hard_negatives(table, cond[half:], generator)
    return torch.cat([ra, ha]), torch.cat([rl, hl])
