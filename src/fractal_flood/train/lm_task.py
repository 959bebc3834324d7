"""What one language-model training step computes (manager or AR peer): next-token loss on
random windows, validated on the held-out tail of the stream."""

from __future__ import annotations

import math

import torch

from ..corpus.streams import TokenStream, random_starts, windows
from ..measure.metrics import bits_per_char_of_loss, heldout_loss
from .distributed import piece_slice


def lm_optimizer(model, lr: float, weight_decay: float, decay: str) -> torch.optim.AdamW:
    """AdamW for a ``CausalLM``; ``decay`` picks the parameters weight decay acts on."""
    return torch.optim.AdamW(model.optimizer_groups(weight_decay, decay), lr=lr, betas=(0.9, 0.95))


class LMTask:
    """Next-token prediction on random windows; validation on the held-out tail."""

    def __init__(self, model, stream: TokenStream, batch, device, gen, val_chars: int):
        self.model, self.stream, self.batch, self.device = model, stream, batch, device
        self.gen = gen  # CPU generator
        self.context = model.config.context
        self.chars_per_token = val_chars / len(stream.val)
        self.best = float("inf")  # a resumed run sets the best of the run before
        self.first = None  # the held-out loss to improve on: the first evaluation's, or the resumed best
        self.resumed = False  # self.first is the best of the run this one continues
        self.evaluations = self.improvements = 0  # in this run

    def improved(self, metrics: dict) -> bool:
        loss = metrics.get("val_loss")
        if loss is None:
            return True
        self.evaluations += 1
        if self.first is None:
            self.resumed = math.isfinite(self.best)
            self.first = self.best if self.resumed else loss
        if loss < self.best:
            self.improvements += math.isfinite(self.best)
            self.best = loss
            return True
        return False

    def below_bar(self, metrics: dict) -> str | None:
        """Why the run misses a language model's bar (its held-out loss never improved on its
        first evaluation, or on the best it resumed from), or None. A run that evaluated once
        shows no improvement either: it stopped too soon to tell."""
        if not self.evaluations or self.improvements:
            return None
        if self.resumed:
            return (f"its held-out loss never improved on {self.first:.4f}, the best before --resume, in "
                    f"{self.evaluations} evaluation(s)")
        if self.evaluations == 1:
            return (f"its held-out loss ({self.first:.4f}) was evaluated once, so it never improved on its "
                    "first evaluation")
        return (f"its held-out loss never improved on its first evaluation ({self.first:.4f}) in "
                f"{self.evaluations} evaluations")

    def draw(self) -> torch.Tensor:
        """The step's batch: window starts in the training stream. -> (B,)"""
        return random_starts(len(self.stream.train), self.batch, self.context, self.gen)

    def loss(self, starts: torch.Tensor, piece: int = 0, pieces: int = 1):
        """Mean next-token loss on piece ``piece`` of ``pieces`` equal parts of the batch."""
        part = starts[piece_slice(len(starts), piece, pieces)]
        x, y = windows(self.stream.train, part, self.context)
        loss = self.model.loss(x.to(self.device), y.to(self.device))
        return loss, {"loss": loss.detach()}

    @torch.no_grad()
    def validate(self) -> dict:
        loss = heldout_loss(self.model, self.stream.val, self.device)
        return {"val_loss": loss, "val_bpc": bits_per_char_of_loss(loss, self.chars_per_token)}
