"""The renderer's settings, shared by every decoder (torch-free: the command line reads
their defaults without importing torch)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DecodeOptions:
    """The renderer's settings. ``temperature`` is the renderer's own (the manager's is in
    ``SamplingConfig``); ``seed`` is set by the pipeline from the request's one seed."""

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
