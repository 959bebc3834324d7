"""What one language-model training step computes (manager or AR peer): next-token loss on
random windows, validated on the held-out tail of the stream."""

from __future__ import annotations

import torch

from .metrics import bits_per_char_of_loss, heldout_loss
from .pairs import TokenStream, lm_batch


class LMTask:
    """Next-token prediction on random windows; validation on the held-out tail."""

    def __init__(self, model, stream: TokenStream, batch, device, gen, val_chars: int):
        self.model, self.stream, self.batch, self.device = model, stream, batch, device
        self.gen = gen  # CPU generator
        self.context = model.config.context
        self.chars_per_token = val_chars / len(stream.val)
        self.best = float("inf")

    def improved(self, metrics: dict) -> bool:
        loss = metrics.get("val_loss")
        if loss is None or loss < self.best:
            self.best = loss if loss is not None else self.best
            return True
        return False

    def loss(self):
        x, y = lm_batch(self.stream.train, self.batch, self.context, self.gen)
        loss = self.model.loss(x.to(self.device), y.to(self.device))
        return loss, {"loss": loss.detach()}

    @torch.no_grad()
    def validate(self) -> dict:
        loss = heldout_loss(self.model, self.stream.val, self.device)
        return {"val_loss": loss, "val_bpc": bits_per_char_of_loss(loss, self.chars_per_token)}
