"""Text in, text out: the manager plans roots block by block, a decoder renders each block.

On a GPU the renderer works on a second CUDA stream, so while block ``b`` is flooded the
manager's steps for block ``b + 1`` are already queued on the first: the manager is
latency-bound and leaves most of the chip idle, which the flood fills.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..device import resolve_device, resolve_dtype, synchronize
from ..errors import FractalFloodError
from ..manager.fused_step import check_fused_device
from ..manager.stream import ARStream
from ..models import checkpoint as ckpt
from ..render.decoders import make_decoder
from ..render.options import DecodeOptions
from ..render.result import RenderResult, advance
from ..sampling.config import SamplingConfig
from .request import DEFAULT_BLOCK_ROOTS, DEFAULT_MANAGER, DEFAULT_ROOTS, GenerationRequest, RendererSettings
from .text_limit import TextLimit


@dataclass
class GenerationResult:
    prompt: str
    text: str  # the continuation (the prompt is not repeated)
    root_ids: list
    renders: list = field(default_factory=list)  # RenderResult per block
    seconds: float = 0.0
    manager_steps: int = 0
    seed: int = 0
    finish_reason: str = "length"  # or "stop": a stop string ended it; "interrupted": Ctrl-C

    @property
    def num_chunks(self) -> int:
        return sum(r.num_chunks for r in self.renders)

    def energies(self, level: int) -> list:
        """The chosen draws' energies at ``level``; empty where no energy pass ran (a K = 1
        flood scores nothing unless ``DecodeOptions.energies`` asks)."""
        return [float(e) for r in self.renders if r.energies[level] is not None for e in r.energies[level]]

    def to_dict(self) -> dict:
        levels = []
        for li in range(len(self.renders[0].levels) if self.renders else 0):
            agg = {}
            for r in self.renders:
                for k, v in r.levels[li].as_dict().items():
                    agg[k] = v if v is None or isinstance(v, bool) else agg.get(k, 0) + v
            es = self.energies(li)
            agg["mean_energy"] = sum(es) / len(es) if es else None
            agg["rejected"] = None if agg["accepted"] is None else agg["items"] - agg["accepted"]
            levels.append(agg)
        return {
            "prompt": self.prompt, "text": self.text, "root_ids": self.root_ids,
            "roots": len(self.root_ids), "chunks": self.num_chunks, "chars": len(self.text),
            "energies": {f"level{li}": self.energies(li) for li in range(len(levels))},
            "levels": levels, "manager_steps": self.manager_steps, "seed": self.seed,
            "finish_reason": self.finish_reason,
            "seconds": self.seconds,
            "chunks_per_s": self.num_chunks / self.seconds if self.seconds else None,
        }


class TextPipeline:
    """Manager + renderer + decoder. Build one with :func:`load_pipeline`."""

    def __init__(self, tokenizer, manager, renderer, device: torch.device, dtype: torch.dtype,
                 decoder: str = "flood", options: DecodeOptions | None = None, cuda_graph: bool | None = None,
                 compile: bool = False, overlap: bool = True, fused: bool = False):
        self.tokenizer, self.manager, self.renderer = tokenizer, manager, renderer
        self.device, self.dtype = device, dtype
        self.decoder_name = decoder
        self.options = (options or DecodeOptions()).validate()
        make_decoder(decoder, renderer, tokenizer.alphabet, self.options)  # validate the name now
        self.cuda_graph = (device.type == "cuda") if cuda_graph is None else cuda_graph
        self.compile = compile
        self.fused = fused  # the manager's step as Triton kernels (fused_step.py; CUDA)
        if compile and fused:
            raise FractalFloodError("compile and the fused step are two ways to fuse the manager's step: choose one")
        if fused:
            check_fused_device(device)
        self.overlap = overlap  # render on a second CUDA stream while the manager goes on
        self._streams = {}

    def decoder_for(self, seed: int, name: str | None = None, options: DecodeOptions | None = None):
        """A decoder seeded with ``seed`` (default name and options: the pipeline's)."""
        opts = DecodeOptions(**{**(options or self.options).__dict__, "seed": seed}).validate()
        return make_decoder(name or self.decoder_name, self.renderer, self.tokenizer.alphabet, opts)

    def _ar_stream(self, sampling: SamplingConfig, seed: int) -> ARStream:
        # one stream (and CUDA graph) per sampling config, reused across calls
        key = (sampling.temperature, sampling.top_k, sampling.top_p)
        ar = self._streams.get(key)
        if ar is None:
            ar = ARStream(self.manager, 1, sampling, self.device, None, self.cuda_graph, seed,
                          compile=self.compile, fused=self.fused)
            self._streams = {key: ar}  # the manager owns one cache: keep one stream
        ar.seed = seed
        return ar

    def prompt_ids(self, prompt: str) -> list[int]:
        """The roots the manager continues from; an empty prompt starts after a newline."""
        ids = self.tokenizer.encode(prompt) if prompt else []
        return ids or self.tokenizer.encode("\n")

    def stream(self, prompt: str = "", roots: int = DEFAULT_ROOTS, sampling: SamplingConfig | None = None,
               seed: int = 0, block_roots: int = DEFAULT_BLOCK_ROOTS, decoder: str | None = None,
               options: DecodeOptions | None = None) -> Iterator[tuple[list, RenderResult]]:
        """Yield ``(root_ids, render)`` block by block while later blocks are planned. The
        text does not depend on ``block_roots``: item numbers run on across blocks."""
        if int(roots) != roots or roots < 1:
            raise FractalFloodError(f"roots must be a positive integer, got {roots}")
        if block_roots < 1:
            raise FractalFloodError(f"block_roots must be >= 1, got {block_roots}")
        sampling = sampling or DEFAULT_MANAGER
        start = torch.tensor(self.prompt_ids(prompt), dtype=torch.long)
        decoder = self.decoder_for(seed, decoder, options)
        ar = self._ar_stream(sampling, seed)
        cuda = self.device.type == "cuda" and self.overlap
        side = torch.cuda.Stream(self.device) if cuda else None
        sizes = [min(block_roots, roots - s) for s in range(0, roots, block_roots)]
        offsets = [0] * self.renderer.num_levels  # item numbers carry on across blocks
        with torch.no_grad():
            ar.start(start)
            pending = ar.generate(sizes[0])[0]  # (n,) on the device
            ready = _record(cuda)
            for b in range(len(sizes)):
                block, block_ready = pending, ready
                if b + 1 < len(sizes):  # queue the next block's manager steps first
                    pending = ar.generate(sizes[b + 1])[0]
                    ready = _record(cuda)
                if cuda:
                    side.wait_event(block_ready)
                    block.record_stream(side)
                    with torch.cuda.stream(side):
                        render = decoder.render(block, offsets)
                else:
                    render = decoder.render(block, offsets)
                offsets = advance(offsets, render.counts)
                yield block.tolist(), render

    def generate(self, prompt: str = "", roots: int | None = None, sampling: SamplingConfig | None = None,
                 seed: int = 0, block_roots: int = DEFAULT_BLOCK_ROOTS,
                 on_block: Callable[[str], None] | None = None, max_chars: int | None = None,
                 stop: tuple = (), decoder: str | None = None,
                 options: DecodeOptions | None = None) -> GenerationResult:
        """Generate up to ``roots`` roots after ``prompt`` and render them to text, cut at the
        first stop string or at ``max_chars`` characters (whichever comes first). Builds a
        :class:`GenerationRequest` (``sampling``: the manager's, default ``DEFAULT_MANAGER``;
        ``decoder`` and ``options``: the renderer's, default the pipeline's) and runs it."""
        request = GenerationRequest(prompt, roots, max_chars, stop, seed,
                                    DEFAULT_MANAGER if sampling is None else sampling,
                                    RendererSettings(decoder, options))
        return self.run(request, block_roots, on_block)

    def run(self, request: GenerationRequest, block_roots: int = DEFAULT_BLOCK_ROOTS,
            on_block: Callable[[str], None] | None = None) -> GenerationResult:
        """Generate ``request``'s text block by block (``on_block`` gets each block's new text)."""
        request = request.validated()
        prompt, roots, seed = request.prompt, request.root_budget, request.seed
        self.tokenizer.check_text(prompt)
        for s in request.stop:
            self.tokenizer.check_text(s)
        limit = TextLimit(request.stop, request.max_chars)
        synchronize(self.device)
        t0 = time.perf_counter()
        root_ids, renders = [], []
        try:
            for ids, render in self.stream(prompt, roots, request.manager, seed, block_roots,
                                           request.renderer.decoder, request.renderer.options):
                root_ids += ids
                renders.append(render)
                text = limit.feed(render.text, len(root_ids) == roots)
                if on_block is not None:
                    on_block(text)
                if limit.finish_reason is not None:
                    break
        except KeyboardInterrupt as e:  # the finished blocks go with it: ``e.partial``
            e.partial = GenerationResult(prompt, limit.result, root_ids, renders, time.perf_counter() - t0,
                                         len(root_ids), seed, "interrupted")
            raise
        synchronize(self.device)
        seconds = time.perf_counter() - t0
        return GenerationResult(prompt, limit.result, root_ids, renders, seconds, len(root_ids), seed,
                                limit.finish_reason or "length")


def _record(cuda: bool):
    if not cuda:
        return None
    ev = torch.cuda.Event()
    ev.record()
    return ev


def load_pipeline(model_dir: str | Path | None = None, device: str = "auto", dtype: str = "auto",
                  decoder: str = "flood", options: DecodeOptions | None = None,
                  cuda_graph: bool | None = None, compile: bool = False, fused: bool = False) -> TextPipeline:
    """Load a trained model directory (default: the model shipped with the package)."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    # weights held in the compute dtype (bf16 on a GPU): no autocast, no per-call weight casts
    m = ckpt.load_model_dir(model_dir, dev, dt)
    return TextPipeline(m.tokenizer, m.manager, m.renderer, dev, dt, decoder, options, cuda_graph, compile,
                        fused=fused)
