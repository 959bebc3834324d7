"""What one language-model training step computes (manager or AR peer): next-token loss on
random windows, validated on the held-out tail of the stream."""

from __future__ import annotations

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
        self.best = float("inf")

    def improved(self, metrics: dict) -> bool:
        loss = metrics.get("val_loss")
        if loss is None or loss < self.best:
            self.best = loss if loss is not None else self.best
            return True
        return False

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
