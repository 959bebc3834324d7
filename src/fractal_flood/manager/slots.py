"""The manager for continuous batching: a KV cache of slots, each at its own position.

``ARStream`` runs a fixed batch in lockstep (one position for all rows). A server's rows
come and go: a request is prefilled into a free slot while the others wait at a block
boundary, and a finished one gives its slot back. So here every slot keeps its own
position, window and step counter, and a decode step writes each row's key and value at
that row's position (a per-row scatter instead of one shared ``index_copy_``).

Active rows are kept packed in slots ``0 .. n-1``: a step runs on a slice (a view, no
gather), and a row that leaves is replaced by the last active row (one row copy).

The window rule is ``ARStream``'s (``window.py``), applied per row, and the draws are the same
counter-based ones keyed on (seed, step), so a request's tokens equal a batch-1
``ARStream`` run with the same prompt, seed and settings (tested; up to floating-point
near-ties, below).

Batch invariance: a request's logits are bitwise the same alone or among any number of
others (tested at 1-33 rows, under the instruction-set caps of PyTorch's CPU libraries).
Every linear layer of the step and of the draw computes each row by itself
(``rowwise_linear``: one fixed order of float32 operations per row, on any CPU; a BLAS
library picks its kernel by the batch's row count and rounds differently). Attention is
batched matmuls, one matrix per row and head (the CPU's fused attention splits its work by
the batch's size over threads and rounds differently), and reads the cache only as far as
the step's longest row needs, in steps of ``span_step`` slots, a length at which extra
masked slots change no bit. A GPU's kernels make no such promise.
"""

from __future__ import annotations

import numpy as np
import torch

from ..models.causal_lm import CausalLM
from ..models.layers import cache_attention
from ..sampling.tokens import RowSampling, SamplingConfig, check_seed
from . import cpu_step
from .cpu_step import CpuStep
from .window import keep_length, kept_window

BLAS_MIN_MACS = 512  # a CPU matmul under 400 multiply-adds per matrix runs a plain loop instead


def span_step(head_dim: int) -> int:
    """The granularity of the cache span attention reads: a multiple of 16 slots with at
    least ``BLAS_MIN_MACS`` multiply-adds per (1 x head_dim) @ (head_dim x span) product.

    Measured on x86 CPU (MKL, 1 and 2 threads, head dims 8-64): once every product runs the
    BLAS kernel, a row's attention output is bitwise the same whether the span ends at its
    own position's step or further (masked slots add exact zeros); below 400 multiply-adds
    the matmul takes a plain loop and a span of 16 rounds differently from one of 32."""
    step = 16
    while step * head_dim < BLAS_MIN_MACS:
        step += 16
    return step


def batch_invariant_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              mask: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d), masked) v as batched matmuls: each row is its own matrix
    product, so its result does not depend on the other rows. (The CPU's fused attention
    splits its work by the batch's size over threads and rounds differently, ~1e-7.)"""
    att = (q @ k.transpose(-1, -2)) * (1.0 / q.size(-1) ** 0.5)
    return att.masked_fill(~mask, float("-inf")).softmax(-1) @ v


class SlotRows:
    """One layer's slot cache as one step sees it: ``k``, ``v`` (B, nh, L, hd) are views of
    the step's rows, each row writing at its own positions. The cache argument of
    ``Block.decode`` (``KVCache`` is the one-position-for-all-rows counterpart)."""

    __slots__ = ("k", "v", "batch")

    def __init__(self, k: torch.Tensor, v: torch.Tensor, batch: torch.Tensor):
        self.k, self.v, self.batch = k, v, batch  # batch: (B, 1) = arange(B), the rows' indices

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor,
               input_pos: torch.Tensor) -> torch.Tensor:
        """Write k, v (B, nh, T, hd) at each row's positions ``input_pos`` (B, T), then
        ``batch_invariant_attention`` over the first S cache slots, S = ``attn_mask``'s
        last size ((B, 1, T, S), True where a query may see a slot)."""
        self.k.transpose(1, 2)[self.batch, input_pos] = k.transpose(1, 2).to(self.k.dtype)
        self.v.transpose(1, 2)[self.batch, input_pos] = v.transpose(1, 2).to(self.v.dtype)
        if q.size(0) == 1 and q.size(2) > 1:
            # one row's prefill (a prompt, a window slide): a stream's attention
            # (``cache_attention``: the whole cache, masked past each position), the same
            # inputs, so the row's cache is the stream's bit for bit and a request's text in
            # the engine is its text alone (generate_solo) by construction, not by luck
            L = self.k.size(2)
            mask = (torch.arange(L, device=q.device) <= input_pos[0][:, None])[None, None]
            return cache_attention(q, self.k, self.v, mask)
        S = attn_mask.size(-1)
        return batch_invariant_attention(q, self.k[:, :, :S].to(q.dtype), self.v[:, :, :S].to(q.dtype),
                                         attn_mask)


class SlotManager:
    """Up to ``slots`` independent generation rows over one ``CausalLM`` (weights shared)."""

    def __init__(self, model: CausalLM, slots: int, device: torch.device | str,
                 dtype: torch.dtype | None = None):
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        cfg = model.config
        self.model, self.slots = model, slots
        self.device = torch.device(device)
        self.context, self.keep = cfg.context, keep_length(cfg.context)
        dtype = dtype or model.wte.weight.dtype
        hd = cfg.d_model // cfg.n_heads
        self.span_step = span_step(hd)  # attention reads the cache in steps of this many slots
        S = slots
        shape = (S, cfg.n_heads, cfg.context, hd)
        self.k = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in model.blocks]
        self.v = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in model.blocks]
        L = cfg.context
        self.window = torch.zeros(S, L, dtype=torch.long, device=self.device)  # token per cache slot
        self.tok = torch.zeros(S, dtype=torch.long, device=self.device)  # pending token per row
        self.pos = torch.zeros(S, dtype=torch.long, device=self.device)  # its position
        self.seeds = torch.zeros(S, dtype=torch.long, device=self.device)
        self.steps = torch.zeros(S, dtype=torch.long, device=self.device)
        self.rows = RowSampling.of([SamplingConfig()] * S, self.device)
        self.host_pos = np.zeros(S, dtype=np.int64)  # mirror of pos: when is a row's window full
        # on a CPU the default: every layer of a step and the draw in one C call, each row alone
        # (cpu_step.py)
        self._native = CpuStep(model, self.k, self.v) if cpu_step.usable(model, self.device, dtype) else None
        self.host_filters = np.zeros(S, dtype=bool)  # row asks for top-k / top-p (a sort per step)
        self.owner: list = []  # owner[i]: who holds active row i (rows 0..n-1)
        self.steps_run = 0  # decode steps (each over all active rows)
        self.row_steps = 0  # active rows summed over decode steps (/ steps_run: the mean batch)
        self.prefills = 0
        # on a CPU, numpy views of the same memory for a row's bookkeeping (add, remove): a
        # tensor assignment hands the interpreter lock over and waits to get it back, which in
        # a server means waiting behind the HTTP thread (measured: the largest share, 39%, of
        # the engine thread's waits at 32 clients, 2026-12-07); numpy keeps the lock for the
        # small copies (it releases it for the K/V rows' 128 KB ones)
        self._host = None
        if self.device.type == "cpu" and dtype in (torch.float32, torch.float16):  # numpy holds these
            self._host = {name: t.numpy() for name, t in (
                ("tok", self.tok), ("pos", self.pos), ("seeds", self.seeds), ("steps", self.steps),
                ("window", self.window), ("temperature", self.rows.temperature), ("top_k", self.rows.top_k),
                ("top_p", self.rows.top_p))}
            self._host_rows = [t.numpy() for t in (*self.k, *self.v)] + list(self._host.values())

    @property
    def active(self) -> int:
        return len(self.owner)

    @property
    def free(self) -> int:
        return self.slots - len(self.owner)

    @torch.no_grad()
    def add(self, owner, prompt: list[int], sampling: SamplingConfig, seed: int) -> int:
        """Prefill ``prompt`` (non-empty root ids) into the next free row; returns the row."""
        if not self.free:
            raise RuntimeError("no free slot")
        if not prompt:
            raise ValueError("prompt must hold at least one token")
        r = len(self.owner)
        prompt = prompt[-self.context:]
        self._prefill(r, torch.tensor(prompt[:-1], dtype=torch.long, device=self.device))
        self.host_pos[r] = len(prompt) - 1
        h = self._host
        if h is not None:  # the values RowSampling.of gives, float32 rounded as it rounds them
            h["tok"][r], h["pos"][r], h["seeds"][r], h["steps"][r] = prompt[-1], len(prompt) - 1, check_seed(seed), 0
            h["temperature"][r] = sampling.temperature
            h["top_k"][r] = sampling.top_k or 0
            h["top_p"][r] = 1.0 if sampling.top_p is None else sampling.top_p
        else:
            self.tok[r], self.pos[r], self.seeds[r], self.steps[r] = prompt[-1], len(prompt) - 1, check_seed(seed), 0
            one = RowSampling.of([sampling], self.device)
            self.rows.temperature[r], self.rows.top_k[r], self.rows.top_p[r] = (
                one.temperature[0], one.top_k[0], one.top_p[0])
        self.host_filters[r] = sampling.filters
        self.owner.append(owner)
        self._update_filters()
        return r

    @torch.no_grad()
    def remove(self, owner) -> None:
        """Free ``owner``'s row; the last active row moves into it (rows stay packed)."""
        r = self.owner.index(owner)
        last = len(self.owner) - 1
        if r != last:
            for buf in (self._host_rows if self._host is not None else (
                    *self.k, *self.v, self.window, self.tok, self.pos, self.seeds, self.steps,
                    self.rows.temperature, self.rows.top_k, self.rows.top_p)):
                buf[r] = buf[last]
            self.host_pos[r] = self.host_pos[last]
            self.host_filters[r] = self.host_filters[last]
            self.owner[r] = self.owner[last]
        self.owner.pop()
        self._update_filters()

    @torch.no_grad()
    def generate(self, n: int) -> torch.Tensor:
        """The next n tokens of every active row: (active, n) long on the device."""
        A = len(self.owner)
        out = torch.empty(A, n, dtype=torch.long, device=self.device)
        for i in range(n):
            for r in np.flatnonzero(self.host_pos[:A] == self.context).tolist():
                self._slide(r)  # this row's pending token has no slot
            self.step_rows(A, out[:, i])
            self.host_pos[:A] += 1
            self.steps_run += 1
            self.row_steps += A
        return out

    # ---- internals ------------------------------------------------------------------------

    def _update_filters(self) -> None:
        self.rows.filters = bool(self.host_filters[:len(self.owner)].any())

    def step_rows(self, A: int, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of rows 0..A-1: their next tokens into ``out`` (A,) and their final hidden
        states (A, C), returned; each row's pending token takes its window slot, the drawn one
        becomes pending, positions and step counters grow by 1. On a CPU by default one C call
        does all of it (``CpuStep.slot_step``); where a row asks for top-k or top-p, the C step
        and draw (``CpuStep.step``), those rows drawn again by ``CausalLM.draw`` from their
        hidden states (only those rows, so no other row's draw depends on them), the
        bookkeeping in tensor ops."""
        if self._native is not None and self._native.draws and not self.rows.filters:
            hidden = self._native.slot_step(self.tok[:A], self.pos[:A], self.seeds[:A], self.steps[:A],
                                            self.rows.temperature[:A], self.window[:A], out)
            return out, hidden
        self.window[torch.arange(A, device=self.device), self.pos[:A]] = self.tok[:A]  # pending token's slot
        rows = self.rows.rows(slice(0, A))
        if self._native is None or not self._native.draws:
            hidden = self.step_hidden(A)
            ids = self.model.draw(hidden, rows, self.seeds[:A], self.steps[:A])
        else:
            ids, hidden = self._native.step(self.tok[:A], self.pos[:A], self.seeds[:A], self.steps[:A],
                                            self.rows.temperature[:A])
            if rows.filters:
                picked = torch.from_numpy(np.flatnonzero(self.host_filters[:A]))
                ids[picked] = self.model.draw(hidden[picked], self.rows.rows(picked), self.seeds[picked],
                                              self.steps[picked])
        self.tok[:A] = ids
        self.pos[:A] += 1
        self.steps[:A] += 1
        out.copy_(ids)
        return out, hidden

    def step_hidden(self, A: int) -> torch.Tensor:
        """Final hidden states (A, C) of the pending tokens of rows 0..A-1. (A row's cache
        entries at or below its position are always its own: a step writes its key and
        value before attending, and a prefill writes all of them.)"""
        if self._native is not None:
            return self._native.hidden(self.tok[:A], self.pos[:A])
        return self._forward(self.tok[:A, None], self.pos[:A, None], A,
                             last=int(self.host_pos[:A].max(initial=0)))[:, -1]

    def _prefill(self, r: int, tokens: torch.Tensor) -> None:
        """Write ``tokens`` (T,) into row r's cache slots 0..T-1 (logits unused)."""
        T = tokens.numel()
        if T == 0:
            return
        if self._host is not None:
            self._host["window"][r, :T] = tokens.numpy()
        else:
            self.window[r, :T] = tokens
        if self._native is not None:  # the compiled step's operations: a stream's row's bits
            self._native.prefill(tokens, r, hidden=False)
        else:
            pos = torch.arange(T, device=self.device)
            self._forward(tokens[None], pos[None], 1, row=r, last=T - 1)
        self.prefills += 1

    def _slide(self, r: int) -> None:
        """Row r's window of context + 1 tokens -> its last ``keep``, re-encoded (ARStream's rule)."""
        kept = kept_window(self.window[r], self.context).clone()  # (keep - 1,)
        self._prefill(r, kept)
        self.pos[r] = self.host_pos[r] = self.keep - 1

    def _forward(self, idx: torch.Tensor, pos: torch.Tensor, B: int, last: int,
                 row: int = 0) -> torch.Tensor:
        """idx, pos (B, T) -> final hidden states (B, T, C) for cache rows row .. row+B-1;
        ``last`` is the largest position in ``pos`` (known on the host).

        ``CausalLM.decode_hidden`` with per-row positions: each layer's cache is a
        ``SlotRows`` view of rows row .. row+B-1. Attention reads the cache up to ``last``
        rounded up to ``span_step`` slots, not the whole context: the rows' positions decide
        how far, and a row's numbers stay the same whatever the others' positions are (see
        ``span_step``; tested bitwise).
        """
        S = min(self.context, -(-(last + 1) // self.span_step) * self.span_step)
        # mask[b, t, j]: the query at pos[b, t] may see cache slot j <= pos[b, t]
        mask = torch.arange(S, device=self.device)[None, None] <= pos[:, :, None]
        mask = mask[:, None]  # (B, 1, T, S)
        batch = torch.arange(B, device=self.device)[:, None]  # (B, 1)
        caches = [SlotRows(kc[row:row + B], vc[row:row + B], batch) for kc, vc in zip(self.k, self.v)]
        return self.model.decode_hidden(idx, pos, mask, caches)  # (B, T, C)
