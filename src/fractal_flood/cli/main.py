"""``fractal-flood``: a thin command line over the library.

Every user error (unknown characters, bad numbers, missing or corrupt files, a GPU asked
for where there is none) is printed as one line on stderr with a non-zero exit.
"""

from __future__ import annotations

import argparse
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

from .. import __version__
from ..errors import FractalFloodError
from ..fileio import dumps
from ..hierarchy.bpe_json import MAX_VOCAB
from . import generate, serve
from .args import (LEVELS_HELP, MAX_BATCH, MAX_K, MAX_STEPS, NEGATIVE_NUMBER, class_count, corpus_spec,
                   dropout_rate, input_file, int_in, level_list, lm_shape, nonneg_float, output_dir, output_file,
                   positive_float, seed_int)

EXIT_USER_ERROR = 2
EXIT_BELOW_BAR = 3  # train: a part ended below its validation bar (--keep-below-bar accepts it)


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
        self._negative_number_matcher = NEGATIVE_NUMBER  # `--threshold -inf` is a value, not an option

    def error(self, message):  # one line, not usage + message
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(EXIT_USER_ERROR)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fractal-flood",
                description="Hierarchical parallel text generation: a small autoregressive manager "
                            "plans coarse roots, a shared-weight diffusion renderer floods them to text. "
                            "Architecture and definitions (token, fidelity, end-to-end, render-only): "
                            "docs/DESIGN.md.")
    p.add_argument("--version", action="version", version=f"fractal-flood {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    s = sub.add_parser("stats", help="train the tokenizer on a corpus and print hierarchy statistics",
                       description="Train the tokenizer on a corpus (default: the shipped "
                                   "TinyShakespeare) and print tokens and characters per token at "
                                   "every level, and characters per manager step.")
    s.add_argument("--corpus", type=corpus_spec,
                   help="UTF-8 text: a file, a directory or a quoted glob (default: the shipped TinyShakespeare)")
    s.add_argument("--chunks", type=int_in(1, MAX_VOCAB), help="chunk vocabulary size (default 1024)")
    s.add_argument("--roots", type=int_in(1, MAX_VOCAB), help="root vocabulary size (default 2048)")
    s.add_argument("--levels", type=level_list, help=LEVELS_HELP + " (replaces --chunks/--roots)")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")

    from ..models.config import DECAY_MODES, PRESETS, TOKENIZER_SAMPLE_CHARS
    t = sub.add_parser("train", help="train tokenizer, renderer and manager (and the AR peer)",
                       description="Train on the default corpus or --corpus FILE|DIR|GLOB into --out DIR. "
                                   "Checkpoints are atomic; --resume continues an interrupted run, "
                                   "--overwrite replaces a trained model. Under torchrun, trains data "
                                   "parallel over its processes.")
    t.add_argument("--out", required=True, type=output_dir, help="model directory to write")
    t.add_argument("--preset", choices=sorted(PRESETS),
                   help="model sizes and schedule: small (renderer 1x64, manager 4x128), seed (the plan's: "
                        "renderer 6x256x8, which a CPU trains for hours) or tiny (tests). Default: the one "
                        "the model in --out was trained with, else small on a CPU and seed on a GPU")
    t.add_argument("--corpus", type=corpus_spec,
                   help="UTF-8 text: a file, a directory of files or a quoted glob "
                        "('books/*.txt'), read in sorted order (default: the shipped TinyShakespeare)")
    t.add_argument("--levels", type=level_list,
                   help=LEVELS_HELP + " (default: the preset's sizes; a new model directory only)")
    t.add_argument("--parts", default="renderer,manager",
                   help="comma list of renderer, manager, peer (the AR baseline for the bench)")
    t.add_argument("--steps", type=int_in(1, MAX_STEPS), help="renderer steps (default: the preset's)")
    t.add_argument("--lm-steps", type=int_in(1, MAX_STEPS), help="manager / peer steps (default: the preset's)")
    t.add_argument("--batch", type=int_in(1, MAX_BATCH),
                   help="global batch size, over all torchrun processes (default: the preset's)")
    t.add_argument("--grad-accum", type=int_in(1, MAX_BATCH), default=1,
                   help="micro-batches per step and process (gradient accumulation): the same "
                        "global batch in less memory")
    t.add_argument("--tokenizer-chars", type=int_in(1, 10 ** 12), default=TOKENIZER_SAMPLE_CHARS,
                   help="the tokenizer learns its merges from this many leading characters of the corpus")
    t.add_argument("--time-limit", type=positive_float,
                   help="seconds for the whole run: the parts share it, each fitting its schedule to its "
                        "share from step 40 on and refitting it as it runs, so a busy stretch does not "
                        "starve the rest")
    t.add_argument("--keep-below-bar", action="store_true",
                   help="accept a part that ends below its validation bar (renderer: render fidelity "
                        "99.9%% at every level; manager, peer: a held-out loss that improved on its first "
                        f"evaluation). Without it such a part is still saved, but train exits {EXIT_BELOW_BAR}")
    t.add_argument("--dropout", type=dropout_rate,
                   help="language models' dropout in training (default: the preset's)")
    t.add_argument("--head-classes", type=class_count,
                   help="the manager's output layer: 0 = one softmax over the roots; K = "
                        "P(class) x P(root | class) over K classes of consecutive ids, which "
                        "decoding samples from K + roots/K scores; auto = K near the square root "
                        "of the roots from 4,096 roots on (default: the preset's, auto)")
    t.add_argument("--lm-shape", type=lm_shape, metavar="LAYERSxWIDTHxHEADS",
                   help="the language models' transformer, the manager's and the AR peer's alike, "
                        "e.g. 2x128x4 (default: the preset's: small 4x128x4 for both; seed 4x128x4 "
                        "for the manager, 6x256x8 for the peer)")
    t.add_argument("--top-lengths", action="store_true",
                   help="the renderer also predicts each root's number of children (a small head on "
                        "the root's embedding), so the top level's canvases are packed like the "
                        "others instead of padded to the most children a root has")
    t.add_argument("--weight-decay", type=nonneg_float,
                   help="language models' AdamW weight decay (default: the preset's)")
    t.add_argument("--decay", choices=DECAY_MODES,
                   help="which language-model parameters decay (default: the preset's)")
    t.add_argument("--device", default="auto", help="cpu, cuda or auto")
    t.add_argument("--seed", type=seed_int, default=0, help="weight init and data order")
    t.add_argument("--eval-every", type=int_in(1, MAX_STEPS), default=200, help="validation line every N steps")
    t.add_argument("--save-every", type=int_in(1, MAX_STEPS), default=500, help="checkpoint every N steps")
    t.add_argument("--resume", action="store_true",
                   help="continue the parts in --out from their saved state (a new --steps applies)")
    t.add_argument("--overwrite", action="store_true",
                   help="replace the model in --out (tokenizer, parts and training state) with a new one")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")

    g = sub.add_parser("generate", help="generate text (default: the shipped model, Flash Flood decoding)",
                       description="The manager plans roots after --prompt; the decoder renders them. "
                                   "--prompts FILE generates for many prompts at once (JSON lines out).")
    generate.add_arguments(g)

    v = sub.add_parser("serve", help="serve an OpenAI-compatible HTTP API with continuous batching",
                       description=serve.DESCRIPTION)
    serve.add_arguments(v)

    e = sub.add_parser("eval", help="evaluate a model: render fidelity, energy detection, manager loss",
                       description="Held-out evaluation on the tail of the corpus (definitions in docs/DESIGN.md).")
    _add_model_and_device(e)
    e.add_argument("--corpus", type=corpus_spec,
                   help="UTF-8 text: a file, a directory or a quoted glob (default: the shipped TinyShakespeare)")
    e.add_argument("--k", type=int_in(1, MAX_K), default=1, help="best-of-K for the fidelity render")
    e.add_argument("--max-roots", type=int_in(1, 10 ** 7), default=5000,
                   help="held-out roots to evaluate, from the start of the corpus's held-out tail "
                        "(fewer if the tail is shorter; the report says how many)")
    e.add_argument("--json", action="store_true", help="print JSON")

    b = sub.add_parser("bench", help="benchmark decoders against the sequential and AR baselines",
                       description="Sequential vs flood vs adaptive vs AR peer, end-to-end and render-only.")
    _add_model_and_device(b)
    b.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16")
    b.add_argument("--quick", action="store_true", help="small sizes: under a minute on a 2-core CPU")
    b.add_argument("--json", dest="json_path", type=output_file, help="write results as JSON to this file")
    b.add_argument("--markdown", type=output_file, help="write a Markdown report to this file")
    b.add_argument("--plot", type=output_file,
                   help="write a PNG (speed-quality, and throughput vs roots) to exactly this file")
    b.add_argument("--corpus", type=input_file,
                   help="corpus whose held-out tail is rendered and scored (default: the shipped one)")
    b.add_argument("--baseline-model", help="another model directory: its render-only flood K=1 at R=256 "
                                            "is measured in the same run, for a same-run ratio")
    b.add_argument("--repeats", type=int_in(1, 1000), help="timed runs per row (median reported)")
    b.add_argument("--rows", choices=("all", "vs-peer"), default="all",
                   help="all, or vs-peer: only the end-to-end flood rows (single and batched) and "
                        "every AR peer row (ours, transformers, CTranslate2)")
    b.add_argument("--engines", action="store_true",
                   help="require the AR peer's CTranslate2 rows (float32 and int8; added whenever "
                        "fractal-flood[engines] is installed): an error, not a skip, when they cannot run")
    b.add_argument("--threads", type=int_in(1, 1024), help="torch's CPU threads (default: torch's own); the "
                   "CTranslate2 rows run at 1 thread and at all the machine's cores")
    return p


def _add_model_and_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model directory (default: the shipped model)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")


@contextmanager
def _sigterm_as_ctrl_c(terminated: list):
    """SIGTERM (``kill``, a batch scheduler, a container stopping) raises KeyboardInterrupt
    in the main thread, so it saves and releases like a Ctrl-C; a second one while that runs
    is ignored. ``serve`` keeps its server's own handling."""
    def handler(signum, frame):
        if not terminated:
            terminated.append(signum)
            raise KeyboardInterrupt

    try:
        before = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    where = f"fractal-flood {args.command}"
    terminated = []
    try:
        if args.command == "serve":
            return _run(args)
        with _sigterm_as_ctrl_c(terminated):
            return _run(args)
    except FractalFloodError as e:
        print(f"{where}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as e:  # training says what it saved
        how = "interrupted by SIGTERM" if terminated else "interrupted"
        print(f"{where}: {how}" + (f": {e}" if str(e) else ""), file=sys.stderr)
        return 128 + signal.SIGTERM if terminated else 130
    except OSError as e:  # a disk that is full or read-only, a path that vanished
        what = f"{e.strerror}: {e.filename}" if e.strerror and e.filename else (e.strerror or str(e))
        print(f"{where}: error: {what}", file=sys.stderr)
        return EXIT_USER_ERROR
    except (MemoryError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and not _out_of_memory(e):
            raise  # a bug: keep its traceback
        print(f"{where}: error: out of memory ({str(e).splitlines()[0][:120] if str(e) else 'MemoryError'}); "
              "ask for less (--roots, --k, --batch, --block)", file=sys.stderr)
        return EXIT_USER_ERROR


def _out_of_memory(e: RuntimeError) -> bool:
    msg = str(e).lower()
    return "out of memory" in msg or "can't allocate memory" in msg or type(e).__name__ == "OutOfMemoryError"


def _run(args) -> int:
    if args.command == "stats":
        return _stats(args)
    if args.command == "train":
        return _train(args)
    if args.command == "generate":
        return generate.run(args)
    if args.command == "serve":
        return serve.run(args)
    if args.command == "eval":
        from ..measure.evaluate import run_eval_cli
        return run_eval_cli(args)
    if args.command == "bench":
        from ..measure.bench import run_bench_cli
        return run_bench_cli(args)
    raise AssertionError(args.command)


def _stats(args) -> int:
    import time

    from ..corpus.reader import load_corpus
    from ..hierarchy.tokenizer import HierarchicalTokenizer
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
        print(dumps(st, indent=1))
    else:
        w = max(map(len, st))
        for k, v in st.items():
            print(f"{k:>{w}}: {v:.3f}" if isinstance(v, float) else f"{k:>{w}}: {v}")
    return 0


def _train(args) -> int:
    from ..train.run import TrainOptions, run_training
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    opts = TrainOptions(out_dir=Path(args.out), preset=args.preset, corpus=args.corpus, parts=parts,
                        levels=args.levels,
                        steps=args.steps, lm_steps=args.lm_steps, batch=args.batch,
                        grad_accum=args.grad_accum, tokenizer_chars=args.tokenizer_chars,
                        time_limit=args.time_limit, device=args.device, resume=args.resume,
                        overwrite=args.overwrite,
                        seed=args.seed, eval_every=args.eval_every, save_every=args.save_every,
                        progress=not args.no_progress, dropout=args.dropout,
                        head_classes=args.head_classes, top_lengths=args.top_lengths,
                        lm_shape=args.lm_shape,
                        weight_decay=args.weight_decay, decay=args.decay,
                        keep_below_bar=args.keep_below_bar)
    results = run_training(opts)
    below = [part for part, r in results.items() if r.get("below_bar")]
    return EXIT_BELOW_BAR if below and not args.keep_below_bar else 0  # each said why on stderr


if __name__ == "__main__":
    sys.exit(main())
