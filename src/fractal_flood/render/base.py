"""The interface every decoder implements, and the options they share."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.renderer import FractalDiffusionModel
from .result import RenderResult


@dataclass
class DecodeOptions:
    k: int = 1  # best-of-K candidates per item (flood)
    threshold: float = 0.5  # accept a draw whose energy is below this (sequential, adaptive)
    max_tries: int = 10  # draws per item before keeping the best (sequential, adaptive)
    temperature: float = 0.0  # 0 = argmax; > 0 samples the renderer (diverse candidates)
    seed: int = 0
    # sequences per forward pass: bounds memory for any number of roots (one item's K
    # candidates always share a pass, so the bound is max(max_batch, k))
    max_batch: int = 65536
    energies: bool = False  # score the chosen draws even where no choice needs it (K = 1 flood)
    packed: bool = True  # canvases sized to the lengths; False: the padded, masked reference

    def validate(self) -> "DecodeOptions":
        if int(self.k) != self.k or self.k < 1:
            raise ValueError(f"k must be an integer >= 1, got {self.k}")
        if int(self.max_tries) != self.max_tries or self.max_tries < 1:
            raise ValueError(f"max_tries must be an integer >= 1, got {self.max_tries}")
        if not self.threshold == self.threshold:  # NaN
            raise ValueError("threshold must be a number, got NaN")
        if not 0 <= self.temperature < float("inf"):  # also rejects NaN
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        return self


class Decoder:
    """Renders root ids to text with a trained renderer. Subclasses choose candidates."""

    name = "base"

    def __init__(self, model: FractalDiffusionModel, alphabet: str, options: DecodeOptions | None = None):
        self.model = model
        self.alphabet = alphabet
        self.options = (options or DecodeOptions()).validate()
        self.device = next(model.parameters()).device

    def render(self, root_ids, offsets=None) -> RenderResult:
        """Roots -> text. ``offsets[level]``: how many items of each level this request has
        rendered before (item numbers, and so draws, continue from there; default 0), so a
        request cut into blocks renders the text it renders whole."""
        raise NotImplementedError

    def _roots_tensor(self, root_ids) -> torch.Tensor:
        roots = torch.as_tensor(root_ids, dtype=torch.long).reshape(-1)
        n = self.model.levels[0].size
        if roots.numel() and (int(roots.min()) < 0 or int(roots.max()) >= n):
            raise ValueError(f"root ids must lie in [0, {n})")
        return roots.to(self.device)
