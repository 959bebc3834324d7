"""``fractal-flood bench``: the decoders against the sequential and autoregressive baselines.

One model, one device, one dtype per run, so every ratio in the report is measured under
the same conditions. Rows (definitions in docs/DESIGN.md; a token is one level-1 chunk):

- render-only (held-out roots -> text): the sequential baseline, best-of-K floods (K swept,
  16 is the plan's) and the adaptive flood, over a sweep of the number of roots R; and the
  tokenizer's own decode (a table lookup), the exact reference a learned renderer is
  measured against;
- end-to-end (prompt -> text, manager included): one request through ``TextPipeline``
  (single-stream) per decoder, and B requests at once (manager batched, one flood);
- the AR peer a user would pick instead (a GPT over chunks, trained on the same corpus),
  measured at the same numbers of requests as the end-to-end rows: our static-cache
  ``ARStream`` (CUDA graph and eager) and Hugging Face ``generate()``;
- the same peer in an inference engine, CTranslate2 (``ct2_peer.py``; with the ``engines``
  extra installed, on the CPU): float32 and int8, one thread and all the machine's cores,
  single-stream and at the batched rows' numbers of requests (and 32, the load test's
  clients), each with the held-out bits per character CTranslate2 itself scores.

Speed alone would reward a decoder that writes wrong text fast, or a model that writes bad
text fast, so each row also carries render fidelity, character error rate, the held-out
bits per character of the model that chose the text (the manager for Fractal Flood: the
renderer only spells its roots; the peer for itself), the bits per character of the row's
own text under the peer, and the matrix FLOPs its passes did. Sizes grow until a row would
cost more than its budget; what was skipped is reported.
"""

from __future__ import annotations

import datetime
import importlib.util
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import torch

from .. import __version__
from ..corpus.reader import load_corpus
from ..corpus.streams import TokenStream
from ..device import describe, resolve_device, resolve_dtype
from ..errors import FractalFloodError, UnknownCharacterError
from ..fileio import check_writable, write_text
from ..generation.engine import Engine, Request
from ..generation.pipeline import TextPipeline
from ..generation.request import DEFAULT_BLOCK_ROOTS, DEFAULT_MANAGER_TEMPERATURE
from ..manager.stream import ARStream
from ..models import checkpoint as ckpt
from ..models.flops import block_flops, causal_lm_flops
from ..render.base import DecodeOptions
from ..render.decoders import make_decoder
from ..sampling.tokens import SamplingConfig
from . import ct2_peer
from .metrics import bits_per_char, bits_per_char_of_loss, heldout_loss, render_fidelity
from .report import compute_targets
from .row import NA, ROW_FIELDS, BenchRow
from .timing import Timing, device_sync, measure

__all__ = ["NA", "ROW_FIELDS", "BenchRow", "Bench", "Sizes", "run_bench", "run_bench_cli"]

TEMPERATURE = DEFAULT_MANAGER_TEMPERATURE  # manager and AR peer sampling (every door's default), so their texts compare
E2E_BLOCK_ROOTS = DEFAULT_BLOCK_ROOTS  # the e2e single rows' blocks: what `generate` uses (the text does not depend on it)
BASELINE_R = 256  # the CPU render-only target ("10x today's") compares flood K=1 at this R


@dataclass(frozen=True)
class Sizes:
    """What one run measures, and the limits that keep it within minutes."""

    name: str  # quick or full
    roots: tuple  # render-only sweep of R, ascending (floods)
    seq_roots: tuple  # render-only sequential baseline: small R only, it is slow
    ks: tuple  # best-of-K sweep; 16 is the plan's
    e2e_roots: int  # single-stream request; 900 roots ~ 1,020 tokens
    batch: tuple  # batched end-to-end: requests B (the AR peer is measured at each of these too)
    roots_per_request: int
    peer_tokens: int  # AR peer single-stream
    peer_batch: tuple  # further AR peer batches, beyond ``batch``
    peer_tokens_batched: int
    hf_batch: tuple
    hf_tokens: Optional[int]  # None: context - 1, all that GPT-2's learned positions allow
    repeats: int
    row_budget_s: float  # a row's timed runs fit in about this; a sweep stops before warm-up + run would not
    sweep_deadline_s: float  # past this, sweeps stop growing (one row of each kind still runs)
    quality_windows: int  # peer windows (of its context) scored per row for the sample bpc
    heldout_windows: int  # held-out windows (of each LM's context) for the held-out bpc
    small_warmup: bool  # warm up on a small input (one-time costs only), not the row's own
    engine_batch: tuple = (32,)  # CTranslate2 batches beyond the peer's: the load test's 32 clients


FULL = Sizes(name="full", roots=(64, 256, 1024, 4096, 16384, 65536), seq_roots=(16, 64, 256),
             ks=(1, 4, 16), e2e_roots=900, batch=(64, 256, 1024), roots_per_request=128, peer_tokens=1024,
             peer_batch=(64, 256, 1024), peer_tokens_batched=128, hf_batch=(1, 64), hf_tokens=None,
             repeats=3, row_budget_s=12.0, sweep_deadline_s=150.0, quality_windows=32, heldout_windows=64,
             small_warmup=False)
# A CPU full run: same kinds of rows, batched sizes a 2-core machine finishes, so the
# render sweeps (run last) still get their share of the time. A batched request writes 64
# roots, ~118 tokens, beside the peer's 128 (32 roots until 2026-12-07: a quarter of the
# peer's work a request, where a round's fixed costs, the render call's and the prefills',
# weighed four times as much on ours).
CPU_FULL = replace(FULL, name="full-cpu", batch=(4, 16), roots_per_request=64, peer_batch=(4, 16, 64),
                   sweep_deadline_s=240.0)
QUICK = Sizes(name="quick", roots=(4, 16), seq_roots=(4,), ks=(1, 4, 16), e2e_roots=24,
              batch=(4,), roots_per_request=8, peer_tokens=32, peer_batch=(4,), peer_tokens_batched=8,
              hf_batch=(1, 64), hf_tokens=8, repeats=1, row_budget_s=2.0, sweep_deadline_s=20.0,
              quality_windows=2, heldout_windows=8, small_warmup=True)


# ---- work of the autoregressive rows ----------------------------------------------------------

def renderer_size(renderer) -> str:
    """'LAYERS x WIDTH' of a renderer, as bench notes and targets name it."""
    return f"{renderer.config.n_layers}x{renderer.config.d_model}"


def ar_work(prompt_len: int, steps: int, context: int) -> tuple[int, int]:
    """-> (prefill passes, positions computed) per sequence for ``ARStream.start(prompt)`` then
    ``steps`` decode steps, by the window rule in manager/stream.py: the prompt's last
    ``context`` tokens but the pending one are prefilled; a full window is cut to its last
    ``keep`` tokens, ``keep - 1`` of them re-encoded. (A test checks it against the stream.)"""
    keep = max(1, context // 2)
    T = min(prompt_len, context)
    passes, positions, pos = int(T > 1), T - 1, T - 1
    for _ in range(steps):
        if pos == context:
            passes, positions, pos = passes + int(keep > 1), positions + keep - 1, keep - 1
        positions += 1
        pos += 1
    return passes, positions


def ar_flops(config, batch: int, prompt_len: int, steps: int) -> int:
    """Matrix FLOPs of an ``ARStream`` run (static cache: every position attends over the
    whole cache, as it runs)."""
    return causal_lm_flops(config, batch, ar_work(prompt_len, steps, config.context)[1])


def hf_generate_flops(config, batch: int, new_tokens: int) -> int:
    """Matrix FLOPs of ``generate()`` from a one-token prompt: ``new_tokens`` forward
    positions, the i-th attending over the i keys its dynamic cache holds."""
    n = new_tokens
    d = config.d_model
    return block_flops(d, config.n_layers, batch * n, batch * n * (n + 1) // 2) + 2 * d * config.vocab_size * batch * n


# ---- the bench -------------------------------------------------------------------------------

class Bench:
    """Loads the model once and measures rows into ``self.rows`` (``BenchRow``s, each added
    once, complete)."""

    def __init__(self, model_dir, device: str, dtype: str, sizes: Sizes,
                 log: Callable[[str], None] = lambda s: None, corpus=None):
        self.sizes, self.log = sizes, log
        self.t0 = time.perf_counter()
        self.dev = resolve_device(device)
        self.dt = resolve_dtype(dtype, self.dev)
        # weights in the run's dtype (no autocast: no per-call weight casts in the hot path)
        m = ckpt.load_model_dir(model_dir or None, self.dev, self.dt, optional=("peer",))
        self.model_dir, self.tok, self.renderer, self.manager = m.path, m.tokenizer, m.renderer, m.manager
        self.peer = self.judge = m.peer
        if self.peer is not None and self.dt != torch.float32:
            # the baseline runs in the run's dtype (its strongest form); the judge scores in fp32
            self.judge = ckpt.load_peer(self.model_dir, self.tok, self.dev)[0]
        self.cuda = self.dev.type == "cuda"
        self.sync = device_sync(self.dev)
        self.sampling = SamplingConfig(temperature=TEMPERATURE)
        self.heldout = self.heldout_roots(self.tok, corpus)  # (N,) on the CPU
        self.heldout_text = self.tok.decode(self.heldout.tolist())
        self.corpus = corpus
        self.rows: list[BenchRow] = []
        self.skipped: list[str] = []
        self.on_row: Optional[Callable[[], None]] = None  # called after each row (partial reports)
        self._quality = None
        self.run_info = {"device": describe(self.dev), "dtype": str(self.dt).replace("torch.", ""),
                         "torch": torch.__version__,
                         "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}

    @staticmethod
    def heldout_roots(tok, corpus=None) -> torch.Tensor:
        """The held-out roots: the same tail of the encoded corpus that training validated on."""
        try:
            return TokenStream.split(tok.encode(load_corpus(corpus))).val
        except UnknownCharacterError as e:
            raise FractalFloodError(f"the bench renders the held-out tail of the corpus, which this "
                                    f"model's alphabet does not cover: {e}") from None

    # -- helpers --

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def roots(self, n: int) -> torch.Tensor:
        """The first n held-out roots, repeated when the tail has fewer: (n,) on the device."""
        reps = -(-n // len(self.heldout))
        return self.heldout.repeat(reps)[:n].to(self.dev)

    def repeated_note(self, R) -> str:
        return f"the {len(self.heldout):,} held-out roots, repeated" if R > len(self.heldout) else ""

    def options(self, k: int = 1) -> DecodeOptions:
        return DecodeOptions(k=k, threshold=0.5, max_tries=10)

    def measure(self, fn, small_fn=None, always_small: bool = False) -> Timing:
        """Median of the repeats of ``fn``. The warm-up runs ``small_fn`` (the same work on a
        small input) for slow baselines, and in quick mode, where the warm-up only needs
        the one-time costs (first kernel calls, CUDA-graph capture) paid."""
        small = small_fn if small_fn is not None and (always_small or self.sizes.small_warmup) else None
        return measure(fn, self.sizes.repeats, 1, self.sync, small, self.sizes.row_budget_s)

    def bpc(self, texts: list):
        if self.judge is None:
            return NA
        v = bits_per_char(self.judge, self.tok, texts, self.sizes.quality_windows)
        return NA if v is None else v

    def quality(self) -> dict:
        """Held-out bits per char of the manager (over roots) and of the AR peer (over
        chunks), in fp32, on the same held-out text (what ``fractal-flood eval`` reports)."""
        if self._quality is None:
            n = self.sizes.heldout_windows
            manager = self.manager if self.dt == torch.float32 else \
                ckpt.load_manager(self.model_dir, self.tok, self.dev)[0]
            chars = len(self.heldout_text)
            q = {"manager": bits_per_char_of_loss(heldout_loss(manager, self.heldout, self.dev, n),
                                                  chars / len(self.heldout)), "peer": NA}
            if self.judge is not None:
                chunks = torch.tensor(self.tok.encode_chunks(self.heldout_text), dtype=torch.long)
                q["peer"] = bits_per_char_of_loss(heldout_loss(self.judge, chunks, self.dev, n),
                                                  chars / len(chunks))
            self._quality = q
        return self._quality

    def row(self, t: Timing, started: float, **fields) -> BenchRow:
        """A complete row from the timing and every other field (``dtype`` may override the
        run's: an int8 engine row)."""
        info = {**self.run_info, **{k: fields.pop(k) for k in ("dtype",) if k in fields}}
        return BenchRow.measured(seconds=t.seconds, times=t.times, repeats=t.repeats,
                                 wall_s=time.perf_counter() - started, **fields, **info)

    def add(self, row: BenchRow) -> BenchRow:
        """Keep a finished row and report it: it is never changed afterwards."""
        self.rows.append(row)
        if self.on_row is not None:
            self.on_row()
        fid = row.fidelity
        self.log(f"  {row.tokens_per_s:,.0f} tokens/s, {row.seconds:.4g} s, {row.mflop_per_token:,.2f} "
                 f"MFLOP/token, fidelity {fid if fid == NA else f'{fid:.1%}'}")
        return row

    def start(self, name: str) -> float:
        self.log(f"[bench {self.elapsed():6.1f}s] {name}")
        return time.perf_counter()

    # -- render-only --

    def render_row(self, decoder: str, k, R: int) -> BenchRow:
        name = f"render {decoder}" + (f" k={k}" if decoder == "flood" else "") + f" R={R}"
        started = self.start(name)
        dec = make_decoder(decoder, self.renderer, self.tok.alphabet, self.options(k if k != NA else 1))
        roots = self.roots(R)
        t = self.measure(lambda: dec.render(roots), lambda: dec.render(roots[:2]), decoder == "sequential")
        res = t.result
        fid, cer = render_fidelity(self.tok, roots.tolist(), res.root_texts())
        text = res.text
        return self.add(self.row(
            t, started, name=name, mode="render-only", stream="single", decoder=decoder, k=k, model="renderer",
            roots=R, requests=1, tokens=res.num_chunks, chars=len(text), fidelity=fid, cer=cer,
            heldout_bpc=NA, sample_bpc=self.bpc([text]), flops=res.flops, draws=res.draws, passes=res.passes,
            manager_steps=0, note=self.repeated_note(R)))

    def table_lookup_row(self, R: int) -> BenchRow:
        """The tokenizer's own decode: what a learned renderer must reproduce, at its cost."""
        name = f"render table lookup R={R}"
        started = self.start(name)
        ids = self.roots(R).tolist()
        t = self.measure(lambda: self.tok.decode(ids))
        # fidelity of the decode, one root at a time, against the root table
        fid, cer = render_fidelity(self.tok, ids, [self.tok.decode([r]) for r in ids])
        return self.add(self.row(
            t, started, name=name, mode="render-only", stream="single", decoder="table lookup", k=NA,
            model="tokenizer", roots=R, requests=1, tokens=sum(len(self.tok.expand(r)) for r in ids),
            chars=len(t.result), fidelity=fid, cer=cer, heldout_bpc=NA, sample_bpc=NA, flops=0, draws=NA,
            passes=0, manager_steps=0,
            note="the exact reference: tok.decode(root_ids), no model" +
                 (f"; {self.repeated_note(R)}" if self.repeated_note(R) else "")))

    def sweep(self, label: str, sizes: tuple, row_fn, deadline: bool = True) -> list:
        """Rows at growing sizes; stop when the next would blow the row budget or (unless
        ``deadline`` is False) the sweep deadline has passed."""
        rows = []
        for i, n in enumerate(sizes):
            if i:
                per_run = rows[-1].seconds * n / sizes[i - 1]  # throughput grows: pessimistic
                why = (f"predicted {2 * per_run:.1f} s > row budget {self.sizes.row_budget_s:g} s"
                       if 2 * per_run > self.sizes.row_budget_s else
                       f"sweep deadline {self.sizes.sweep_deadline_s:g} s passed"
                       if deadline and self.elapsed() > self.sizes.sweep_deadline_s else None)
                if why:
                    self.skipped.append(f"{label}: sizes {', '.join(map(str, sizes[i:]))} skipped ({why})")
                    self.log(f"  skip {label} at {n}: {why}")
                    break
            rows.append(row_fn(n))
        return rows

    def render_sequential(self) -> None:
        self.sweep("render sequential", self.sizes.seq_roots, lambda R: self.render_row("sequential", NA, R))

    def render_floods(self) -> None:
        sz = self.sizes
        for k in sorted(sz.ks, key=lambda k: k != 16):  # the plan's K first, then the sweep
            self.sweep(f"render flood k={k}", sz.roots, lambda R: self.render_row("flood", k, R))
        self.sweep("render adaptive", sz.roots, lambda R: self.render_row("adaptive", NA, R))
        for R in sz.roots:  # a table lookup costs next to nothing at any R
            self.table_lookup_row(R)

    # -- end-to-end --

    def e2e_single(self, decoder: str, roots: int, note: str = "", compile: bool = False,
                   fused: bool = False) -> BenchRow:
        name = (f"e2e single {decoder}" + (" k=1" if decoder == "flood" else "") + (" +compile" if compile else "")
                + (" +fused" if fused else ""))
        started = self.start(f"{name} ({roots} roots)")
        # one pipeline per decoder, made here and used only here: the manager owns one KV
        # cache, and a newer stream (or the batched rows) replaces it
        pipe = TextPipeline(self.tok, self.manager, self.renderer, self.dev, self.dt, decoder, self.options(),
                            compile=compile, fused=fused)
        t = self.measure(lambda: pipe.generate("", roots, self.sampling, seed=0, block_roots=E2E_BLOCK_ROOTS),
                         lambda: pipe.generate("", 4, self.sampling), decoder == "sequential")
        g = t.result
        texts = [s for r in g.renders for s in r.root_texts()]
        fid, cer = render_fidelity(self.tok, g.root_ids, texts)
        flops = sum(r.flops for r in g.renders) + ar_flops(self.manager.config, 1, len(pipe.prompt_ids("")),
                                                           g.manager_steps)
        return self.add(self.row(
            t, started, name=name, mode="end-to-end", stream="single", decoder=decoder,
            k=1 if decoder == "flood" else NA, model="manager", roots=len(g.root_ids), requests=1,
            tokens=g.num_chunks, chars=len(g.text), fidelity=fid, cer=cer, heldout_bpc=self.quality()["manager"],
            sample_bpc=self.bpc([g.text]), flops=flops, draws=sum(r.draws for r in g.renders),
            passes=sum(r.passes for r in g.renders), manager_steps=g.manager_steps, note=note))

    def e2e_batched(self, B: int) -> BenchRow:
        N = self.sizes.roots_per_request
        name = f"e2e batched flood k=1 B={B}"
        started = self.start(f"{name} ({N} roots each)")
        # the serving engine, all B requests in one round: one batched manager block, one
        # pooled flood over every request's roots, each drawn with its request's seed
        pipe = TextPipeline(self.tok, self.manager, self.renderer, self.dev, self.dt, "flood", self.options())
        engine = Engine(pipe, max_batch=B, block_roots=N, pooled_render=True)
        prompt = ""  # TextPipeline starts an empty prompt from a newline

        def run(n=N):
            texts = {}
            before = (engine.slots.steps_run, engine.draws, engine.passes, engine.flops)
            reqs = [Request(prompt, roots=n, sampling=self.sampling, seed=i) for i in range(B)]
            done = engine.run(reqs, lambda job, block: texts.setdefault(job.request.seed, []).extend(
                block.root_texts))
            after = (engine.slots.steps_run, engine.draws, engine.passes, engine.flops)
            work = [b - a for a, b in zip(before, after)]
            return done, [texts[c.request.seed] for c in done], work

        t = self.measure(run, lambda: run(2))
        done, root_texts, (steps, draws, passes, flops) = t.result
        ids = [i for c in done for i in c.root_ids]
        texts = [s for per in root_texts for s in per]
        fid, cer = render_fidelity(self.tok, ids, texts)
        requests = [c.text for c in done]
        # all B requests are admitted together and run the same number of steps, so each
        # manager row did one stream's work
        manager_flops = ar_flops(self.manager.config, B, len(pipe.prompt_ids(prompt)), steps)
        return self.add(self.row(
            t, started, name=name, mode="end-to-end", stream="batched", decoder="flood", k=1, model="manager",
            roots=B * N, requests=B, tokens=sum(c.chunks for c in done), chars=sum(map(len, requests)),
            fidelity=fid, cer=cer, heldout_bpc=self.quality()["manager"], sample_bpc=self.bpc(requests),
            flops=flops + manager_flops, draws=draws, passes=passes, manager_steps=steps, note=""))

    def e2e_rows(self) -> None:
        sz = self.sizes
        for decoder in ("flood", "adaptive"):
            self.e2e_single(decoder, sz.e2e_roots)
        seq = [r for r in self.rows if r.mode == "render-only" and r.decoder == "sequential"]
        roots, note = sz.e2e_roots, ""
        if seq:  # the slow baseline gets fewer roots when the full request would blow the budget
            per_root = seq[-1].seconds / seq[-1].roots
            fit = int(sz.row_budget_s / per_root)  # its warm-up is small: one run fits
            if fit < roots:
                roots, note = max(8, fit), f"{max(8, fit)} roots, not {sz.e2e_roots}: row budget"
        self.e2e_single("sequential", roots, note)
        self.sweep("e2e batched", sz.batch, self.e2e_batched)

    # -- the autoregressive peer --

    def peer_row(self, B: int, n: int, graph: bool, compile: bool = False, fused: bool = False) -> BenchRow:
        stream = "single" if B == 1 else "batched"
        kind = ("graph" if graph else "eager") + ("+compile" if compile else "") + ("+fused" if fused else "")
        name = f"AR peer {stream} {kind}" + (f" B={B}" if B > 1 else "")
        started = self.start(f"{name} ({n} tokens each)")
        ar = ARStream(self.peer, B, self.sampling, self.dev, self.dt, graph, 0, compile=compile, fused=fused)
        prompt = torch.tensor(self.tok.encode_chunks("\n"))

        def run(n=n):
            before = ar.forward_passes
            ar.start(prompt)
            return ar.generate(n), ar.forward_passes - before  # (B, n) chunk ids

        t = self.measure(run, lambda: run(2))
        out, passes = t.result
        texts = [self.tok.decode_chunks(r) for r in out.tolist()]
        return self.add(self.row(
            t, started, name=name, mode="autoregressive", stream=stream, decoder="ARStream " + kind, k=NA,
            model="AR peer", roots=NA, requests=B, tokens=B * n, chars=sum(map(len, texts)), fidelity=NA,
            cer=NA, heldout_bpc=self.quality()["peer"], sample_bpc=self.bpc(texts),
            flops=ar_flops(self.peer.config, B, len(prompt), n), draws=B * n, passes=passes,
            manager_steps=NA, note=""))

    def hf_row(self, B: int, n: int) -> BenchRow:
        from .hf_gpt2 import to_hf_gpt2
        import transformers
        transformers.logging.set_verbosity_error()
        name = f"HF generate B={B}"
        started = self.start(f"{name} ({n} tokens each)")
        hf = to_hf_gpt2(self.peer)
        prompt = torch.tensor([self.tok.encode_chunks("\n")[-1:]] * B, device=self.dev)  # (B, 1)

        def run(n=n):
            torch.manual_seed(0)  # generate() samples from the global generator
            out = hf.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=True,
                              temperature=TEMPERATURE, top_k=0, max_new_tokens=n, min_new_tokens=n,
                              pad_token_id=0)
            return out[:, prompt.size(1):]  # (B, n) new chunk ids

        t = self.measure(run, lambda: run(2))
        texts = [self.tok.decode_chunks(r) for r in t.result.tolist()]
        ctx = self.peer.config.context
        return self.add(self.row(
            t, started, name=name, mode="autoregressive", stream="single" if B == 1 else "batched",
            decoder="transformers generate", k=NA, model="AR peer", roots=NA, requests=B, tokens=B * n,
            chars=sum(map(len, texts)), fidelity=NA, cer=NA, heldout_bpc=self.quality()["peer"],
            sample_bpc=self.bpc(texts), flops=hf_generate_flops(self.peer.config, B, n), draws=B * n,
            passes=n, manager_steps=NA,
            note=f"{n} new tokens: GPT-2's learned positions end at the context ({ctx})"))

    def peer_batches(self) -> tuple:
        """Every B an end-to-end row was measured at, so each has its peer beside it, and the
        peer's own further batches."""
        return tuple(sorted({r.requests for r in self.rows if r.mode == "end-to-end" and r.requests > 1}
                            | set(self.sizes.peer_batch)))

    def peer_rows(self) -> None:
        sz = self.sizes
        if self.peer is None:
            self.skipped.append(f"AR peer rows: {self.model_dir} has no peer (train it with --parts peer)")
            return
        graphs = (True, False) if self.cuda else (False,)
        for g in graphs:
            self.peer_row(1, sz.peer_tokens, g)
        self.sweep("AR peer batched", self.peer_batches(), lambda B: self.peer_row(B, sz.peer_tokens_batched,
                                                                                 self.cuda))
        if importlib.util.find_spec("transformers") is None:
            self.skipped.append("HF generate rows: transformers is not installed "
                                "(pip install 'fractal-flood[hf]')")
            return
        n = sz.hf_tokens or self.peer.config.context - 1
        for B in sz.hf_batch:
            self.hf_row(B, n)

    # -- the AR peer in CTranslate2 --

    def engine_problem(self) -> Optional[str]:
        """None, or why this run has no CTranslate2 rows."""
        if self.peer is None:
            return f"{self.model_dir} has no peer (train it with --parts peer)"
        if self.cuda:
            return "measured on the CPU only (bench --device cpu)"
        if not ct2_peer.available():
            missing = [m for m in ("ctranslate2", "transformers") if importlib.util.find_spec(m) is None]
            return f"{' and '.join(missing)} not installed ({ct2_peer.INSTALL_HINT})"
        return ct2_peer.convertible(self.judge)

    def ct2_row(self, engine: "ct2_peer.CT2Peer", B: int, n: int, heldout_bpc) -> BenchRow:
        stream = "single" if B == 1 else "batched"
        threads = f"{engine.threads} thread" + ("s" if engine.threads > 1 else "")
        name = f"CT2 peer {stream} {engine.compute_type} {threads}" + (f" B={B}" if B > 1 else "")
        started = self.start(f"{name} ({n} tokens each)")
        prompt = self.tok.encode_chunks("\n")

        def run(n=n):
            before = engine.calls
            return engine.generate([prompt] * B, n, self.sampling), engine.calls - before

        t = self.measure(run, lambda: run(2))
        out, calls = t.result
        texts = [self.tok.decode_chunks(r) for r in out]
        return self.add(self.row(
            t, started, name=name, mode="autoregressive", stream=stream,
            decoder=f"ctranslate2 {engine.compute_type}, {threads}", k=NA, model="AR peer", roots=NA, requests=B,
            tokens=B * n, chars=sum(map(len, texts)), fidelity=NA, cer=NA, heldout_bpc=heldout_bpc,
            sample_bpc=self.bpc(texts), flops=ct2_peer.ct2_flops(self.peer.config, B, len(prompt), n),
            draws=B * n, passes=calls + n, manager_steps=NA, dtype=engine.compute_type,
            note=f"CTranslate2 generate_batch, {threads}; sampled at temperature {TEMPERATURE} from the whole "
                 f"vocabulary by its own generator (seed 0 at load); windows as ARStream's; held-out bpc scored by CTranslate2 "
                 f"in {engine.compute_type}"))

    def ct2_rows(self) -> None:
        """The peer converted (``to_hf_gpt2`` -> CTranslate2) into a temporary folder, then
        for float32 and int8, one thread and all the cores: single-stream and batched rows."""
        why = self.engine_problem()
        if why:
            self.skipped.append(f"CTranslate2 rows: {why}")
            return
        sz = self.sizes
        ctx = self.peer.config.context
        started = self.start("CTranslate2: converting the AR peer")
        chunks = torch.tensor(self.tok.encode_chunks(self.heldout_text), dtype=torch.long)
        chars_per_chunk = len(self.heldout_text) / len(chunks)
        threads = sorted({1, os.cpu_count() or 1})
        batches = tuple(sorted(set(self.peer_batches()) | set(sz.engine_batch)))
        with tempfile.TemporaryDirectory(prefix="fractal-flood-ct2-") as tmp:
            path = ct2_peer.convert(self.judge, Path(tmp) / "peer")
            self.log(f"  converted in {time.perf_counter() - started:.1f} s")
            for ct in ct2_peer.COMPUTE_TYPES:
                bpc = NA
                for th in threads:
                    engine = ct2_peer.CT2Peer(path, ctx, ct, th)
                    if bpc == NA:
                        bpc = bits_per_char_of_loss(engine.heldout_loss(chunks, sz.heldout_windows), chars_per_chunk)
                    self.ct2_row(engine, 1, sz.peer_tokens, bpc)
                    # run last, past the deadline: each size still has to fit the row budget
                    self.sweep(f"CT2 peer batched {ct} {th} thread(s)", batches,
                               lambda B: self.ct2_row(engine, B, sz.peer_tokens_batched, bpc), deadline=False)

    def fused_rows(self) -> None:
        """The decode step as Triton kernels (``fused_step.py``), manager and AR peer alike,
        in their CUDA graphs; on a GPU only. Skipped with a note when Triton is missing."""
        if importlib.util.find_spec("triton") is None:
            self.skipped.append("fused-step rows: triton is not installed")
            return
        self.e2e_single("flood", self.sizes.e2e_roots, fused=True)
        if self.peer is not None:  # a CUDA graph on a GPU (the tests run this in Triton's interpreter)
            self.peer_row(1, self.sizes.peer_tokens, self.cuda, fused=True)

    def compiled_rows(self) -> None:
        """torch.compile of the decode step (manager and AR peer alike), on a GPU only: it
        fuses the step's small kernels; the first call compiles (tens of seconds, warm-up)."""
        self.e2e_single("flood", self.sizes.e2e_roots, compile=True)
        if self.peer is not None:
            self.peer_row(1, self.sizes.peer_tokens, True, compile=True)

    # -- another model's render, for a same-run ratio --

    def baseline_row(self, model_dir) -> Optional[BenchRow]:
        """Render-only flood K=1 at R=256 with another model directory (e.g. the previous
        default), in this process and dtype, so the render-only target's 'x today's' is a
        same-run ratio.
        A directory that does not load is reported as skipped."""
        try:
            tok = ckpt.load_tokenizer(model_dir)
            renderer, _ = ckpt.load_renderer(model_dir, tok, self.dev, self.dt)
            held = self.heldout_roots(tok, self.corpus)
        except (FractalFloodError, OSError, ValueError, KeyError, RuntimeError) as e:
            self.skipped.append(f"baseline model {model_dir}: does not load with this version "
                                f"({str(e).splitlines()[0] if str(e) else type(e).__name__})")
            return None
        R = BASELINE_R
        name = f"baseline render flood k=1 R={R}"
        started = self.start(f"{name} ({model_dir})")
        dec = make_decoder("flood", renderer, tok.alphabet, self.options(1))
        roots = held.repeat(-(-R // len(held)))[:R].to(self.dev)
        t = self.measure(lambda: dec.render(roots), lambda: dec.render(roots[:2]))
        res = t.result
        fid, cer = render_fidelity(tok, roots.tolist(), res.root_texts())
        return self.add(self.row(
            t, started, name=name, mode="render-only", stream="single", decoder="flood", k=1, model="baseline",
            roots=R, requests=1, tokens=res.num_chunks, chars=len(res.tokens), fidelity=fid, cer=cer,
            heldout_bpc=NA, sample_bpc=NA, flops=res.flops, draws=res.draws, passes=res.passes,
            manager_steps=0, note=f"model {model_dir}, renderer {renderer_size(renderer)}"))

    def baseline_e2e_row(self, model_dir) -> Optional[BenchRow]:
        """Single-stream end-to-end flood K=1 with another model directory (the previous
        default), same roots, sampling and seed as ``e2e single flood k=1``: the target
        'speed up by the characters-per-step ratio' as a same-run ratio."""
        try:
            m = ckpt.load_model_dir(model_dir, self.dev, self.dt, optional=("peer",))
        except (FractalFloodError, OSError, ValueError, KeyError, RuntimeError) as e:
            self.skipped.append(f"baseline model {model_dir}: does not load with this version "
                                f"({str(e).splitlines()[0] if str(e) else type(e).__name__})")
            return None
        roots = self.sizes.e2e_roots
        name = "baseline e2e single flood k=1"
        started = self.start(f"{name} ({model_dir}, {roots} roots)")
        pipe = TextPipeline(m.tokenizer, m.manager, m.renderer, self.dev, self.dt, "flood", self.options())
        t = self.measure(lambda: pipe.generate("", roots, self.sampling, seed=0, block_roots=E2E_BLOCK_ROOTS),
                         lambda: pipe.generate("", 4, self.sampling))
        g = t.result
        texts = [s for r in g.renders for s in r.root_texts()]
        fid, cer = render_fidelity(m.tokenizer, g.root_ids, texts)
        flops = sum(r.flops for r in g.renders) + ar_flops(m.manager.config, 1, len(pipe.prompt_ids("")),
                                                           g.manager_steps)
        return self.add(self.row(
            t, started, name=name, mode="end-to-end", stream="single", decoder="flood", k=1, model="baseline",
            roots=len(g.root_ids), requests=1, tokens=g.num_chunks, chars=len(g.text), fidelity=fid, cer=cer,
            heldout_bpc=NA, sample_bpc=NA, flops=flops, draws=sum(r.draws for r in g.renders),
            passes=sum(r.passes for r in g.renders), manager_steps=g.manager_steps,
            note=f"model {model_dir}, renderer {renderer_size(m.renderer)}"))

    def reference_quality(self) -> dict:
        """Held-out bits per char of each model, and of the peer's own samples, for scale."""
        q = self.quality()
        peer_rows = [r for r in self.rows if r.decoder.startswith("ARStream") and r.stream == "single"]
        return {"temperature": TEMPERATURE, "windows": self.sizes.quality_windows,
                "heldout_windows": self.sizes.heldout_windows,
                "manager_heldout_bpc": q["manager"], "peer_heldout_bpc": q["peer"],
                "peer_samples_bpc": peer_rows[0].sample_bpc if peer_rows else NA}

    def report(self, command: str = "", partial: bool = False) -> dict:
        """Everything measured so far: {"run", "quality_reference", "rows", "skipped", "targets"}."""
        order = {"render-only": 0, "end-to-end": 1, "autoregressive": 2}
        rows = [r.as_dict() for r in sorted(self.rows, key=lambda r: order[r.mode])]  # stable within a mode
        hardware = "gpu" if self.cuda else "cpu"
        run = {**self.run_info, "command": command, "quick": self.sizes.name == "quick", "partial": partial,
               "hardware": hardware,
               "repeats": self.sizes.repeats, "model_dir": str(self.model_dir), "fractal_flood": __version__,
               "python": platform.python_version(), "platform": platform.platform(),
               "sizes": asdict(self.sizes), "wall_s": self.elapsed(), "torch_threads": torch.get_num_threads(),
               "note": "" if self.cuda else "CPU run: only ratios measured in one run mean anything; "
                                            "the absolute targets are GPU figures"}
        return {"run": run, "quality_reference": self.reference_quality(), "rows": rows,
                "skipped": list(self.skipped), "targets": compute_targets(rows, hardware)}


# ---- entry points ----------------------------------------------------------------------------

ROW_SETS = ("all", "vs-peer")  # every row; or the rows the AR peer comparisons need


def run_bench(model_dir=None, device: str = "auto", dtype: str = "auto", quick: bool = False,
              repeats: Optional[int] = None, log: Callable[[str], None] = lambda s: None,
              command: str = "", on_row: Optional[Callable[[dict], None]] = None,
              baseline_model=None, corpus=None, rows: str = "all", engines: bool = False,
              threads: Optional[int] = None) -> dict:
    """Measure every row; -> {"run", "quality_reference", "rows", "skipped", "targets"}.

    ``on_row`` gets the partial report after each row, so a run cut short still leaves
    its numbers. The cheap rows every target needs run first; the long R sweeps last.
    ``baseline_model``: another model directory whose render-only flood K=1 at R=256 and
    single-stream end-to-end flood are measured in this run. ``corpus``: whose held-out tail to render (default: the shipped one).
    ``rows="vs-peer"``: only the single-stream and batched end-to-end flood and every AR peer
    row (ours, transformers, CTranslate2). ``engines``: the CTranslate2 rows are required
    (FractalFloodError before any row when they cannot run). ``threads``: torch's threads."""
    if rows not in ROW_SETS:
        raise ValueError(f"rows must be one of {ROW_SETS}, got {rows!r}")
    if engines:
        ct2_peer.require()
    if threads:
        torch.set_num_threads(threads)
    sizes = QUICK if quick else FULL if resolve_device(device).type == "cuda" else CPU_FULL
    if repeats:
        sizes = replace(sizes, repeats=repeats)
    b = Bench(model_dir, device, dtype, sizes, log, corpus)
    if engines and b.engine_problem():
        raise FractalFloodError(f"--engines: no CTranslate2 rows: {b.engine_problem()}")
    if on_row is not None:
        b.on_row = lambda: on_row(b.report(command, partial=True))
    b.log(f"[bench] {b.run_info['device']}, {b.run_info['dtype']}, torch {torch.__version__}, "
          f"{sizes.name} sizes, {sizes.repeats} repeat(s)")
    if rows == "vs-peer":
        b.e2e_single("flood", sizes.e2e_roots)
        b.sweep("e2e batched", sizes.batch, b.e2e_batched)
        b.peer_rows()
        b.ct2_rows()
        return b.report(command)
    b.render_sequential()
    b.e2e_rows()
    b.peer_rows()
    b.render_floods()
    if baseline_model is not None:
        b.baseline_row(baseline_model)
        b.baseline_e2e_row(baseline_model)
    b.ct2_rows()  # after the sweeps, which stop at the deadline; its batches stop at the budget only
    if b.cuda:  # last: compiling costs the most wall time, and the rows above stand without it
        b.fused_rows()
        b.compiled_rows()
    return b.report(command)


def _command(args) -> str:
    parts = ["fractal-flood", "bench"]
    for flag, dest in [("--model", "model"), ("--device", "device"), ("--dtype", "dtype"),
                       ("--repeats", "repeats"), ("--json", "json_path"), ("--markdown", "markdown"),
                       ("--plot", "plot"), ("--baseline-model", "baseline_model"), ("--corpus", "corpus"),
                       ("--rows", "rows"), ("--threads", "threads")]:
        v = getattr(args, dest, None)
        if v is not None and not (dest in ("device", "dtype") and v == "auto") and not (dest == "rows" and v == "all"):
            parts += [flag, str(v)]
    return " ".join(parts + (["--engines"] if getattr(args, "engines", False) else [])
                    + (["--quick"] if args.quick else []))


def run_bench_cli(args) -> int:
    from . import report as report
    outs = [p for p in (args.json_path, args.markdown, args.plot) if p]
    for p in outs:  # fail before a long run, not after it
        if Path(p).is_dir():
            raise FractalFloodError(f"cannot write {p}: it is a directory; give a file name")
        if not Path(p).parent.is_dir():
            raise FractalFloodError(f"cannot write {p}: folder {Path(p).parent} does not exist")
    if len(set(map(str, outs))) < len(outs):
        raise FractalFloodError("--json, --markdown and --plot must name different files")
    for p in outs:  # a folder we cannot create files in (/proc, read-only, full): now, not after the run
        check_writable(Path(p))
    if args.plot:
        report.require_matplotlib()
    if getattr(args, "engines", False):
        ct2_peer.require()
    baseline = getattr(args, "baseline_model", None)
    if baseline is not None and not Path(baseline).is_dir():
        raise FractalFloodError(f"--baseline-model {baseline}: not a directory")
    partial = (lambda d: report.write_json(d, args.json_path)) if args.json_path else None
    data = run_bench(args.model, args.device, args.dtype, args.quick, args.repeats,
                     lambda s: print(s, file=sys.stderr, flush=True), _command(args), partial, baseline,
                     getattr(args, "corpus", None), getattr(args, "rows", "all"), getattr(args, "engines", False),
                     getattr(args, "threads", None))
    print(report.format_table(data))
    if args.json_path:
        report.write_json(data, args.json_path)
    if args.markdown:
        write_text(Path(args.markdown), report.to_markdown(data))
    if args.plot:
        report.write_plot(data, args.plot)
    for p in outs:
        print(f"wrote {p}", file=sys.stderr)
    return 0
