"""``fractal-flood``: a thin command line over the library.

Every user error (unknown characters, bad numbers, missing or corrupt files, a GPU asked
for where there is none) is printed as one line on stderr with a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from . import __version__
from .errors import FractalFloodError

EXIT_USER_ERROR = 2


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default when there is one worth showing (not None, False or '')."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == "":
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message):  # one line, not usage + message
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(EXIT_USER_ERROR)


def positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def finite_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    if math.isnan(v):
        raise argparse.ArgumentTypeError("must be a number, got NaN")
    return v


def nonneg_float(s: str) -> float:
    v = finite_float(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def positive_float(s: str) -> float:
    v = finite_float(s)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {v}")
    return v


def unit_float(s: str) -> float:
    v = finite_float(s)
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {v}")
    return v


def level_list(s: str):
    """``--levels``: ``name:size:max_children`` per BPE level, comma separated, top first."""
    from .level_specs import parse_specs
    try:
        return parse_specs(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


LEVELS_HELP = ("the BPE levels above the characters, top first, as name:size:max_children, comma "
               "separated; the default hierarchy is roots:2048:4,chunks:1024:16")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fractal-flood",
                description="Hierarchical parallel text generation: a small autoregressive manager "
                            "plans coarse roots, a shared-weight diffusion renderer floods them to text.")
    p.add_argument("--version", action="version", version=f"fractal-flood {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    s = sub.add_parser("stats", help="train the tokenizer on a corpus and print hierarchy statistics",
                       description="Train the tokenizer on a corpus (default: the shipped "
                                   "TinyShakespeare) and print tokens and characters per token at "
                                   "every level, and characters per manager step.")
    s.add_argument("--corpus", help="UTF-8 text file (default: the shipped TinyShakespeare)")
    s.add_argument("--chunks", type=positive_int, help="chunk vocabulary size (default 1024)")
    s.add_argument("--roots", type=positive_int, help="root vocabulary size (default 2048)")
    s.add_argument("--levels", type=level_list, help=LEVELS_HELP + " (replaces --chunks/--roots)")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")

    from .config import PRESETS
    t = sub.add_parser("train", help="train tokenizer, renderer and manager (and the AR peer)",
                       description="Train on the default corpus or --corpus FILE into --out DIR. "
                                   "Checkpoints are atomic; --resume continues an interrupted run.")
    t.add_argument("--out", required=True, help="model directory to write")
    t.add_argument("--preset", default="seed", choices=sorted(PRESETS),
                   help="model sizes and schedule: tiny (tests) or seed (renderer 6x256x8, manager 4x128)")
    t.add_argument("--corpus", help="UTF-8 text file (default: the shipped TinyShakespeare)")
    t.add_argument("--levels", type=level_list,
                   help=LEVELS_HELP + " (default: the preset's sizes; a new model directory only)")
    t.add_argument("--parts", default="renderer,manager",
                   help="comma list of renderer, manager, peer (the AR baseline for the bench)")
    t.add_argument("--steps", type=positive_int, help="renderer steps (default: the preset's)")
    t.add_argument("--lm-steps", type=positive_int, help="manager / peer steps (default: the preset's)")
    t.add_argument("--batch", type=positive_int, help="batch size (default: the preset's)")
    t.add_argument("--time-limit", type=positive_float,
                   help="seconds per part: after timing steps 10-40, cap the schedule to fit "
                        "(a fresh run only; --resume keeps the capped schedule it saved)")
    t.add_argument("--device", default="auto", help="cpu, cuda or auto")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--eval-every", type=positive_int, default=200, help="validation line every N steps")
    t.add_argument("--save-every", type=positive_int, default=500, help="checkpoint every N steps")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")

    from .decoding import DECODERS
    g = sub.add_parser("generate", help="generate text (default: the shipped model, Flash Flood decoding)",
                       description="The manager plans roots after --prompt; the decoder renders them.")
    g.add_argument("--prompt", default="", help="text to continue (must use the model's alphabet)")
    g.add_argument("--roots", type=positive_int, default=200, help="roots to generate (~1.2 chunks each)")
    g.add_argument("--decoder", default="flood", choices=DECODERS, help="flood (best-of-K), adaptive, sequential")
    g.add_argument("--k", type=positive_int, default=1, help="best-of-K candidates per item (flood)")
    g.add_argument("--threshold", type=finite_float, default=0.5, help="energy accept threshold")
    g.add_argument("--max-tries", type=positive_int, default=10, help="draws per item (sequential, adaptive)")
    g.add_argument("--render-temperature", type=nonneg_float, default=0.0,
                   help="renderer sampling temperature (0 = argmax)")
    g.add_argument("--temperature", type=nonneg_float, default=0.8, help="manager sampling temperature")
    g.add_argument("--top-k", type=positive_int, help="manager top-k")
    g.add_argument("--top-p", type=unit_float, help="manager nucleus p")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto", help="cpu, cuda or auto")
    g.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16")
    g.add_argument("--model", help="model directory (default: the shipped model)")
    g.add_argument("--stream", action="store_true", help="print text block by block as it is rendered")
    g.add_argument("--block", type=positive_int, default=256,
                   help="roots per block: the manager plans one while the previous is rendered")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the manager's decode step (GPU; slow first call)")
    g.add_argument("--json", action="store_true", help="print text, root ids, energies, timings as JSON")

    e = sub.add_parser("eval", help="evaluate a model: render fidelity, energy detection, manager loss",
                       description="Held-out evaluation on the tail of the corpus (see DESIGN definitions).")
    _add_model_and_device(e)
    e.add_argument("--corpus", help="UTF-8 text file (default: the shipped TinyShakespeare)")
    e.add_argument("--k", type=positive_int, default=1, help="best-of-K for the fidelity render")
    e.add_argument("--max-roots", type=positive_int, default=5000,
                   help="held-out roots to evaluate (the tail has ~17.9k)")
    e.add_argument("--json", action="store_true", help="print JSON")

    b = sub.add_parser("bench", help="benchmark decoders against the sequential and AR baselines",
                       description="Sequential vs flood vs adaptive vs AR peer, end-to-end and render-only.")
    _add_model_and_device(b)
    b.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16")
    b.add_argument("--quick", action="store_true", help="small sizes: under a minute on a 2-core CPU")
    b.add_argument("--json", dest="json_path", help="write results as JSON to this file")
    b.add_argument("--markdown", help="write a Markdown report to this file")
    b.add_argument("--plot", help="write a PNG plot (throughput vs roots) to this file")
    b.add_argument("--repeats", type=positive_int, help="timed runs per row (median reported)")
    return p


def _add_model_and_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model directory (default: the shipped model)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return _run(args)
    except FractalFloodError as e:
        print(f"fractal-flood {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"fractal-flood {args.command}: interrupted", file=sys.stderr)
        return 130


def _run(args) -> int:
    if args.command == "stats":
        return _stats(args)
    if args.command == "train":
        return _train(args)
    if args.command == "generate":
        return _generate(args)
    if args.command == "eval":
        from .evaluate import run_eval_cli
        return run_eval_cli(args)
    if args.command == "bench":
        from .bench import run_bench_cli
        return run_bench_cli(args)
    raise AssertionError(args.command)


def _stats(args) -> int:
    import time

    from .corpus import load_corpus
    from .tokenizer import HierarchicalTokenizer
    if args.levels is not None and (args.chunks or args.roots):
        raise FractalFloodError("--levels replaces --chunks and --roots: give one or the other")
    text = load_corpus(args.corpus)
    t0 = time.perf_counter()
    try:
        tok = HierarchicalTokenizer.train(text, args.chunks or 1024, args.roots or 2048, levels=args.levels)
    except ValueError as e:
        raise FractalFloodError(str(e)) from None
    st = {"corpus": args.corpus or "tinyshakespeare (shipped)", **tok.stats(text),
          "train_seconds": round(time.perf_counter() - t0, 2)}
    if args.json:
        print(json.dumps(st, indent=1))
    else:
        w = max(map(len, st))
        for k, v in st.items():
            print(f"{k:>{w}}: {v:.3f}" if isinstance(v, float) else f"{k:>{w}}: {v}")
    return 0


def _train(args) -> int:
    from pathlib import Path

    from .train import TrainOptions, run_training
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    run_training(TrainOptions(out_dir=Path(args.out), preset=args.preset, corpus=args.corpus, parts=parts,
                              levels=args.levels,
                              steps=args.steps, lm_steps=args.lm_steps, batch=args.batch,
                              time_limit=args.time_limit, device=args.device, resume=args.resume,
                              seed=args.seed, eval_every=args.eval_every, save_every=args.save_every,
                              progress=not args.no_progress))
    return 0


def _generate(args) -> int:
    from .decoding import DecodeOptions
    from .pipeline import load_pipeline
    from .sampling import SamplingConfig
    try:
        sampling = SamplingConfig(args.temperature, args.top_k, args.top_p)
        options = DecodeOptions(k=args.k, threshold=args.threshold, max_tries=args.max_tries,
                                temperature=args.render_temperature).validate()
    except ValueError as e:
        raise FractalFloodError(str(e)) from None
    pipe = load_pipeline(args.model, args.device, args.dtype, args.decoder, options, compile=args.compile)
    pipe.tokenizer.check_text(args.prompt)
    if args.stream and not args.json:
        sys.stdout.write(args.prompt)
        sys.stdout.flush()

        def on_block(text):
            sys.stdout.write(text)
            sys.stdout.flush()
    else:
        on_block = None
    result = pipe.generate(args.prompt, args.roots, sampling, args.seed, args.block, on_block)
    if args.json:
        print(json.dumps(result.to_dict(), indent=1))
    elif args.stream:
        sys.stdout.write("\n")
    else:
        print(args.prompt + result.text)
    if not args.json:
        print(f"[{len(result.root_ids)} roots, {result.num_chunks} chunks, {len(result.text)} chars "
              f"in {result.seconds:.3f}s on {pipe.device} ({pipe.decoder_name})]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
