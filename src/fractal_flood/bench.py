"""``fractal-flood bench``: the decoders against the sequential and autoregressive baselines.

One model, one device, one dtype per run, so every ratio in the report is measured under
the same conditions. Rows (definitions in docs/DESIGN.md; a token is one level-1 chunk):

- render-only (held-out roots -> text): the sequential baseline, best-of-K floods (K swept,
  16 is the plan's) and the adaptive flood, over a sweep of the number of roots R;
- end-to-end (prompt -> text, manager included): one request through ``TextPipeline``
  (single-stream) per decoder, and B requests at once (manager batched, one flood);
- the AR peer a user would pick instead (a GPT of the renderer's size over chunks): our
  static-cache ``ARStream`` (CUDA graph and eager) and Hugging Face ``generate()``.

Speed alone would reward a decoder that writes wrong text fast, so each row also carries
render fidelity, character error rate and bits per character under the trained AR peer.
Sizes grow until a row would cost more than its budget; what was skipped is reported.
"""

from __future__ import annotations

import datetime
import importlib.util
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from . import __version__
from . import checkpoint as ckpt
from .autoregress import ARStream
from .bench_report import NA, compute_targets
from .corpus import load_corpus
from .decoding import DecodeOptions, make_decoder
from .device import describe, resolve_device, resolve_dtype
from .engine import Engine, Request
from .errors import FractalFloodError, UnknownCharacterError
from .metrics import bits_per_char, render_fidelity
from .pairs import TokenStream
from .pipeline import TextPipeline
from .sampling import SamplingConfig
from .timing import Timing, device_sync, measure

TEMPERATURE = 0.8  # manager and AR peer sampling (the CLI's default), so their texts compare

ROW_FIELDS = ("name", "mode", "stream", "decoder", "k", "roots", "requests", "tokens", "chars",
              "seconds", "tokens_per_s", "chars_per_s", "plan_chars_div_4_per_s", "fidelity", "cer",
              "bpc", "draws", "passes", "manager_steps", "repeats", "times", "wall_s", "note",
              "device", "dtype", "torch", "date")


@dataclass(frozen=True)
class Sizes:
    """What one run measures, and the limits that keep it within minutes."""

    name: str  # quick or full
    roots: tuple  # render-only sweep of R, ascending (floods)
    seq_roots: tuple  # render-only sequential baseline: small R only, it is slow
    ks: tuple  # best-of-K sweep; 16 is the plan's
    e2e_roots: int  # single-stream request; 900 roots ~ 1,020 tokens
    batch: tuple  # batched end-to-end: requests B
    roots_per_request: int
    peer_tokens: int  # AR peer single-stream
    peer_batch: tuple
    peer_tokens_batched: int
    hf_batch: tuple
    hf_tokens: Optional[int]  # None: context - 1, all that GPT-2's learned positions allow
    repeats: int
    row_budget_s: float  # a row's timed runs fit in about this; a sweep stops before warm-up + run would not
    sweep_deadline_s: float  # past this, sweeps stop growing (one row of each kind still runs)
    quality_windows: int  # peer windows (of its context) scored per row for bits per char
    small_warmup: bool  # warm up on a small input (one-time costs only), not the row's own


FULL = Sizes(name="full", roots=(64, 256, 1024, 4096, 16384, 65536), seq_roots=(16, 64, 256),
             ks=(1, 4, 16), e2e_roots=900, batch=(64, 256, 1024), roots_per_request=128, peer_tokens=1024,
             peer_batch=(64, 256, 1024), peer_tokens_batched=128, hf_batch=(1, 64), hf_tokens=None,
             repeats=3, row_budget_s=12.0, sweep_deadline_s=150.0, quality_windows=32,
             small_warmup=False)
# A CPU full run: same kinds of rows, batched sizes a 2-core machine finishes, so the
# render sweeps (run last) still get their share of the time.
CPU_FULL = replace(FULL, name="full-cpu", batch=(4, 16), roots_per_request=32, peer_batch=(4, 16, 64),
                   sweep_deadline_s=240.0)
QUICK = Sizes(name="quick", roots=(4, 16), seq_roots=(4,), ks=(1, 4, 16), e2e_roots=24,
              batch=(4,), roots_per_request=8, peer_tokens=32, peer_batch=(4,), peer_tokens_batched=8,
              hf_batch=(1, 64), hf_tokens=8, repeats=1, row_budget_s=2.0, sweep_deadline_s=20.0,
              quality_windows=2, small_warmup=True)


# ---- the bench -------------------------------------------------------------------------------

class Bench:
    """Loads the model once and measures rows into ``self.rows`` (dicts with ROW_FIELDS)."""

    def __init__(self, model_dir, device: str, dtype: str, sizes: Sizes,
                 log: Callable[[str], None] = lambda s: None):
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
        try:  # the held-out tail the manager was validated on (pairs.HELDOUT_FRACTION)
            self.heldout = TokenStream.split(self.tok.encode(load_corpus())).val
            self.heldout_text = self.tok.decode(self.heldout.tolist())
        except UnknownCharacterError as e:
            raise FractalFloodError(f"the bench renders the tail of the shipped corpus, which this "
                                    f"model's alphabet does not cover: {e}") from None
        self.rows, self.skipped = [], []
        self.on_row: Optional[Callable[[], None]] = None  # called after each row (partial reports)
        self._heldout_bpc = None
        self.run_info = {"device": describe(self.dev), "dtype": str(self.dt).replace("torch.", ""),
                         "torch": torch.__version__,
                         "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}

    # -- helpers --

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def roots(self, n: int) -> torch.Tensor:
        """The first n held-out roots, repeated when the tail has fewer: (n,) on the device."""
        reps = -(-n // len(self.heldout))
        return self.heldout.repeat(reps)[:n].to(self.dev)

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

    def add(self, name, mode, stream, decoder, k, t: Timing, started: float, **work) -> dict:
        """One row: the work done (tokens, chars, roots, ...) over the median time."""
        s = t.seconds
        row = {"name": name, "mode": mode, "stream": stream, "decoder": decoder, "k": k,
               "requests": 1, "seconds": s, "tokens_per_s": work["tokens"] / s,
               "chars_per_s": work["chars"] / s, "plan_chars_div_4_per_s": work["chars"] / 4 / s,
               "repeats": t.repeats, "times": t.times, "note": "", **work, **self.run_info}
        row["wall_s"] = time.perf_counter() - started
        row = {f: row[f] for f in ROW_FIELDS}
        self.rows.append(row)
        if self.on_row is not None:
            self.on_row()
        fid = row["fidelity"]
        self.log(f"  {row['tokens_per_s']:,.0f} tokens/s, {s:.4g} s, fidelity "
                 f"{fid if fid == NA else f'{fid:.1%}'}")
        return row

    def start(self, name: str) -> float:
        self.log(f"[bench {self.elapsed():6.1f}s] {name}")
        return time.perf_counter()

    # -- render-only --

    def render_row(self, decoder: str, k, R: int) -> dict:
        name = f"render {decoder}" + (f" k={k}" if decoder == "flood" else "") + f" R={R}"
        started = self.start(name)
        dec = make_decoder(decoder, self.renderer, self.tok.alphabet, self.options(k if k != NA else 1))
        roots = self.roots(R)
        t = self.measure(lambda: dec.render(roots), lambda: dec.render(roots[:2]), decoder == "sequential")
        res = t.result
        fid, cer = render_fidelity(self.tok, roots.tolist(), res.root_texts())
        text = res.text
        row = self.add(name, "render-only", "single", decoder, k, t, started, roots=R,
                       tokens=res.num_chunks, chars=len(text), fidelity=fid, cer=cer,
                       bpc=self.bpc([text]), draws=res.draws, passes=res.passes, manager_steps=0)
        if R > len(self.heldout):
            row["note"] = f"the {len(self.heldout):,} held-out roots, repeated"
        return row

    def sweep(self, label: str, sizes: tuple, row_fn) -> list:
        """Rows at growing sizes; stop when the next would blow the row budget or deadline."""
        rows = []
        for i, n in enumerate(sizes):
            if i:
                per_run = rows[-1]["seconds"] * n / sizes[i - 1]  # throughput grows: pessimistic
                why = (f"predicted {2 * per_run:.1f} s > row budget {self.sizes.row_budget_s:g} s"
                       if 2 * per_run > self.sizes.row_budget_s else
                       f"sweep deadline {self.sizes.sweep_deadline_s:g} s passed"
                       if self.elapsed() > self.sizes.sweep_deadline_s else None)
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

    # -- end-to-end --

    def e2e_single(self, decoder: str, roots: int, note: str = "", compile: bool = False) -> dict:
        name = f"e2e single {decoder}" + (" k=1" if decoder == "flood" else "") + (" +compile" if compile else "")
        started = self.start(f"{name} ({roots} roots)")
        # one pipeline per decoder, made here and used only here: the manager owns one KV
        # cache, and a newer stream (or the batched rows) replaces it
        pipe = TextPipeline(self.tok, self.manager, self.renderer, self.dev, self.dt, decoder, self.options(),
                            compile=compile)
        t = self.measure(lambda: pipe.generate("", roots, self.sampling, seed=0),
                         lambda: pipe.generate("", 4, self.sampling), decoder == "sequential")
        g = t.result
        texts = [s for r in g.renders for s in r.root_texts()]
        fid, cer = render_fidelity(self.tok, g.root_ids, texts)
        row = self.add(name, "end-to-end", "single", decoder, 1 if decoder == "flood" else NA, t, started,
                       roots=len(g.root_ids), tokens=g.num_chunks, chars=len(g.text), fidelity=fid, cer=cer,
                       bpc=self.bpc([g.text]), draws=sum(r.draws for r in g.renders),
                       passes=sum(r.passes for r in g.renders), manager_steps=g.manager_steps)
        row["note"] = note
        return row

    def e2e_batched(self, B: int) -> dict:
        N = self.sizes.roots_per_request
        name = f"e2e batched flood k=1 B={B}"
        started = self.start(f"{name} ({N} roots each)")
        # the serving engine, all B requests in one round: one batched manager block, one
        # pooled flood (one decoder, seed 0) over every request's roots
        pipe = TextPipeline(self.tok, self.manager, self.renderer, self.dev, self.dt, "flood", self.options())
        engine = Engine(pipe, max_batch=B, block_roots=N, pooled_render=True)
        prompt = ""  # TextPipeline starts an empty prompt from a newline

        def run(n=N):
            texts = {}
            before = (engine.slots.steps_run, engine.draws, engine.passes)
            reqs = [Request(prompt, roots=n, sampling=self.sampling, seed=i) for i in range(B)]
            done = engine.run(reqs, lambda job, block: texts.setdefault(job.request.seed, []).extend(
                block.root_texts))
            work = [b - a for a, b in zip(before, (engine.slots.steps_run, engine.draws, engine.passes))]
            return done, [texts[c.request.seed] for c in done], work

        t = self.measure(run, lambda: run(2))
        done, root_texts, (steps, draws, passes) = t.result
        ids = [i for c in done for i in c.root_ids]
        texts = [s for per in root_texts for s in per]
        fid, cer = render_fidelity(self.tok, ids, texts)
        requests = [c.text for c in done]
        row = self.add(name, "end-to-end", "batched", "flood", 1, t, started, roots=B * N,
                       tokens=sum(c.chunks for c in done), chars=sum(map(len, requests)), fidelity=fid,
                       cer=cer, bpc=self.bpc(requests), draws=draws, passes=passes, manager_steps=steps)
        row["requests"] = B
        return row

    def e2e_rows(self) -> None:
        sz = self.sizes
        for decoder in ("flood", "adaptive"):
            self.e2e_single(decoder, sz.e2e_roots)
        seq = [r for r in self.rows if r["mode"] == "render-only" and r["decoder"] == "sequential"]
        roots, note = sz.e2e_roots, ""
        if seq:  # the slow baseline gets fewer roots when the full request would blow the budget
            per_root = seq[-1]["seconds"] / seq[-1]["roots"]
            fit = int(sz.row_budget_s / per_root)  # its warm-up is small: one run fits
            if fit < roots:
                roots, note = max(8, fit), f"{max(8, fit)} roots, not {sz.e2e_roots}: row budget"
        self.e2e_single("sequential", roots, note)
        self.sweep("e2e batched", sz.batch, self.e2e_batched)

    # -- the autoregressive peer --

    def peer_row(self, B: int, n: int, graph: bool, compile: bool = False) -> dict:
        stream = "single" if B == 1 else "batched"
        kind = ("graph" if graph else "eager") + ("+compile" if compile else "")
        name = f"AR peer {stream} {kind}" + (f" B={B}" if B > 1 else "")
        started = self.start(f"{name} ({n} tokens each)")
        ar = ARStream(self.peer, B, self.sampling, self.dev, self.dt, graph, 0, compile=compile)
        prompt = torch.tensor(self.tok.encode_chunks("\n"))

        def run(n=n):
            before = ar.forward_passes
            ar.start(prompt)
            return ar.generate(n), ar.forward_passes - before  # (B, n) chunk ids

        t = self.measure(run, lambda: run(2))
        out, passes = t.result
        texts = [self.tok.decode_chunks(r) for r in out.tolist()]
        row = self.add(name, "autoregressive", stream, "ARStream " + kind, NA, t,
                       started, roots=NA, tokens=B * n, chars=sum(map(len, texts)), fidelity=NA, cer=NA,
                       bpc=self.bpc(texts), draws=B * n, passes=passes, manager_steps=NA)
        row["requests"] = B
        return row

    def hf_row(self, B: int, n: int) -> dict:
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
        row = self.add(name, "autoregressive", "single" if B == 1 else "batched", "transformers generate",
                       NA, t, started, roots=NA, tokens=B * n, chars=sum(map(len, texts)), fidelity=NA,
                       cer=NA, bpc=self.bpc(texts), draws=B * n, passes=n, manager_steps=NA)
        row["requests"] = B
        ctx = self.peer.config.context
        row["note"] = f"{n} new tokens: GPT-2's learned positions end at the context ({ctx})"
        return row

    def peer_rows(self) -> None:
        sz = self.sizes
        if self.peer is None:
            self.skipped.append(f"AR peer rows: {self.model_dir} has no peer (train it with --parts peer)")
            return
        graphs = (True, False) if self.cuda else (False,)
        for g in graphs:
            self.peer_row(1, sz.peer_tokens, g)
        self.sweep("AR peer batched", sz.peer_batch,
                   lambda B: self.peer_row(B, sz.peer_tokens_batched, self.cuda))
        if importlib.util.find_spec("transformers") is None:
            self.skipped.append("HF generate rows: transformers is not installed "
                                "(pip install 'fractal-flood[hf]')")
            return
        n = sz.hf_tokens or self.peer.config.context - 1
        for B in sz.hf_batch:
            self.hf_row(B, n)

    def compiled_rows(self) -> None:
        """torch.compile of the decode step (manager and AR peer alike), on a GPU only: it
        fuses the step's small kernels; the first call compiles (tens of seconds, warm-up)."""
        self.e2e_single("flood", self.sizes.e2e_roots, compile=True)
        if self.peer is not None:
            self.peer_row(1, self.sizes.peer_tokens, True, compile=True)

    def reference_quality(self) -> dict:
        """Bits per char of held-out corpus text and of the peer's own samples, for scale."""
        if self._heldout_bpc is None:
            self._heldout_bpc = self.bpc([self.heldout_text])
        peer_rows = [r for r in self.rows if r["decoder"].startswith("ARStream") and r["stream"] == "single"]
        return {"temperature": TEMPERATURE, "windows": self.sizes.quality_windows,
                "heldout_bpc": self._heldout_bpc,
                "peer_samples_bpc": peer_rows[0]["bpc"] if peer_rows else NA}

    def report(self, command: str = "", partial: bool = False) -> dict:
        """Everything measured so far: {"run", "quality_reference", "rows", "skipped", "targets"}."""
        order = {"render-only": 0, "end-to-end": 1, "autoregressive": 2}
        rows = sorted(self.rows, key=lambda r: order[r["mode"]])  # stable: measuring order within a mode
        run = {**self.run_info, "command": command, "quick": self.sizes.name == "quick", "partial": partial,
               "repeats": self.sizes.repeats, "model_dir": str(self.model_dir), "fractal_flood": __version__,
               "python": platform.python_version(), "platform": platform.platform(),
               "sizes": asdict(self.sizes), "wall_s": self.elapsed(),
               "note": "" if self.cuda else "CPU run: only ratios measured in one run mean anything; "
                                            "the targets are GPU figures"}
        return {"run": run, "quality_reference": self.reference_quality(), "rows": rows,
                "skipped": list(self.skipped), "targets": compute_targets(rows)}


# ---- entry points ----------------------------------------------------------------------------

def run_bench(model_dir=None, device: str = "auto", dtype: str = "auto", quick: bool = False,
              repeats: Optional[int] = None, log: Callable[[str], None] = lambda s: None,
              command: str = "", on_row: Optional[Callable[[dict], None]] = None) -> dict:
    """Measure every row; -> {"run", "quality_reference", "rows", "skipped", "targets"}.

    ``on_row`` gets the partial report after each row, so a run cut short still leaves
    its numbers. The cheap rows every target needs run first; the long R sweeps last."""
    sizes = QUICK if quick else FULL if resolve_device(device).type == "cuda" else CPU_FULL
    if repeats:
        sizes = replace(sizes, repeats=repeats)
    b = Bench(model_dir, device, dtype, sizes, log)
    if on_row is not None:
        b.on_row = lambda: on_row(b.report(command, partial=True))
    b.log(f"[bench] {b.run_info['device']}, {b.run_info['dtype']}, torch {torch.__version__}, "
          f"{sizes.name} sizes, {sizes.repeats} repeat(s)")
    b.render_sequential()
    b.e2e_rows()
    b.peer_rows()
    b.render_floods()
    if b.cuda:  # last: compiling costs the most wall time, and the rows above stand without it
        b.compiled_rows()
    return b.report(command)


def _command(args) -> str:
    parts = ["fractal-flood", "bench"]
    for flag, dest in [("--model", "model"), ("--device", "device"), ("--dtype", "dtype"),
                       ("--repeats", "repeats"), ("--json", "json_path"), ("--markdown", "markdown"),
                       ("--plot", "plot")]:
        v = getattr(args, dest, None)
        if v is not None and not (dest in ("device", "dtype") and v == "auto"):
            parts += [flag, str(v)]
    return " ".join(parts + (["--quick"] if args.quick else []))


def run_bench_cli(args) -> int:
    from . import bench_report as report
    outs = [p for p in (args.json_path, args.markdown, args.plot) if p]
    for p in outs:  # fail before a long run, not after it
        if not Path(p).parent.is_dir():
            raise FractalFloodError(f"cannot write {p}: folder {Path(p).parent} does not exist")
    if args.plot:
        report.require_matplotlib()
    partial = (lambda d: report.write_json(d, args.json_path)) if args.json_path else None
    data = run_bench(args.model, args.device, args.dtype, args.quick, args.repeats,
                     lambda s: print(s, file=sys.stderr, flush=True), _command(args), partial)
    print(report.format_table(data))
    if args.json_path:
        report.write_json(data, args.json_path)
    if args.markdown:
        ckpt.write_text(Path(args.markdown), report.to_markdown(data))
    if args.plot:
        report.write_plot(data, args.plot)
    for p in outs:
        print(f"wrote {p}", file=sys.stderr)
    return 0
