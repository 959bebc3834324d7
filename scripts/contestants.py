"""The single-stream contestants the timing scripts take turns with (``paired_ratio.py``,
``cpu_step_cost.py``, ``weight_formats.py``, ``llama_cpp_peer.py``), and how their per-round
ratios are summarised.

Each contestant is ``run() -> (tokens, characters or None, manager steps or None)``, warmed
up once when it is made: the model's end-to-end generate (tokens = chunks), its AR peer in
our own stream, the peer in CTranslate2.
"""

from __future__ import annotations

import statistics

import torch

from fractal_flood.generation.pipeline import TextPipeline
from fractal_flood.manager.stream import ARStream
from fractal_flood.measure import ct2_peer
from fractal_flood.models import checkpoint as ckpt
from fractal_flood.render.base import DecodeOptions
from fractal_flood.sampling.tokens import SamplingConfig


def load(model_dir):
    """A model directory on the CPU in fp32, with its AR peer when it has one."""
    return ckpt.load_model_dir(model_dir, torch.device("cpu"), torch.float32, optional=("peer",))


def generator(m, roots: int, sampling: SamplingConfig):
    """-> run() returning (tokens, characters, manager steps) of one end-to-end generate."""
    pipe = TextPipeline(m.tokenizer, m.manager, m.renderer, torch.device("cpu"), torch.float32, "flood",
                        DecodeOptions(k=1))

    def run():
        g = pipe.generate("", roots, sampling, seed=0)
        return g.num_chunks, len(g.text), g.manager_steps
    run()  # warm-up
    return run


def stream(model, prompt: list, n: int, sampling: SamplingConfig):
    """-> run() returning (n, None, None) of one causal model alone writing n tokens after
    ``prompt`` (ids) in our own stream."""
    s = ARStream(model, 1, sampling, "cpu", seed=0)
    ids = torch.tensor(prompt)

    def run():
        s.start(ids)
        s.generate(n)
        return n, None, None
    run()
    return run


def steady_steps(model, prompt: list, sampling: SamplingConfig):
    """-> run() returning (n, None, None) of the decode steps between two window slides at
    batch 1: the stream starts once at a full kept window (``prompt``'s last ``keep - 1``
    ids and a pending one), and each run rewinds it there (its position, step counters and
    pending token; the cache slots it wrote are rewritten) and steps up to the context's
    end, no slide: the step alone, at the positions a long stream's steps take."""
    s = ARStream(model, 1, sampling, "cpu", seed=0)
    s.start(torch.tensor(prompt[-s.keep:]))
    n = s.context - s.pos
    rewind = (s.pos, s._pos.clone(), s._steps.clone(), s._tok.clone())

    def run():
        s.pos = rewind[0]
        s._pos.copy_(rewind[1]), s._steps.copy_(rewind[2]), s._tok.copy_(rewind[3])
        s.generate(n)
        return n, None, None
    run()
    return run


def peer(m, n: int, sampling: SamplingConfig):
    """The AR peer writing n chunks after a newline."""
    return stream(m.peer, m.tokenizer.encode_chunks("\n"), n, sampling)


def engine(m, path, compute_type: str, threads: int, n: int, sampling: SamplingConfig):
    """-> run() writing n chunks with the peer in CTranslate2 (single-stream)."""
    e = ct2_peer.CT2Peer(path, m.peer.config.context, compute_type, threads)
    prompt = m.tokenizer.encode_chunks("\n")

    def run():
        e.generate([prompt], n, sampling)
        return n, None, None
    run()
    return run


def quartiles(xs: list) -> str:
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return f"median {q[1]:.3f} (quartiles {q[0]:.3f} - {q[2]:.3f}, {len(xs)} rounds)"
