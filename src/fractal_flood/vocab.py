"""The renderer's unified vocabulary: every level's tokens and pads in one embedding table.

Hierarchy vocabularies are numbered top to bottom (0 = roots, 1 = chunks, 2 = chars, ...);
expansion level ``i`` reads a condition from vocabulary ``i`` and writes targets of
vocabulary ``i + 1``. Each vocabulary gets one pad id (its size), so a vocabulary of ``V``
tokens takes ``V + 1`` rows, and the offsets of all blocks are computed here, once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UnifiedVocab:
    sizes: tuple  # tokens per hierarchy vocabulary, top to bottom (pads not counted)

    @classmethod
    def from_levels(cls, levels) -> "UnifiedVocab":
        """``levels``: ``[num_conditions, num_targets, max_len]`` per expansion step."""
        sizes = [int(levels[0][0])] + [int(lv[1]) for lv in levels]
        for upper, lower in zip(levels, levels[1:]):
            if int(upper[1]) != int(lower[0]):
                raise ValueError("level targets must be the next level's conditions")
        return cls(tuple(sizes))

    def offset(self, vocab: int) -> int:
        return sum(s + 1 for s in self.sizes[:vocab])

    def pad_id(self, vocab: int) -> int:
        """Pad id *within* vocabulary ``vocab`` (not offset)."""
        return self.sizes[vocab]

    @property
    def total(self) -> int:
        return sum(s + 1 for s in self.sizes)
