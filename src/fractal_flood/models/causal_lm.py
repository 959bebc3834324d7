"""A GPT-2 shaped causal transformer: the manager (over root ids) and the AR peer (over chunks).

Two forward paths over the same weights:

- ``forward``: full causal attention over the whole input. Training and the reference path.
- ``forward_cached``: writes keys/values into a preallocated static cache (module buffers,
  as in gpt-fast) and attends through a boolean mask over the *whole* cache length. Every
  decode step therefore has the same shapes and touches the same memory, so it can be
  captured once in a CUDA graph and replayed (``stream.ARStream``). Its eval-mode step,
  ``decode_hidden``, takes any per-layer caches with ``attend`` (``layers.Block.decode``):
  the manager's slot cache runs the same step with a position per row.

The output layer is one softmax over the vocabulary, or (``config.head_classes`` = K > 0)
P(class) x P(token | class) over K classes of consecutive ids (``class_head.py``), which a
decoder samples from K + V/K scores instead of V. ``forward`` returns scores whose softmax
is the model's distribution either way (for the factored head, the log-probabilities), so
training, evaluation and the reference decoders read it alike; decoders draw the next token
from the last hidden state with ``draw`` (``reference_draw``: the plain path).

Dropout (``config.dropout``: embeddings, attention, residual branches) acts in training mode
only; evaluation and decoding are unchanged by it.

The layout (``wte``, ``wpe``, ``blocks``, ``ln_f``, head tied to ``wte``) maps one-to-one onto
Hugging Face's ``GPT2LMHeadModel`` (``hf_gpt2.to_hf_gpt2``).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..sampling.tokens import sample
from . import class_head, rowwise_linear
from .config import DECAY_MODES, CausalLMConfig
from .layers import Block, KVCache, init_weights, layer_norm


class CausalLM(nn.Module):
    def __init__(self, config: CausalLMConfig):
        super().__init__()
        self.config = config
        V, C = config.vocab_size, config.d_model
        self.wte = nn.Embedding(V, C)
        self.wpe = nn.Embedding(config.context, C)  # learned absolute positions, as GPT-2
        self.blocks = nn.ModuleList(Block(C, config.n_heads, config.dropout) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(C)
        self.lm_head = nn.Linear(C, V, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as GPT-2
        # class-factored head: the class scores' own matrix (token scores stay tied to wte)
        self.class_head = (nn.Linear(C, config.head_classes, bias=False)
                           if config.head_classes else None)
        init_weights(self, config.n_layers)
        self.kv_caches: Optional[nn.ModuleList] = None  # made by setup_cache

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (tied head counted once); optionally without the position table."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding else n

    def optimizer_groups(self, weight_decay: float, decay: str = "matrices") -> list[dict]:
        """AdamW parameter groups: which parameters weight decay pulls towards zero.

        ``"all"``: every parameter (the old behaviour; one group). ``"matrices"``: the
        blocks' 2-D weights only; layer norms, biases and the (tied) token and position
        tables are not decayed. ``"matrices+embeddings"``: also the two tables (nanoGPT's
        choice). docs/log/notebook.md ("Manager regularisation") compares them.
        """
        if decay not in DECAY_MODES:
            raise ValueError(f"unknown decay {decay!r} (choose from: {', '.join(DECAY_MODES)})")
        if decay == "all":
            return [{"params": list(self.parameters()), "weight_decay": weight_decay}]
        embeddings = {id(self.wte.weight), id(self.wpe.weight)}
        decayed, kept = [], []
        for p in self.parameters():  # the tied head is the same tensor as wte: listed once
            is_matrix = p.dim() >= 2 and id(p) not in embeddings
            if is_matrix or (decay == "matrices+embeddings" and id(p) in embeddings):
                decayed.append(p)
            else:
                kept.append(p)
        return [{"params": decayed, "weight_decay": weight_decay},
                {"params": kept, "weight_decay": 0.0}]

    def _embed(self, idx: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        x = self._embed_eval(idx, pos)
        if self.training and self.config.dropout > 0:
            x = F.dropout(x, self.config.dropout, True)
        return x

    def _embed_eval(self, idx: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        # no Module call (decode steps); pos broadcasts: (T,) for every row, or (B, T)
        return F.embedding(idx, self.wte.weight) + F.embedding(pos, self.wpe.weight)

    # ---- full causal path (training, reference) -------------------------------------------

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) token ids -> scores (B, T, V), causal over the T positions."""
        return self.head(self.hidden(idx))

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) token ids -> final hidden states (B, T, C), causal."""
        B, T = idx.shape
        if T > self.config.context:
            raise ValueError(f"sequence of {T} tokens exceeds the context of {self.config.context}")
        x = self._embed(idx, torch.arange(T, device=idx.device))  # (B, T, C)
        for block in self.blocks:
            x = block(x, is_causal=True)
        return self.ln_f(x)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Final hidden states (..., C) -> (..., V) scores whose softmax is the model's
        distribution: logits, or the class-factored head's log-probabilities."""
        if self.class_head is None:
            return self.lm_head(h)
        return class_head.class_log_probs(self.class_head(h), self.lm_head(h))

    def draw(self, h: torch.Tensor, rows, seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """(B, C) final hidden states -> (B,) next tokens (``tokens.sample``'s contract:
        row b's draw depends only on (seeds[b], steps[b]) and its own settings)."""
        if self.class_head is None:  # each row's logits computed alone on a CPU (rowwise_linear)
            return sample(rowwise_linear.linear(h, self.lm_head.weight), rows, seeds, steps)
        return class_head.draw(h, self.class_head.weight, self.wte.weight, rows, seeds, steps)

    def reference_draw(self, h: torch.Tensor, rows, seeds: torch.Tensor,
                       steps: torch.Tensor) -> torch.Tensor:
        """``draw`` by the plain path: the whole output table, then one inversion over it."""
        if self.class_head is None:
            return sample(self.lm_head(h), rows, seeds, steps)
        return class_head.reference_draw(h, self.class_head.weight, self.wte.weight, rows, seeds, steps)

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy; ``targets`` (B, T) is usually ``idx`` shifted by one.
        A class-factored head scores only each target's class (``class_head.class_nll``)."""
        if self.class_head is not None:
            h = self.hidden(idx)
            return class_head.class_nll(h.reshape(-1, h.size(-1)), self.class_head.weight,
                                        self.wte.weight, targets.reshape(-1)).mean()
        logits = self(idx)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))

    # ---- static KV cache path (decoding) ---------------------------------------------------

    def setup_cache(self, batch: int, dtype: Optional[torch.dtype] = None,
                    device: torch.device | str | None = None) -> None:
        """Allocate one ``context``-long KV cache per block, plus the causal mask over it.

        The buffers are non-persistent (not in ``state_dict``). Calling again replaces them;
        one cache per model, so one decoding stream per model at a time.
        """
        cfg = self.config
        dtype = dtype or self.wte.weight.dtype
        device = device if device is not None else self.wte.weight.device
        hd = cfg.d_model // cfg.n_heads
        self.kv_caches = nn.ModuleList(
            KVCache(batch, cfg.n_heads, cfg.context, hd, dtype, device) for _ in self.blocks)
        L = cfg.context
        # mask[p, j] is True where a query at position p may see cache slot j (j <= p). Slots
        # above p may hold stale keys from before a window slide; the mask hides them.
        mask = torch.ones(L, L, dtype=torch.bool, device=device).tril()
        self.register_buffer("cache_mask", mask, persistent=False)

    def forward_cached(self, idx: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        """``hidden_cached`` followed by the output layer: (B, T, V) scores."""
        return self.head(self.hidden_cached(idx, input_pos))

    def hidden_cached(self, idx: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        """idx (B, T) at positions input_pos (T,) long -> final hidden states (B, T, C).

        Writes keys/values of these positions into the cache in place, then each query
        attends to every cache slot at or before its own position. Shapes depend only on
        (B, T), never on the position, so a T = 1 step is CUDA-graph capturable.
        """
        if self.kv_caches is None:
            raise RuntimeError("call setup_cache(batch, dtype, device) before forward_cached")
        mask = self.cache_mask[input_pos][None, None]  # (1, 1, T, L), broadcast over B, nh
        if self.training:  # dropout: the modules, over the same cache
            x = self._embed(idx, input_pos)
            for block, cache in zip(self.blocks, self.kv_caches):
                x = block(x, attn_mask=mask, cache=cache, input_pos=input_pos)
            return layer_norm(self.ln_f, x)
        return self.decode_hidden(idx, input_pos, mask, self.kv_caches)

    def decode_hidden(self, idx: torch.Tensor, pos: torch.Tensor, attn_mask: torch.Tensor,
                      caches) -> torch.Tensor:
        """The cached decode step in eval mode: idx (B, T) at positions ``pos`` ((T,) for all
        rows, or (B, T) per row) -> final hidden states (B, T, C).

        Embedding, every block's ``Block.decode`` over its cache (``caches``: one per block,
        each with ``attend``), final layer norm. ``hidden_cached`` runs it over the model's
        ``KVCache``s, the slot cache (``manager/slots.py``) over its per-row views; the fused
        step (``manager/fused_step.py``) is tested against it. No dropout, whatever the mode.
        """
        x = self._embed_eval(idx, pos)  # (B, T, C)
        for block, cache in zip(self.blocks, caches):
            x = block.decode(x, attn_mask, cache, pos)
        return layer_norm(self.ln_f, x)  # (B, T, C)
