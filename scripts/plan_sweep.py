"""Plan sweep: how much text one manager step writes, against how well the manager predicts it.

For each hierarchy in the sweep (a list of dicts, see ``DEFAULT_POINTS``) on one corpus:
  1. train the tokenizer and measure characters per root (= per manager step), on the whole
     corpus and on the held-out tail (the last 5% of roots, the split the manager is
     validated on);
  2. train the manager (the preset's size; the same steps and batch for every point) with
     ``fractal-flood train --parts manager`` semantics (``run_training``) and read its
     held-out bits per character;
  3. time one eager decode step of that manager at batch 1 on this machine.
Writes ``plan_sweep.json``, ``plan_sweep.md`` and ``plan_sweep.png`` (characters per step
against held-out bits per character) into OUT_DIR, rewriting the JSON after every point so a
run cut short keeps what it measured.

A point is ``{"levels": [...]}``: the token levels from the top (roots) down, each
``{"size": vocabulary, "max_children": most tokens of the level below}``; the characters
below the last one are implied (their alphabet comes from the corpus). Two levels (roots
over chunks) is today's tokenizer; deeper points need the N-level tokenizer
(``HierarchicalTokenizer.train(text, levels=...)``) and fail with one clear line until it
exists.

Usage: PYTHONPATH=src python3 scripts/plan_sweep.py OUT_DIR [--roots 2048,4096] [--max-root-chunks 4,8]
       [--chunks 1024] [--steps 150] [--batch 8] [--preset seed] [--corpus FILE] [--points FILE.json]
       PYTHONPATH=src python3 scripts/plan_sweep.py OUT_DIR --merge A/plan_sweep.json B/plan_sweep.json
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from fractal_flood.corpus.reader import load_corpus
from fractal_flood.corpus.streams import TokenStream
from fractal_flood.errors import FractalFloodError
from fractal_flood.hierarchy.tokenizer import HierarchicalTokenizer
from fractal_flood.manager.stream import ARStream
from fractal_flood.models import checkpoint as ckpt
from fractal_flood.sampling.tokens import SamplingConfig
from fractal_flood.train.run import TrainOptions, run_training

TARGET_CHARS_PER_STEP = 4.7
TARGET_BPC = 2.43  # the shipped manager's held-out bits per character (fractal-flood eval)
CHUNKS, MAX_CHUNK_CHARS = 1024, 16  # today's chunk level


def two_level(roots: int, max_root_chunks: int, chunks: int = CHUNKS,
              max_chunk_chars: int = MAX_CHUNK_CHARS) -> dict:
    return {"levels": [{"size": roots, "max_children": max_root_chunks},
                       {"size": chunks, "max_children": max_chunk_chars}]}


DEFAULT_POINTS = [two_level(r, m) for m in (4, 8) for r in (2048, 4096, 8192, 16384)]


def label(point: dict) -> str:
    return " / ".join(f"{lv['size']}x{lv['max_children']}" for lv in point["levels"])


def check_points(points) -> list:
    """A sweep is a list of ``{"levels": [{"size", "max_children"}, ...]}``, at least 2 levels."""
    if not isinstance(points, list) or not points:
        raise FractalFloodError(f"a sweep is a non-empty list of points, got {points!r}")
    for point in points:
        levels = point.get("levels") if isinstance(point, dict) else None
        if not isinstance(levels, list) or len(levels) < 2:
            raise FractalFloodError(f"a point is {{\"levels\": [2 or more levels]}}, got {point!r}")
        for lv in levels:
            if (not isinstance(lv, dict) or set(lv) - {"name", "size", "max_children"}
                    or not all(isinstance(lv.get(k), int) and lv[k] >= 1 for k in ("size", "max_children"))):
                raise FractalFloodError(f"a level is {{size >= 1, max_children >= 1}}, got {lv!r}")
    return points


def train_tokenizer(text: str, levels: list) -> HierarchicalTokenizer:
    """The hierarchy of ``levels`` (top first, characters implied) trained on ``text``."""
    if len(levels) == 2:
        (roots, chunks) = levels
        return HierarchicalTokenizer.train(text, num_chunks=chunks["size"], num_roots=roots["size"],
                                           max_chunk_chars=chunks["max_children"],
                                           max_root_chunks=roots["max_children"])
    if "levels" in inspect.signature(HierarchicalTokenizer.train).parameters:
        # the N-level tokenizer names every level; a sweep point may leave names out
        named = [{"name": lv.get("name", f"level{i}"), "size": lv["size"], "max_children": lv["max_children"]}
                 for i, lv in enumerate(levels)]
        return HierarchicalTokenizer.train(text, levels=named)
    raise FractalFloodError(f"a hierarchy of {len(levels)} token levels needs the N-level tokenizer "
                            f"(HierarchicalTokenizer.train(text, levels=...)); this one builds 2")


def hierarchy_stats(tok: HierarchicalTokenizer, text: str) -> dict:
    ids = tok.encode(text)
    val = TokenStream.split(ids).val
    val_chars = len(tok.decode(val.tolist()))
    return {"root_vocab": tok.num_roots, "roots": len(ids), "chars": len(text),
            "chars_per_root": len(text) / len(ids),
            "heldout_roots": len(val), "heldout_chars": val_chars,
            "heldout_chars_per_root": val_chars / len(val)}


def train_manager(tok: HierarchicalTokenizer, corpus_path: str, work: Path, preset: str,
                  steps: int, batch: int, seed: int) -> dict:
    """``fractal-flood train --parts manager`` on ``tok`` (saved in ``work`` first, so reused)."""
    ckpt.save_tokenizer(work, tok)
    t0 = time.perf_counter()
    res = run_training(TrainOptions(out_dir=work, preset=preset, corpus=corpus_path, parts=("manager",),
                                    lm_steps=steps, batch=batch, eval_every=max(1, steps // 3),
                                    save_every=steps, seed=seed, device="cpu", progress=False,
                                    log=lambda s: None))["manager"]
    meta = ckpt.read_meta(work, "manager")  # the best held-out checkpoint, as the task keeps it
    return {"val_bpc": meta["metrics"]["val_bpc"], "val_loss": meta["metrics"]["val_loss"],
            "best_step": meta["step"], "final_val_bpc": res["val_bpc"],
            "train_seconds": time.perf_counter() - t0}


@torch.no_grad()
def step_us(work: Path, tok: HierarchicalTokenizer, steps: int = 64, runs: int = 3) -> dict:
    """Median time of one eager decode step of the trained manager at batch 1, fp32."""
    model, _ = ckpt.load_manager(work, tok, "cpu")
    stream = ARStream(model, 1, SamplingConfig(temperature=0.8), "cpu")
    prompt = torch.tensor(tok.encode("\n"))
    times = []
    for _ in range(runs + 1):  # the first run warms up
        stream.start(prompt)
        t0 = time.perf_counter()
        stream.generate(steps)
        times.append((time.perf_counter() - t0) / steps * 1e6)
    return {"step_us_cpu": statistics.median(times[1:]), "params": model.num_params()}


def run_sweep(points: list, out_dir: Path, corpus: str | None = None, preset: str = "seed",
              steps: int = 150, batch: int = 8, seed: int = 0, command: str = "",
              log=print) -> dict:
    check_points(points)
    out_dir = Path(out_dir)
    text = load_corpus(corpus)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    result = {"run": {"command": command, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                      "machine": f"{platform.machine()}, {torch.get_num_threads()} thread(s)",
                      "processor": platform.processor() or platform.machine(),
                      "torch": torch.__version__, "python": platform.python_version(),
                      "corpus": corpus or "shipped TinyShakespeare", "preset": preset,
                      "steps": steps, "batch": batch, "seed": seed,
                      "targets": {"chars_per_step": TARGET_CHARS_PER_STEP, "bpc": TARGET_BPC}},
              "points": []}
    with tempfile.TemporaryDirectory() as tmp:
        corpus_path = str(Path(tmp) / "corpus.txt")
        Path(corpus_path).write_text(text, encoding="utf-8")
        for i, point in enumerate(points):
            row = {"label": label(point), "depth": len(point["levels"]), "levels": point["levels"]}
            t0 = time.perf_counter()
            try:
                tok = train_tokenizer(text, point["levels"])
            except (FractalFloodError, ValueError) as e:
                row["error"] = str(e)
                log(f"[{i + 1}/{len(points)}] {row['label']}: skipped: {e}")
                result["points"].append(row)
                continue
            row["tokenizer_seconds"] = time.perf_counter() - t0
            row.update(hierarchy_stats(tok, text))
            work = Path(tmp) / f"point{i}"
            row.update(train_manager(tok, corpus_path, work, preset, steps, batch, seed))
            row.update(step_us(work, tok))
            row["meets_targets"] = (row["heldout_chars_per_root"] >= TARGET_CHARS_PER_STEP
                                    and row["val_bpc"] <= TARGET_BPC)
            result["points"].append(row)
            result["run"]["wall_s"] = time.perf_counter() - t_start
            (out_dir / "plan_sweep.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
            log(f"[{i + 1}/{len(points)}] {row['label']}: {row['heldout_chars_per_root']:.2f} chars/step "
                f"held-out, val bpc {row['val_bpc']:.3f}, step {row['step_us_cpu']:.0f} us "
                f"({time.perf_counter() - t0:.0f} s)")
    result["run"]["wall_s"] = time.perf_counter() - t_start
    (out_dir / "plan_sweep.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (out_dir / "plan_sweep.md").write_text(markdown(result), encoding="utf-8")
    try:
        write_plot(result, out_dir / "plan_sweep.png")
    except ImportError:
        log("no plot: matplotlib is not installed (pip install 'fractal-flood[bench]')")
    return result


def merge(results: list) -> dict:
    """Several sweep results (e.g. a run cut short and one with the missing points) as one,
    if they share the training budget; each point keeps the command and date that measured it."""
    keys = ("corpus", "preset", "steps", "batch", "seed")
    first = results[0]["run"]
    for r in results[1:]:
        if any(r["run"][k] != first[k] for k in keys):
            raise FractalFloodError(f"cannot merge sweeps with different {', '.join(keys)}")
    run = {**first, "command": " ; ".join(r["run"]["command"] for r in results),
           "date": " ; ".join(r["run"]["date"] for r in results),
           "wall_s": sum(r["run"].get("wall_s", 0.0) for r in results)}
    points = [{**p, "measured_by": r["run"]["command"]} for r in results for p in r["points"]]
    return {"run": run, "points": points}


def markdown(result: dict) -> str:
    run = result["run"]
    commands = run["command"].split(" ; ")
    lines = [f"Plan sweep: {run['corpus']}, manager preset `{run['preset']}`, {run['steps']} steps x batch "
             f"{run['batch']} for every point, {run['machine']}, torch {run['torch']}, {run['date']}.",
             "",
             ("Command: " if len(commands) == 1 else "Commands: ") + " and ".join(f"`{c}`" for c in commands), "",
             "| levels (size x max children, top first) | depth | root vocab | chars/step (corpus) "
             "| chars/step (held-out) | held-out bpc | best step | step us (CPU, batch 1; a shared CPU: noisy) "
             "| manager chars/s (CPU) | meets both targets |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for p in result["points"]:
        if "error" in p:
            lines.append(f"| {p['label']} | {p['depth']} | | | | | | | | not run: {p['error']} |")
            continue
        lines.append(
            f"| {p['label']} | {p['depth']} | {p['root_vocab']:,} | {p['chars_per_root']:.2f} "
            f"| {p['heldout_chars_per_root']:.2f} | {p['val_bpc']:.3f} | {p['best_step']} "
            f"| {p['step_us_cpu']:,.0f} | {p['heldout_chars_per_root'] / p['step_us_cpu'] * 1e6:,.0f} "
            f"| {'yes' if p['meets_targets'] else 'no'} |")
    t = run["targets"]
    lines += ["", f"Targets: >= {t['chars_per_step']} characters per manager step with held-out bits per "
                  f"character <= {t['bpc']}. Wall time {run.get('wall_s', float('nan')):.0f} s."]
    return "\n".join(lines) + "\n"


def write_plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [p for p in result["points"] if "error" not in p]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for depth in sorted({p["depth"] for p in pts}):
        for m in sorted({p["levels"][0]["max_children"] for p in pts if p["depth"] == depth}):
            group = sorted((p for p in pts if p["depth"] == depth and p["levels"][0]["max_children"] == m),
                           key=lambda p: p["heldout_chars_per_root"])
            xs = [p["heldout_chars_per_root"] for p in group]
            ys = [p["val_bpc"] for p in group]
            ax.plot(xs, ys, marker="o", label=f"depth {depth}, top level <= {m} children")
            for p, x, y in zip(group, xs, ys):
                ax.annotate(f"{p['levels'][0]['size']:,}", (x, y), textcoords="offset points",
                            xytext=(4, 4), fontsize=8)
    t = result["run"]["targets"]
    ax.axvline(t["chars_per_step"], color="grey", linestyle="--", linewidth=1)
    ax.axhline(t["bpc"], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("characters per manager step (held-out tail)")
    ax.set_ylabel("manager held-out bits per character")
    run = result["run"]
    ax.set_title(f"plan sweep: {run['steps']} steps x batch {run['batch']} each (target: right of dashed, "
                 f"below dotted)", fontsize=9)
    if pts:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _int_list(s: str) -> list:
    try:
        return [int(v) for v in s.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma list of integers: {s!r}") from None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--roots", type=_int_list, help="root vocabulary sizes (default: 2048,4096,8192,16384)")
    ap.add_argument("--max-root-chunks", type=_int_list, help="most chunks per root (default: 4,8)")
    ap.add_argument("--chunks", type=int, default=CHUNKS, help="chunk vocabulary of the 2-level points")
    ap.add_argument("--points", help="JSON file with a list of points ({\"levels\": [...]}) instead")
    ap.add_argument("--steps", type=int, default=150, help="manager training steps per point")
    ap.add_argument("--batch", type=int, default=8, help="manager batch per step")
    ap.add_argument("--preset", default="seed", help="the manager's size and schedule")
    ap.add_argument("--corpus", help="UTF-8 text (default: the shipped TinyShakespeare)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--merge", nargs="+", metavar="JSON",
                    help="measure nothing: write the table and plot of these sweeps' points into OUT_DIR")
    args = ap.parse_args(argv)
    try:
        if args.merge:
            result = merge([json.loads(Path(f).read_text(encoding="utf-8")) for f in args.merge])
            out = Path(args.out_dir)
            out.mkdir(parents=True, exist_ok=True)
            (out / "plan_sweep.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
            (out / "plan_sweep.md").write_text(markdown(result), encoding="utf-8")
            write_plot(result, out / "plan_sweep.png")
            print(markdown(result))
            return 0
        if args.points:
            points = json.loads(Path(args.points).read_text(encoding="utf-8"))
        elif args.roots or args.max_root_chunks:
            points = [two_level(r, m, args.chunks) for m in (args.max_root_chunks or [4, 8])
                      for r in (args.roots or [2048, 4096, 8192, 16384])]
        else:
            points = DEFAULT_POINTS
        if args.steps < 1 or args.batch < 1:
            raise FractalFloodError("--steps and --batch must be >= 1")
        command = "python3 scripts/plan_sweep.py " + " ".join(sys.argv[1:] if argv is None else argv)
        result = run_sweep(points, Path(args.out_dir), args.corpus, args.preset, args.steps, args.batch,
                           args.seed, command)
    except (FractalFloodError, OSError, json.JSONDecodeError) as e:
        print(f"plan_sweep: error: {e}", file=sys.stderr)
        return 2
    print(markdown(result))
    return 0 if all(math.isfinite(p.get("val_bpc", 0.0)) for p in result["points"]) else 1


if __name__ == "__main__":
    sys.exit(main())
