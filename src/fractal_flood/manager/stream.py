"""Incremental autoregressive generation with a static KV cache, optionally one CUDA graph.

Window rule (``window.py``, shared by ``ARStream``, the slot cache and
``generate_reference``, so they agree token for token): the model sees at most ``context``
tokens. A prompt longer than that is cut to its last ``context`` tokens. When the window is
full and one more token is needed, it is cut to its last ``keep_length(context)`` tokens,
which are re-encoded at positions 0..keep-1, and generation goes on.

The stream keeps one *pending* token: the last token of the window, not yet in the cache.
A decode step feeds it at its position, samples the next one, and that becomes pending.
Every step is thus the same fixed-shape function of static buffers (pending token,
position, window), which is what a CUDA graph needs; the host only counts, never reads.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..errors import DeviceError
from ..models.causal_lm import CausalLM
from ..sampling.tokens import RowSampling, SamplingConfig, check_seed
from . import cpu_step
from .cpu_step import CpuStep
from .fused_step import FusedStep
from .window import keep_length, kept_window


def _as_batch(prompt: torch.Tensor, batch: Optional[int]) -> torch.Tensor:
    """(T,) or (B, T) -> (batch, T) long; a single prompt is repeated over the batch."""
    if prompt.dim() == 1:
        prompt = prompt[None]
    if prompt.dim() != 2 or prompt.size(1) == 0:
        raise ValueError(f"prompt must be a non-empty (T,) or (B, T) tensor, got {tuple(prompt.shape)}")
    if batch is not None and prompt.size(0) != batch:
        if prompt.size(0) != 1:
            raise ValueError(f"prompt batch {prompt.size(0)} does not match batch_size {batch}")
        prompt = prompt.expand(batch, -1)
    return prompt.long()


def row_seeds(seed: int | Sequence[int], batch: int, device) -> torch.Tensor:
    """One seed per row: an int gives rows ``seed, seed + 1, ...`` (row 0 of any batch with
    seed s draws as a batch-1 stream with seed s); a sequence is taken as is."""
    seeds = [seed + i for i in range(batch)] if isinstance(seed, int) else list(seed)
    if len(seeds) != batch:
        raise ValueError(f"{len(seeds)} seeds for a batch of {batch}")
    return torch.tensor([check_seed(s) for s in seeds], dtype=torch.long, device=device)


class ARStream:
    """Block-by-block streaming generation from one ``CausalLM`` (owns the model's cache).

    ``start(prompt)`` prefills; each ``generate(n)`` returns the next (B, n) tokens on the
    device without waiting on it, so the caller can queue other GPU work meanwhile.
    ``steps`` counts decode forward passes, ``prefills`` the prefill passes (prompt and
    window slides).
    """

    def __init__(self, model: CausalLM, batch_size: int, sampling: SamplingConfig,
                 device: torch.device | str, dtype: Optional[torch.dtype] = None,
                 cuda_graph: bool = False, seed: int = 0, compile: bool = False, fused: bool = False):
        self.device = torch.device(device)
        if compile and fused:
            raise ValueError("compile=True and fused=True are two ways to fuse the step: choose one")
        if cuda_graph and (self.device.type != "cuda" or not torch.cuda.is_available()):
            raise DeviceError(f"cuda_graph=True needs a CUDA device, got {self.device} "
                              f"(CUDA available: {torch.cuda.is_available()}); use cuda_graph=False")
        self.model, self.batch_size, self.sampling, self.seed = model, batch_size, sampling, seed
        self.context = model.config.context
        self.keep = keep_length(self.context)
        model.setup_cache(batch_size, dtype, self.device)
        # this stream's own cache: another stream on the same model installs its own, so
        # each call puts ours back (the CUDA graph captured these very buffers)
        self._cache = (model.kv_caches, model.cache_mask)
        B, L = batch_size, self.context
        # counter-based draws: row b's step s depends only on (seed of row b, s)
        self._seeds = row_seeds(seed, B, self.device)
        self._steps = torch.zeros(B, dtype=torch.long, device=self.device)
        self._rows = RowSampling.of([sampling] * B, self.device)
        self._tok = torch.zeros(B, 1, dtype=torch.long, device=self.device)  # pending token
        self._pos = torch.zeros(1, dtype=torch.long, device=self.device)  # its position (T=1,)
        self._window = torch.zeros(B, L, dtype=torch.long, device=self.device)  # token per slot
        self.pos: Optional[int] = None  # host mirror of _pos; None until start()
        self.steps = 0
        self.prefills = 0
        # torch.compile fuses the step's small kernels (layer norms, bias, GELU, residuals);
        # only the T = 1 decode step is compiled, prefill stays eager (one shape, one compile)
        self._step_forward = (torch.compile(model.hidden_cached, dynamic=False)
                              if compile else model.hidden_cached)
        # the Triton step (fused_step.py): 21 kernels for the shipped manager where the eager
        # step runs 154 operators (CUDA; tests: the CPU under TRITON_INTERPRET=1)
        self._fused = FusedStep(model, batch_size) if fused else None
        # on a CPU the default: every layer of the step and the draw in one C call (cpu_step.py)
        self._native = (CpuStep(model, [c.k for c in model.kv_caches], [c.v for c in model.kv_caches])
                        if not (compile or fused or cuda_graph) and cpu_step.usable(model, self.device, dtype)
                        else None)
        # the whole loop of steps in C: the C draw, no top-k/top-p rows, no graph or fused step
        self._native_loop = (self._native is not None and self._native.draws and not sampling.filters
                             and self._fused is None and cpu_step.mode() == "native")
        self._graph = self._capture() if cuda_graph else None

    @property
    def forward_passes(self) -> int:
        return self.steps + self.prefills

    @torch.no_grad()
    def start(self, prompt: torch.Tensor) -> None:
        """Reset to ``prompt`` (T,) or (B, T) and reseed, so a stream is reproducible."""
        self._install_cache()
        prompt = _as_batch(prompt.to(self.device), self.batch_size)[:, -self.context:]
        T = prompt.size(1)
        self._seeds.copy_(row_seeds(self.seed, self.batch_size, self.device))
        self._steps.zero_()
        self._prefill(prompt[:, :-1])
        self._tok.copy_(prompt[:, -1:])
        self._pos.fill_(T - 1)
        self.pos = T - 1

    @torch.no_grad()
    def generate(self, n: int) -> torch.Tensor:
        """The next n tokens, (B, n) long on the device. Call again to continue."""
        if self.pos is None:
            raise RuntimeError("call start(prompt) before generate(n)")
        self._install_cache()
        out = torch.empty(self.batch_size, n, dtype=torch.long, device=self.device)
        if self._graph is None and self._native_loop:
            # the C step loops over the steps itself, up to each window slide (cpu_step.c's
            # decode_draw_steps): the same tokens as one _step a token, without Python per step
            i = 0
            while i < n:
                if self.pos == self.context:
                    self._slide()
                m = min(n - i, self.context - self.pos)
                self._native.steps(self._tok[:, 0], self.pos, self._seeds, self._steps, self._rows.temperature,
                                   out[:, i:i + m], self._window)
                self._pos.add_(m)
                self.pos += m
                self.steps += m
                i += m
            return out
        for i in range(n):
            if self.pos == self.context:  # window full: the pending token has no slot
                self._slide()
            if self._graph is not None:
                self._graph.replay()
            else:
                self._step()
            out[:, i] = self._tok[:, 0]
            self.pos += 1
            self.steps += 1
        return out

    # ---- internals ------------------------------------------------------------------------

    def _install_cache(self) -> None:
        if self.model.kv_caches is not self._cache[0]:
            self.model.kv_caches, self.model.cache_mask = self._cache

    def _step(self) -> None:
        """One decode step on static buffers only: the body of the CUDA graph."""
        self._window.index_copy_(1, self._pos, self._tok)  # pending token takes its slot
        if self._fused is not None:
            nxt = self._fused.step(self._tok, self._pos, self._rows, self._seeds, self._steps)
        elif self._native is not None and self._native.draws and not self.sampling.filters:
            # the whole step, draw included, in one C call; the next token lands in _tok
            self._native.step(self._tok[:, 0], self._pos.expand(self.batch_size), self._seeds, self._steps,
                              self._rows.temperature, ids=self._tok)
            self._pos.add_(1)
            self._steps.add_(1)
            return
        else:
            if self._native is not None:
                hidden = self._native.hidden(self._tok[:, 0], self._pos.expand(self.batch_size))[:, None]
            else:
                hidden = self._step_forward(self._tok, self._pos)  # (B, 1, C)
            rows = self.sampling if self.sampling.greedy else self._rows  # greedy: a plain argmax
            nxt = self.model.draw(hidden[:, -1], rows, self._seeds, self._steps)  # (B,)
        self._tok.copy_(nxt[:, None])
        self._pos.add_(1)
        self._steps.add_(1)

    def _prefill(self, tokens: torch.Tensor) -> None:
        """Write tokens (B, T) into cache slots 0..T-1 (logits unused)."""
        T = tokens.size(1)
        if T == 0:
            return
        self._window[:, :T] = tokens
        if self._native is not None:  # the compiled step's operations, position by position, a row a call
            for b in range(self.batch_size):
                self._native.prefill(tokens[b], b, hidden=False)
        else:
            self.model.hidden_cached(tokens, torch.arange(T, device=self.device))
        self.prefills += 1

    def _slide(self) -> None:
        """Window of context + 1 tokens (slots + pending) -> its last ``keep``, re-encoded."""
        kept = kept_window(self._window, self.context).clone()  # (B, keep - 1)
        self._prefill(kept)
        self._pos.fill_(self.keep - 1)  # pending token stays, moves to the end of the window
        self.pos = self.keep - 1

    def _capture(self) -> torch.cuda.CUDAGraph:
        """Warm up on a side stream (allocator, kernels), then capture one ``_step``.

        Warm-up writes junk into the buffers and advances the step counters; harmless,
        since ``start`` overwrites the buffers and resets the counters in place.
        """
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.no_grad(), torch.cuda.stream(side):
            for _ in range(3):
                self._step()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            self._step()
        return graph


@torch.no_grad()
def generate_reference(model: CausalLM, prompt: torch.Tensor, n: int,
                       sampling: SamplingConfig, seed: int | Sequence[int] = 0) -> torch.Tensor:
    """Plain reference for ``ARStream``: full forward over the window at every step, no cache.

    Same window rule, same per-row seeds and step counters, so it returns the same (B, n)
    tokens as ``ARStream(..., seed=seed)``.
    """
    window = _as_batch(prompt, None)
    context = model.config.context
    window = window[:, -context:]
    B = window.size(0)
    seeds = row_seeds(seed, B, window.device)
    out = torch.empty(B, n, dtype=torch.long, device=window.device)
    for i in range(n):
        if window.size(1) > context:
            window = kept_window(window, context)
        steps = torch.full((B,), i, dtype=torch.long, device=window.device)
        nxt = model.reference_draw(model.hidden(window)[:, -1], sampling, seeds, steps)  # (B,)
        out[:, i] = nxt
        window = torch.cat([window, nxt[:, None]], dim=1)
    return out
