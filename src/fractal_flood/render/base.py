"""The interface every decoder implements (the options they share: ``options.py``)."""

from __future__ import annotations

import torch

from ..models.renderer import FractalDiffusionModel
from .options import DecodeOptions  # noqa: F401 (re-exported)
from .result import RenderResult


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
