"""The batched generation engine: many requests at once, each with its own everything.

Each request has its own prompt, length (roots and/or characters), manager sampling, stop
strings, seed and decoder settings. The engine runs *rounds*: at the start of a round,
waiting requests are prefilled into free manager slots (``slots.SlotManager``) and
cancelled ones leave; then the manager plans one block for every active request in one
batched step per root, and waiting requests join every ``join_every`` steps of it; then
each request's new roots are rendered and its text is streamed to it. A request that
arrives while others run thus starts within a few manager steps.

Exactness: the manager's draws are keyed on (seed, step) per row, and every request's
block is rendered with the request's own seed, exactly as a solo run renders it
(:func:`generate_solo`, the plain reference path). So a request's text does not depend
on what else is running (tested). By default (``pooled_render=True``) the blocks of all
requests with the same decoder settings are rendered in one flood, each item numbered
within its request and drawn with its request's seed (``render.flood.render``); with
``pooled_render=False`` each block gets its own flood call (the reference; the same text,
more, smaller passes).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Callable, Optional

import torch

from ..device import synchronize
from ..errors import FractalFloodError
from ..manager.slots import SlotManager
from ..render.options import DecodeOptions
from ..render.result import RenderResult, advance, split_render
from ..sampling.config import SamplingConfig
from .request import (DEFAULT_BLOCK_ROOTS, DEFAULT_MANAGER, DEFAULT_ROOTS,  # noqa: F401
                      DEFAULT_SERVE_BLOCK_ROOTS, GenerationRequest,
                      RendererSettings)
from .text_limit import TextLimit



def Request(prompt: str = "", roots: Optional[int] = None, max_chars: Optional[int] = None,
            sampling: Optional[SamplingConfig] = None, seed: int = 0, stop: tuple = (),
            decoder: Optional[str] = None, options: Optional[DecodeOptions] = None) -> GenerationRequest:
    """A :class:`GenerationRequest` from the engine's keyword names: ``sampling`` is the
    manager's, ``decoder`` and ``options`` the renderer's (``None``: the defaults)."""
    return GenerationRequest(prompt, roots, max_chars, stop, seed, DEFAULT_MANAGER if sampling is None else sampling,
                             RendererSettings(decoder, options))


@dataclass
class Block:
    """One rendered block of one request, as streamed to it."""

    root_ids: list
    root_texts: list
    text: str  # new text, safe to show (a possible stop string's start is held back)
    render: Optional[RenderResult]  # None for a pooled render (shared by several requests)
    energies: list  # per level, the chosen energy of each of this block's items
    chunk_counts: list  # per level, children kept per item
    manager_s: float
    flood_s: float


@dataclass
class Completion:
    """A finished (or cancelled) request."""

    request: GenerationRequest
    text: str
    root_ids: list
    finish_reason: str  # stop, length or cancelled
    blocks: int
    chunks: int
    manager_s: float
    flood_s: float
    seconds: float  # submit to finish

    def to_dict(self) -> dict:
        r = self.request
        return {"prompt": r.prompt, "text": self.text, "seed": r.seed, "finish_reason": self.finish_reason,
                "roots": len(self.root_ids), "chunks": self.chunks, "chars": len(self.text),
                "blocks": self.blocks, "seconds": self.seconds, "manager_seconds": self.manager_s,
                "flood_seconds": self.flood_s, "root_ids": self.root_ids}


class Job:
    """A request in the engine: its state and the callback that receives its blocks."""

    def __init__(self, request: GenerationRequest, prompt_ids: list, decoder,
                 on_block: Optional[Callable[["Job", Block], None]] = None,
                 on_done: Optional[Callable[["Job"], None]] = None):
        self.request, self.prompt_ids, self.decoder, self.on_block = request, prompt_ids, decoder, on_block
        self.on_done = on_done
        self.limit = TextLimit(request.stop, request.max_chars)
        self.root_ids: list = []
        self.offsets = [0] * decoder.model.num_levels  # items rendered so far, per level
        self.blocks = self.chunks = 0
        self.manager_s = self.flood_s = 0.0
        self.submitted = time.perf_counter()
        self.cancelled = False
        self.error: Optional[Exception] = None
        self.done = threading.Event()
        self.completion: Optional[Completion] = None

    @property
    def remaining(self) -> int:
        return self.request.root_budget - len(self.root_ids)

    def cancel(self) -> None:
        """Frees the slot at the next block boundary (a disconnected client)."""
        self.cancelled = True

    def _finish(self, reason: str) -> None:
        self.completion = Completion(self.request, self.limit.result, self.root_ids, reason, self.blocks,
                                     self.chunks, self.manager_s, self.flood_s,
                                     time.perf_counter() - self.submitted)
        self.done.set()
        if self.on_done is not None:
            self.on_done(self)


def prepared(pipe, request: GenerationRequest) -> tuple:
    """``request`` validated (unknown characters, numbers, decoder: a FractalFloodError names
    the first), with its prompt's ids and its decoder: (request, prompt_ids, decoder)."""
    request = request.validated()
    pipe.tokenizer.check_text(request.prompt)
    for s in request.stop:
        pipe.tokenizer.check_text(s)
    try:
        decoder = pipe.decoder_for(request.seed, request.renderer.decoder, request.renderer.options)
    except ValueError as e:
        raise FractalFloodError(str(e)) from None
    return request, pipe.prompt_ids(request.prompt), decoder


class QueueFull(FractalFloodError):
    """More requests waiting than the engine accepts (a server answers 503)."""


class Engine:
    """Continuous batching over one pipeline's models. Thread-safe ``submit``; rounds run by
    :meth:`step` (or a background thread: :meth:`start`)."""

    def __init__(self, pipe, max_batch: int = 32, block_roots: int = DEFAULT_SERVE_BLOCK_ROOTS, max_queue: int = 1024,
                 pooled_render: bool = True, join_every: int = 4):
        if max_batch < 1 or block_roots < 1 or max_queue < 0 or join_every < 1:
            raise FractalFloodError("max_batch, block_roots and join_every must be >= 1, max_queue >= 0")
        self.join_every = join_every
        self.pipe, self.max_batch, self.block_roots, self.max_queue = pipe, max_batch, block_roots, max_queue
        self.pooled_render = pooled_render
        self.slots = SlotManager(pipe.manager, max_batch, pipe.device)
        self._waiting: deque = deque()
        self._lock = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        self._stopping = False
        self._round: dict = {}  # the running round's jobs (some may have left their slots)
        self.rounds = 0
        self.busy_s = 0.0  # seconds spent in rounds
        self.flood_s = 0.0  # of which in renders (floods)
        self.draws = self.passes = self.flops = 0  # renderer work, over all renders
        self.on_round: Optional[Callable[[int, int, float], None]] = None  # (active, waiting, seconds)

    # ---- intake ---------------------------------------------------------------------------

    def prepare(self, request: GenerationRequest, on_block=None, on_done=None) -> Job:
        """Validate ``request`` (unknown characters, numbers, decoder) and make its job."""
        request, prompt_ids, decoder = prepared(self.pipe, request)
        return Job(request, prompt_ids, decoder, on_block, on_done)

    def submit(self, request: GenerationRequest, on_block=None, on_done=None) -> Job:
        job = self.prepare(request, on_block, on_done)
        self.enqueue(job)
        return job

    def enqueue(self, job: Job) -> None:
        """Queue a prepared job (QueueFull when the queue is full)."""
        with self._lock:
            # free slots take waiting requests at the next boundary: they do not count
            if len(self._waiting) >= self.max_queue + self.slots.free:
                raise QueueFull(f"the queue is full ({self.max_queue} waiting); retry shortly")
            self._waiting.append(job)
            self._lock.notify_all()

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        return self.slots.active

    @property
    def steps_run(self) -> int:
        """Batched manager steps run (each over every active row)."""
        return self.slots.steps_run

    @property
    def row_steps(self) -> int:
        """Rows in those steps, summed."""
        return self.slots.row_steps

    # ---- rounds ---------------------------------------------------------------------------

    def _admit(self, cancel: bool) -> int:
        """Drop cancelled requests (``cancel``: between rounds only) and prefill waiting ones
        into free slots. Returns how many joined."""
        if not cancel and not self._waiting:  # nothing to take: no lock (the HTTP thread takes it
            return 0  # to submit; one that arrives now joins at the next join point)
        with self._lock:
            if cancel:
                for job in [j for j in self._waiting if j.cancelled]:
                    self._waiting.remove(job)
                    job._finish("cancelled")
                for job in [j for j in self.slots.owner if j.cancelled]:
                    self.slots.remove(job)
                    job._finish("cancelled")
            admit = []
            while self._waiting and self.slots.free > len(admit):
                admit.append(self._waiting.popleft())
        for job in admit:
            self.slots.add(job, job.prompt_ids, job.request.manager, job.request.seed)
        return len(admit)

    @torch.no_grad()
    def step(self) -> bool:
        """One round: up to ``block_roots`` manager steps for every active request, waiting
        requests joining every ``join_every`` steps; then every request's new roots are
        rendered (one pooled flood) and streamed. A request whose roots are all drawn at a
        join point is rendered and answered there, and its slot goes to a waiting one.
        Returns False when there was nothing to do.

        A request that joins mid-round gets a shorter first block; its text is the same,
        since item numbers run on across blocks (``Job.offsets``)."""
        t0 = time.perf_counter()
        self._admit(cancel=True)
        if not self.slots.owner:
            return False
        new = self._round = {job: [] for job in self.slots.owner}  # job -> its roots this round
        n = min(self.block_roots, max(j.remaining for j in self.slots.owner))
        done = 0
        while done < n:
            k = min(self.join_every, n - done)
            host = self.slots.generate(k).tolist()  # (active, k); waits for the manager
            for job, row in zip(self.slots.owner, host):
                got = new.setdefault(job, [])
                got.extend(row[:max(0, job.remaining - len(got))])
            done += k
            if done < n:
                drawn = [j for j in self.slots.owner if len(new[j]) >= j.remaining]
                if drawn:  # all their roots are drawn: render and answer them now, and their
                    for job in drawn:  # slots take waiting requests (their clients may send
                        self.slots.remove(job)  # the next one while this round goes on)
                    self._flush(drawn, [new[j] for j in drawn], time.perf_counter() - t0)
                    for job in drawn:  # answered (until then a failure finds them in _round)
                        del new[job]
                self._admit(cancel=False)
        jobs = [j for j in new if new[j]]
        self._flush(jobs, [new[j] for j in jobs], time.perf_counter() - t0)
        self.rounds += 1
        self.busy_s += time.perf_counter() - t0
        if self.on_round is not None:
            self.on_round(len(jobs), len(self._waiting), time.perf_counter() - t0)
        return True

    def _flush(self, jobs: list, blocks: list, manager_s: float) -> None:
        """Render ``jobs``' new roots (pooled) and deliver each its block."""
        for job, block, (render, flood_s) in zip(jobs, blocks, self._render(jobs, blocks)):
            self._deliver(job, block, render, manager_s, flood_s)

    def _render(self, jobs, blocks):
        """-> per job (its render, or its slice of a pooled render; seconds)."""
        out = [None] * len(jobs)
        groups: dict = {}  # requests whose decoders differ only in the seed share one flood
        for i, job in enumerate(jobs):
            dec = job.decoder
            key = (type(dec).__name__, tuple(sorted(vars(replace(dec.options, seed=0)).items()))) \
                if self.pooled_render and hasattr(dec, "render_pooled") else i
            groups.setdefault(key, []).append(i)
        for idx in groups.values():
            t = time.perf_counter()
            if len(idx) == 1:
                render = jobs[idx[0]].decoder.render(torch.tensor(blocks[idx[0]], dtype=torch.long),
                                                     jobs[idx[0]].offsets)
            else:
                render = jobs[idx[0]].decoder.render_pooled(
                    [blocks[i] for i in idx], [jobs[i].decoder.options.seed for i in idx],
                    [jobs[i].offsets for i in idx])
            synchronize(self.pipe.device)
            self.draws, self.passes = self.draws + render.draws, self.passes + render.passes
            self.flops += render.flops
            seconds = time.perf_counter() - t
            self.flood_s += seconds
            if len(idx) == 1:
                out[idx[0]] = (render, seconds)
            else:
                for i, part in zip(idx, split_render(render, [len(blocks[i]) for i in idx])):
                    out[i] = (part, seconds)
        return out

    def _deliver(self, job: Job, block: list, render, manager_s: float, flood_s: float) -> None:
        if isinstance(render, RenderResult):
            root_texts, counts = render.root_texts(), [c.tolist() for c in render.counts]
            energies = [None if e is None else e.tolist() for e in render.energies]  # None: not scored
            chunks = render.num_chunks
        else:  # a slice of a pooled render
            root_texts, counts, energies = render["root_texts"], render["counts"], render["energies"]
            chunks, render = sum(counts[0]), None
        job.root_ids += block
        job.offsets = advance(job.offsets, counts)
        job.blocks += 1
        job.chunks += chunks
        job.manager_s += manager_s
        job.flood_s += flood_s
        last = job.remaining == 0
        text = job.limit.feed("".join(root_texts), last)
        if job.limit.finish_reason is not None and job in self.slots.owner:
            self.slots.remove(job)
        if job.on_block is not None:
            job.on_block(job, Block(block, root_texts, text, render, energies, counts, manager_s, flood_s))
        if job.limit.finish_reason is not None:
            job._finish(job.limit.finish_reason)

    # ---- drivers --------------------------------------------------------------------------

    def run(self, requests, on_block=None) -> list[Completion]:
        """Submit every request and run rounds until all are done (no thread)."""
        jobs = [self.prepare(r, on_block) for r in requests]
        with self._lock:
            self._waiting.extend(jobs)
        while self.step():
            pass
        return [j.completion for j in jobs]

    def start(self) -> None:
        """Run rounds on a background thread (a server)."""
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="fractal-flood-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and not self._waiting and not self.slots.active:
                    self._lock.wait()
                if self._stopping:
                    return
            try:
                self.step()
            except Exception as e:  # never leave callers waiting on a dead thread
                self._fail_all(e)

    def _fail_all(self, error: Exception) -> None:
        with self._lock:
            jobs = list(self._waiting) + list(self.slots.owner)
            jobs += [j for j in self._round if j not in jobs and j.completion is None]
            self._waiting.clear()
            for job in list(self.slots.owner):
                self.slots.remove(job)
        for job in jobs:
            job.error = error
            job._finish("error")


def generate_solo(pipe, request: GenerationRequest, block_roots: int = DEFAULT_BLOCK_ROOTS) -> Completion:
    """The plain reference path: one request through ``TextPipeline.run`` (a batch-1
    ``ARStream`` and one decoder). The engine must give the same text for the same request."""
    request = request.validated()
    g = pipe.run(request, block_roots)
    return Completion(request, g.text, g.root_ids, g.finish_reason, len(g.renders), g.num_chunks, 0.0, 0.0,
                      g.seconds)
