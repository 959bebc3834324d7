"""``fractal-flood generate``: one prompt (argument or stdin) or many (``--prompts FILE``).

One prompt goes through the solo path (``TextPipeline.generate``, streamed if asked);
many go through the batched engine and come out as JSON lines, in input order. Without
``--seed`` a random seed is drawn and printed (stderr, and ``--json``), so any run can be
repeated exactly; with many prompts, prompt i gets seed + i unless its line sets one.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

from ..errors import FractalFloodError
from ..fileio import check_writable, dumps, write_text
from ..generation.request import (DEFAULT_BLOCK_ROOTS, DEFAULT_MANAGER, DEFAULT_ROOTS, MAX_SEED, SEED_LIMIT,
                                  GenerationRequest, RendererSettings, draw_seed)
from ..hierarchy.bpe_json import MAX_VOCAB
from ..render.decoders import DECODERS
from ..render.options import DecodeOptions
from ..sampling.config import SamplingConfig
from .args import (MAX_BATCH, MAX_K, MAX_ROOTS, finite_float, input_file, int_in, nonneg_float, output_file,
                   unit_float)

PROMPT_FIELDS = {"prompt", "roots", "max_chars", "temperature", "top_k", "top_p", "seed", "stop"}


def add_arguments(g) -> None:
    g.add_argument("--prompt", default="", help="text to continue (must use the model's alphabet); - reads stdin")
    g.add_argument("--prompts", metavar="FILE", type=lambda s: s if s == "-" else input_file(s),
                   help="many prompts, batched: one per line, or JSON lines with fields "
                        f"{', '.join(sorted(PROMPT_FIELDS))}; - reads stdin. Writes JSON lines")
    g.add_argument("--output", metavar="FILE", type=output_file, help="write the --prompts JSON lines here instead of stdout")
    g.add_argument("--roots", type=int_in(1, MAX_ROOTS),
                   help=f"roots to generate, ~1.2 chunks each (default: {DEFAULT_ROOTS}, or --max-chars)")
    g.add_argument("--max-chars", type=int_in(1, 10 * MAX_ROOTS), help="stop after this many characters")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop before this text (repeatable; \\n means a newline)")
    g.add_argument("--decoder", default="flood", choices=DECODERS, help="flood (best-of-K), adaptive, sequential")
    g.add_argument("--k", type=int_in(1, MAX_K), default=DecodeOptions.k,
                   help="the renderer's best-of-K candidates per item (flood)")
    g.add_argument("--threshold", type=finite_float, default=DecodeOptions.threshold,
                   help="the renderer's energy accept threshold")
    g.add_argument("--max-tries", type=int_in(1, 1000), default=DecodeOptions.max_tries,
                   help="the renderer's draws per item (sequential, adaptive)")
    g.add_argument("--render-temperature", type=nonneg_float, default=DecodeOptions.temperature,
                   help="renderer sampling temperature (0 = argmax)")
    g.add_argument("--temperature", type=nonneg_float, default=DEFAULT_MANAGER.temperature,
                   help="manager sampling temperature (default %(default)s)")
    g.add_argument("--top-k", type=int_in(1, MAX_VOCAB), help="manager top-k")
    g.add_argument("--top-p", type=unit_float, help="manager nucleus p")
    g.add_argument("--seed", type=int_in(0, MAX_SEED),
                   help="random seed for both models (default: a random one, printed)")
    g.add_argument("--device", default="auto", help="cpu, cuda or auto")
    g.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16")
    g.add_argument("--model", help="model directory (default: the shipped model)")
    g.add_argument("--stream", action="store_true", help="print text block by block as it is rendered")
    g.add_argument("--block", type=int_in(1, MAX_ROOTS), default=DEFAULT_BLOCK_ROOTS,
                   help="roots per block: the manager plans one while the previous is rendered (the text does not depend on it)")
    g.add_argument("--max-batch", type=int_in(1, MAX_BATCH), default=32, help="--prompts: requests generated at once")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the manager's decode step (GPU; slow first call)")
    g.add_argument("--fused-step", action="store_true",
                   help="run the manager's decode step as a few Triton kernels (CUDA, needs triton; "
                        "the eager step is the reference it is tested against)")
    g.add_argument("--json", action="store_true", help="print text, root ids, energies, timings as JSON")


def _unescape(s: str) -> str:
    return s.replace("\\n", "\n").replace("\\t", "\t")


def run(args) -> int:
    from ..generation.pipeline import load_pipeline
    try:
        sampling = SamplingConfig(args.temperature, args.top_k, args.top_p)
        options = DecodeOptions(k=args.k, threshold=args.threshold, max_tries=args.max_tries,
                                temperature=args.render_temperature,
                                energies=args.json).validate()  # --json reports the energies
    except ValueError as e:
        raise FractalFloodError(str(e)) from None
    if args.prompts is not None and (args.prompt or args.stream):
        raise FractalFloodError("--prompts takes the prompts from a file: drop --prompt and --stream")
    if args.output is not None and args.prompts is None:
        raise FractalFloodError("--output goes with --prompts")
    if args.prompts is not None and (args.compile or args.fused_step):
        raise FractalFloodError("--compile and --fused-step speed up one stream's step; --prompts runs the "
                                "batched engine, which uses neither: drop them")
    seed = args.seed if args.seed is not None else draw_seed()
    stop = tuple(_unescape(s) for s in args.stop)
    if any(not s for s in stop):
        raise FractalFloodError("--stop needs a non-empty text")
    jobs = _read_prompts(args.prompts) if args.prompts is not None else None
    if args.output is not None:  # before the model loads and the prompts are generated
        check_writable(Path(args.output))
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    pipe = load_pipeline(args.model, args.device, args.dtype, args.decoder, options, compile=args.compile,
                         fused=args.fused_step)
    if jobs is not None:
        return _many(pipe, args, jobs, sampling, seed, stop)
    request = GenerationRequest(prompt, args.roots, args.max_chars, stop, seed, sampling,
                                RendererSettings()).validated()  # the renderer: the pipeline's, as loaded
    pipe.tokenizer.check_text(prompt)
    for s in stop:
        pipe.tokenizer.check_text(s)
    streaming = args.stream and not args.json
    done = []  # the text of every finished block: printed even if Ctrl-C stops the rest
    if streaming:
        sys.stdout.write(prompt)
        sys.stdout.flush()

    def on_block(text):
        done.append(text)
        if streaming:
            sys.stdout.write(text)
            sys.stdout.flush()
    try:
        result = pipe.run(request, args.block, on_block)
    except KeyboardInterrupt as e:
        if streaming:
            sys.stdout.write("\n")
        elif args.json:  # the finished blocks, as the JSON a whole run prints
            partial = getattr(e, "partial", None)
            print(dumps(partial.to_dict() if partial is not None else
                        {"prompt": prompt, "text": "".join(done), "seed": seed, "finish_reason": "interrupted"},
                        indent=1))
        else:
            print(prompt + "".join(done))
        sys.stdout.flush()
        raise KeyboardInterrupt(f"after {len(done)} finished block(s) of up to {args.block} roots") from None
    if args.json:
        print(dumps(result.to_dict(), indent=1))
        if args.seed is None:
            print(f"[seed {seed}]", file=sys.stderr)
    elif args.stream:
        sys.stdout.write("\n")
    else:
        print(prompt + result.text)
    if not args.json:
        print(f"[{len(result.root_ids)} roots, {result.num_chunks} chunks, {len(result.text)} chars "
              f"in {result.seconds:.3f}s on {pipe.device} ({pipe.decoder_name}, seed {seed})]", file=sys.stderr)
    return 0


def _read_prompts(path: str) -> list[dict]:
    """Lines of a prompts file -> dicts; a line starting with '{' is a JSON object."""
    if path == "-":
        lines = sys.stdin.read().splitlines()
    else:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise FractalFloodError(f"cannot read prompts file {path}: {e}") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if not line.lstrip().startswith("{"):
            out.append({"prompt": _unescape(line), "line": n})
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise FractalFloodError(f"{path} line {n}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt", ""), str):
            raise FractalFloodError(f"{path} line {n}: expected an object with a string \"prompt\"")
        unknown = set(obj) - PROMPT_FIELDS
        if unknown:
            raise FractalFloodError(f"{path} line {n}: unknown field(s) {', '.join(sorted(unknown))} "
                                    f"(known: {', '.join(sorted(PROMPT_FIELDS))})")
        obj["line"] = n
        out.append(obj)
    if not out:
        raise FractalFloodError(f"{path}: no prompts")
    return out


def _request(spec: dict, args, sampling, seed: int, stop: tuple, where: str) -> GenerationRequest:
    """One prompts-file line -> its request: the command line's settings, with the line's own
    fields over them (checked by the request, the line named on error)."""
    try:
        s = spec.get("stop", stop)
        manager = replace(sampling, **{k: spec[k] for k in ("temperature", "top_k", "top_p") if k in spec})
        max_chars = spec.get("max_chars", args.max_chars)
        roots = spec.get("roots", args.roots if "max_chars" not in spec else None)
        for key, v in (("roots", roots), ("max_chars", max_chars), ("seed", spec.get("seed"))):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):  # JSON: 3.0 is no integer
                raise ValueError(f"{key} must be an integer, got {v!r}")
        if not isinstance(s, (str, list, tuple)):
            raise ValueError("stop must be a non-empty string or a list of them")
        return GenerationRequest(spec.get("prompt", ""), roots, max_chars, s, spec.get("seed", seed), manager,
                                 RendererSettings()).validated()
    except (ValueError, FractalFloodError) as e:
        raise FractalFloodError(f"{where}: {e}") from None


def _many(pipe, args, specs, sampling, seed, stop) -> int:
    import time

    from ..generation.engine import Engine
    name = args.prompts if args.prompts != "-" else "stdin"
    engine = Engine(pipe, max_batch=args.max_batch, block_roots=args.block, max_queue=len(specs))
    jobs = []
    for i, spec in enumerate(specs):
        where = f"{name} line {spec['line']}"
        req = _request(spec, args, sampling, (seed + i) % SEED_LIMIT, stop, where)
        try:
            jobs.append(engine.submit(req))
        except FractalFloodError as e:
            raise FractalFloodError(f"{where}: {e}") from None
    t0 = time.perf_counter()
    try:
        while engine.step():
            pass
    except KeyboardInterrupt:  # the requests already answered are written, as a whole run writes them
        finished = [job for job in jobs if job.completion is not None]
        _write_lines(finished, args)
        raise KeyboardInterrupt(f"after {len(finished)} of {len(jobs)} prompts finished "
                                f"(their lines written{' to ' + args.output if args.output else ''})") from None
    seconds = time.perf_counter() - t0
    _write_lines(jobs, args)
    chunks = sum(j.completion.chunks for j in jobs)
    print(f"[{len(jobs)} prompts, {chunks} chunks in {seconds:.3f}s on {pipe.device} "
          f"({chunks / seconds:.0f} tokens/s), first seed {seed}]", file=sys.stderr)
    return 0


def _write_lines(jobs, args) -> None:
    """One JSON line per finished request, in the prompts' order, to ``--output``
    (atomically: a full disk leaves no half-written file, and says which) or stdout."""
    lines = []
    for job in jobs:
        d = job.completion.to_dict()
        if not args.json:
            d.pop("root_ids")
        lines.append(dumps(d) + "\n")
    if args.output:
        write_text(Path(args.output), "".join(lines))
    else:
        sys.stdout.write("".join(lines))
        sys.stdout.flush()
