"""The one description of a token hierarchy: a list of :class:`Level`, top (roots) to bottom
(characters).

Level ``i`` is a vocabulary of ``size`` tokens whose pad id is ``size`` (so ``size + 1``
classes); each of its tokens expands to at most ``max_children`` tokens of level ``i + 1``
(0 at the bottom, which has no children). "Expansion at level ``i``" means: a token of level
``i`` becomes its children of level ``i + 1``. The tokenizer builds the list, and the
renderer, its unified vocabulary, the training pairs, the decoders, checkpoints and stats
all read this same list: a deeper hierarchy needs no code change.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Level:
    name: str  # "roots", "chunks", "chars", ...
    size: int  # tokens in the vocabulary, pad not counted
    max_children: int  # most tokens of the next level one token expands to; 0 at the bottom

    def __post_init__(self):
        if isinstance(self.size, bool) or int(self.size) != self.size or self.size < 1:
            raise ValueError(f"level {self.name!r}: size must be an integer >= 1, got {self.size!r}")
        if isinstance(self.max_children, bool) or int(self.max_children) != self.max_children \
                or self.max_children < 0:
            raise ValueError(f"level {self.name!r}: max_children must be an integer >= 0, "
                             f"got {self.max_children!r}")

    @property
    def pad_id(self) -> int:
        """The pad token of this vocabulary: one class past the real tokens."""
        return self.size

    @property
    def num_classes(self) -> int:
        return self.size + 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d) -> "Level":
        if not isinstance(d, dict) or set(d) != {"name", "size", "max_children"}:
            raise ValueError(f"a level is {{name, size, max_children}}, got {d!r}")
        return cls(str(d["name"]), d["size"], d["max_children"])


def check_hierarchy(levels) -> list:
    """Validate a hierarchy (a list of Level or of their dicts) and return it as Levels."""
    out = [lv if isinstance(lv, Level) else Level.from_dict(lv) for lv in levels]
    if len(out) < 2:
        raise ValueError(f"a hierarchy needs at least 2 levels (roots and characters), got {len(out)}")
    for lv in out[:-1]:
        if lv.max_children < 1:
            raise ValueError(f"level {lv.name!r} is not the bottom, so max_children must be >= 1")
    if out[-1].max_children != 0:
        raise ValueError(f"the bottom level {out[-1].name!r} must have max_children 0")
    return out
