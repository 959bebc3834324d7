"""The renderer's unified vocabulary: every level's tokens and pads in one embedding table.

Levels are numbered top to bottom (0 = roots, 1 = chunks, 2 = chars, ...; ``levels.Level``);
expansion at level ``i`` reads a condition from level ``i`` and writes targets of level
``i + 1``. Each level's block holds its ``size`` tokens and then its pad, so the offsets of
all blocks are computed here, once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UnifiedVocab:
    levels: tuple  # levels.Level, top to bottom

    def offset(self, level: int) -> int:
        return sum(lv.num_classes for lv in self.levels[:level])

    @property
    def total(self) -> int:
        return sum(lv.num_classes for lv in self.levels)
