"""What a render returns: the text, per-root texts, and the work it took."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


def advance(offsets: list, counts) -> list:
    """Item numbers after a render: ``offsets`` plus the items it rendered at each level
    (``counts[level]`` has one entry per item, a tensor or a list)."""
    return [o + len(c) for o, c in zip(offsets, counts)]


@dataclass
class LevelStats:
    items: int = 0  # conditions expanded at this level
    draws: int = 0  # candidates drawn (K per item for best-of-K; tries for rejection)
    passes: int = 0  # batched forward passes
    rounds: int = 0  # adaptive rounds (or batches)
    accepted: int = 0  # items whose chosen draw passed the threshold (if scored)
    energy_sum: float = 0.0
    positions: int = 0  # canvas positions computed (condition included)
    flops: int = 0  # matrix FLOPs of the passes, counted from shapes (flops.py)
    scored: bool = False  # whether an energy pass ran (K > 1, adaptive, sequential, or asked)

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["mean_energy"] = (self.energy_sum / self.items if self.items else 0.0) if self.scored else None
        if not self.scored:
            d["accepted"] = None
        d.pop("energy_sum")
        return d


@dataclass
class RenderResult:
    """``counts[l]``: children kept per item of level ``l`` (pads dropped), in item order."""

    tokens: torch.Tensor  # bottom-level ids (characters), flattened, on the CPU
    counts: list  # list of CPU int64 tensors
    alphabet: str
    levels: list = field(default_factory=list)  # LevelStats per level
    energies: list = field(default_factory=list)  # chosen energy per item, per level (CPU), or None: not scored

    @property
    def text(self) -> str:
        table = np.array(list(self.alphabet))
        return "".join(table[self.tokens.numpy()].tolist())

    @property
    def num_roots(self) -> int:
        return len(self.counts[0])

    @property
    def num_chunks(self) -> int:
        """Level-1 tokens rendered: the unit of 'tokens/s' (docs/DESIGN.md)."""
        return int(self.counts[0].sum())

    def root_texts(self) -> list[str]:
        """The rendered text of each root, in order."""
        chars_per_item = self.counts[-1]
        for counts in reversed(self.counts[:-1]):  # fold up to roots
            owner = torch.repeat_interleave(torch.arange(len(counts)), counts)
            chars_per_item = torch.zeros(len(counts), dtype=torch.long).index_add_(0, owner, chars_per_item)
        text = self.text
        ends = torch.cumsum(chars_per_item, 0).tolist()
        starts = [0] + ends[:-1]
        return [text[s:e] for s, e in zip(starts, ends)]

    @property
    def draws(self) -> int:
        return sum(s.draws for s in self.levels)

    @property
    def passes(self) -> int:
        return sum(s.passes for s in self.levels)

    @property
    def flops(self) -> int:
        return sum(s.flops for s in self.levels)

    def stats(self) -> dict:
        return {"roots": self.num_roots, "chunks": self.num_chunks, "chars": len(self.tokens),
                "draws": self.draws, "passes": self.passes, "flops": self.flops,
                "levels": [s.as_dict() for s in self.levels]}


def split_render(render: RenderResult, sizes: list) -> list[dict]:
    """A render of several requests' roots (concatenated) -> per request: root texts, and per
    level the counts and energies of its items."""
    texts = render.root_texts()
    counts = [c.tolist() for c in render.counts]
    energies = [None if e is None else e.tolist() for e in render.energies]  # None: not scored
    out, item_start = [], [0] * len(counts)
    root = 0
    for size in sizes:
        part = {"root_texts": texts[root:root + size], "counts": [], "energies": []}
        n = size  # items of this request at the current level
        for level in range(len(counts)):
            s = item_start[level]
            level_counts = counts[level][s:s + n]
            part["counts"].append(level_counts)
            part["energies"].append(None if energies[level] is None else energies[level][s:s + n])
            item_start[level] = s + n
            n = sum(level_counts)
        root += size
        out.append(part)
    return out


def chars_under(counts: list, level: int) -> list:
    """Per item of ``level`` (>= 1), how many characters its subtree holds, from
    ``counts[l][i]``, the children of item i of level l (the bottom level's children are
    characters; level 0's items are the roots)."""
    under = None
    for lv in range(len(counts) - 1, level - 1, -1):
        if under is None:  # the bottom level: its children are characters
            under = list(counts[lv])
            continue
        folded, k = [], 0
        for n in counts[lv]:
            folded.append(sum(under[k:k + n]))
            k += n
        under = folded
    return under if under is not None else [1] * sum(counts[level - 1])  # level == depth: characters
