"""The bench's verdicts and outputs: targets met or not, an aligned terminal table, JSON,
Markdown for RESULTS.md and a PNG plot.

All of them read only the rows (dicts) that ``bench.run_bench`` returns, so they can be
regenerated from a saved JSON file without measuring again.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from .errors import FractalFloodError
from .json_io import dumps

NA = "n/a"  # a field that does not apply to a row (e.g. render fidelity of AR text)
FIDELITY_BAR = 0.99  # speed counts only at or above this render fidelity (docs/DESIGN.md)
MODES = (("render-only", "Render-only (held-out roots -> text)"),
         ("end-to-end", "End-to-end (prompt -> text, manager included)"),
         ("autoregressive", "Autoregressive peer (same size, over chunk tokens)"))
EXPLAIN = ("A token is one level-1 chunk. Seconds: median of the timed runs (warm-up excluded, device "
           "synchronised). Fidelity: share of rendered roots equal to the tokenizer's own text; "
           "CER: character error rate. bpc: bits per character of the row's text under the trained "
           "AR peer. 'plan chars/4 per s' is the plan's own figure (characters / 4), shown only to "
           "compare with the plan.")

TARGETS = (  # (name, goal, unit); GPU figures (docs/DESIGN.md)
    ("single-stream end-to-end", 10_000, "tokens/s"),
    ("render-only", 100_000, "tokens/s"),
    ("batched end-to-end", 500_000, "tokens/s"),
    ("end-to-end vs the sequential baseline", 50, "x"),
    ("vs transformers generate() at batch 1", 20, "x"),
)


def compute_targets(rows: list) -> list:
    """Each target from the rows: 'met', 'not met' or 'not measured'. Only rows at render
    fidelity >= 99% count (a fast decoder that writes wrong text meets nothing)."""
    def best(pred):
        cands = [r for r in rows if pred(r)]
        good = [r for r in cands if r["fidelity"] != NA and r["fidelity"] >= FIDELITY_BAR]
        return cands, (max(good, key=lambda r: r["tokens_per_s"]) if good else None)

    flood = {"flood", "adaptive"}
    single = best(lambda r: r["mode"] == "end-to-end" and r["stream"] == "single" and r["decoder"] in flood)
    render = best(lambda r: r["mode"] == "render-only" and r["decoder"] in flood)
    batched = best(lambda r: r["mode"] == "end-to-end" and r["stream"] == "batched")
    seq = [r for r in rows if r["mode"] == "end-to-end" and r["decoder"] == "sequential"]
    hf1 = [r for r in rows if r["decoder"] == "transformers generate" and r["requests"] == 1]
    found = [single, render, batched, (single[0] + seq if seq else [], single[1]),
             (single[0] + hf1 if hf1 else [], single[1])]
    base = [None, None, None, seq[0] if seq else None, hf1[0] if hf1 else None]
    out = []
    for (name, goal, unit), (cands, row), ref in zip(TARGETS, found, base):
        value, used = None, []
        if row is not None and (unit != "x" or ref is not None):
            value = row["tokens_per_s"] / (ref["tokens_per_s"] if ref else 1)
            used = [row["name"]] + ([ref["name"]] if ref else [])
        met = value is not None and value >= goal
        status = "not measured" if not cands else ("met" if met else "not met")
        note = "no row at fidelity >= 99%" if cands and row is None else ""
        out.append({"target": name, "goal": goal, "unit": unit, "value": value, "status": status,
                    "rows": used, "note": note})
    return out


def _num(v, spec: str) -> str:
    return NA if v == NA or v is None else format(v, spec)


def _cells(r: dict) -> dict:
    """Display strings for one row, by column title."""
    return {"row": r["name"], "stream": r["stream"], "k": str(r["k"]), "roots": _num(r["roots"], ","),
            "requests": _num(r["requests"], ","), "tokens": _num(r["tokens"], ","),
            "chars": _num(r["chars"], ","), "seconds": _num(r["seconds"], ".4g"),
            "tokens/s": _num(r["tokens_per_s"], ",.0f"), "chars/s": _num(r["chars_per_s"], ",.0f"),
            "plan chars/4 per s": _num(r["plan_chars_div_4_per_s"], ",.0f"),
            "fidelity": _num(r["fidelity"], ".1%"), "CER": _num(r["cer"], ".2%"),
            "bpc": _num(r["bpc"], ".3f"),
            "draws": _num(r["draws"], ","), "passes": _num(r["passes"], ","),
            "mgr steps": _num(r["manager_steps"], ","), "runs": str(r["repeats"])}


TERMINAL = ("row", "tokens", "chars", "seconds", "tokens/s", "chars/s", "fidelity", "CER", "bpc",
            "draws", "passes", "mgr steps")
MARKDOWN = ("row", "stream", "k", "roots", "requests", "tokens", "chars", "seconds", "tokens/s", "chars/s",
            "plan chars/4 per s", "fidelity", "CER", "bpc", "draws", "passes", "mgr steps", "runs")
TEXT_COLUMNS = {"row", "stream", "target", "goal", "status", "rows", "fastest row per kind"}  # left-aligned
TARGET_COLUMNS = ("target", "goal", "measured", "status", "rows")


def aligned(header: tuple, lines: list) -> str:
    """Plain-text columns: words left-aligned, numbers right-aligned."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    left = [h in TEXT_COLUMNS for h in header]
    fmt = lambda cells: "  ".join(c.ljust(w) if lf else c.rjust(w)
                                  for c, w, lf in zip(cells, widths, left)).rstrip()
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(c) for c in lines])


def _target_cells(t: dict) -> list:
    v = t["value"]
    value = NA if v is None else (f"{v:,.1f}x" if t["unit"] == "x" else f"{v:,.0f}")
    goal = f">= {t['goal']:,}" + ("x" if t["unit"] == "x" else f" {t['unit']}")
    return [t["target"], goal, value, t["status"], t["note"] or ", ".join(t["rows"])]


def _header(data: dict) -> str:
    run = data["run"]
    return f"{run['device']}, {run['dtype']}, torch {run['torch']}, {run['date']}"


def _quality(data: dict) -> str:
    q = data["quality_reference"]
    return (f"bits per char under the AR peer: held-out corpus text {_num(q['heldout_bpc'], '.3f')}, "
            f"the peer's own samples at temperature {q['temperature']} {_num(q['peer_samples_bpc'], '.3f')}")


def format_table(data: dict) -> str:
    """The terminal report: rows, reference quality, skipped sizes, targets."""
    lines = [f"fractal-flood bench: {_header(data)}", ""]
    lines.append(aligned(TERMINAL, [[_cells(r)[c] for c in TERMINAL] for r in data["rows"]]))
    lines += ["", _quality(data)] + [f"skipped: {s}" for s in data["skipped"]]
    lines += ["", aligned(TARGET_COLUMNS, [_target_cells(t) for t in data["targets"]])]
    if data["run"].get("note"):
        lines.append(f"note: {data['run']['note']}")
    return "\n".join(lines)


def short_table(data: dict) -> str:
    """A few lines for the end of a log: targets and the fastest row of each kind."""
    best = {}
    for r in data["rows"]:
        kind = (r["mode"], r["stream"], r["decoder"])
        if kind not in best or r["tokens_per_s"] > best[kind]["tokens_per_s"]:
            best[kind] = r
    rows = [[r["name"], _cells(r)["tokens/s"], _cells(r)["fidelity"]] for r in best.values()]
    return "\n".join([f"fractal-flood bench: {_header(data)}",
                      aligned(("fastest row per kind", "tokens/s", "fidelity"), rows), "",
                      aligned(TARGET_COLUMNS, [_target_cells(t) for t in data["targets"]])])


def _md_table(header: tuple, lines: list) -> str:
    rule = "|" + "|".join("---" if h in TEXT_COLUMNS else "---:" for h in header) + "|"
    out = ["| " + " | ".join(header) + " |", rule]
    return "\n".join(out + ["| " + " | ".join(c.replace("|", "/") for c in cells) + " |" for cells in lines])


def to_markdown(data: dict) -> str:
    """Tables ready to paste into RESULTS.md, with the hardware and the exact command."""
    run = data["run"]
    parts = [f"## Bench: {_header(data)}", "",
             f"Command: `{run['command']}` (fractal-flood {run['fractal_flood']}, Python {run['python']}, "
             f"{run['repeats']} timed run(s) per row, wall time {run['wall_s']:.0f} s)", "", EXPLAIN, ""]
    if run.get("note"):
        parts += [f"Note: {run['note']}.", ""]
    for mode, title in MODES:
        rows = [r for r in data["rows"] if r["mode"] == mode]
        if rows:
            table = _md_table(MARKDOWN, [[_cells(r)[c] for c in MARKDOWN] for r in rows])
            parts += [f"### {title}", "", table]
            notes = [f"- {r['name']}: {r['note']}" for r in rows if r["note"]]
            parts += ([""] + notes if notes else []) + [""]
    parts += ["### Text quality", "", _quality(data) + ".", ""]
    parts += ["### Targets (GPU figures; a row counts only at render fidelity >= 99%)", "",
              _md_table(TARGET_COLUMNS, [_target_cells(t) for t in data["targets"]]), ""]
    if data["skipped"]:
        parts += ["Skipped:", ""] + [f"- {s}" for s in data["skipped"]] + [""]
    return "\n".join(parts)


def write_json(data: dict, path) -> None:
    """Strict JSON (a non-finite number is null), written atomically at exactly ``path``."""
    from .checkpoint import write_text
    write_text(Path(path), dumps(data, indent=1) + "\n")


def require_matplotlib():
    """Import matplotlib (headless) or fail with one line saying how to get it."""
    try:
        import matplotlib
    except ImportError:
        raise FractalFloodError("--plot needs matplotlib: pip install 'fractal-flood[bench]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def write_plot(data: dict, path) -> None:
    """Render-only throughput (tokens/s) against the number of roots, log-log, one line per decoder."""
    plt = require_matplotlib()
    from matplotlib.ticker import FuncFormatter, NullFormatter
    lines = defaultdict(list)  # (decoder, k) -> [(roots, tokens/s)]
    for r in data["rows"]:
        if r["mode"] == "render-only":
            lines[(r["decoder"], 0 if r["k"] == NA else r["k"])].append((r["roots"], r["tokens_per_s"]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (decoder, k), pts in sorted(lines.items()):
        xs, ys = zip(*sorted(pts))
        ax.plot(xs, ys, marker="o", label=decoder + (f" k={k}" if k else ""))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(sorted({x for pts in lines.values() for x, _ in pts}))  # the R measured
    for axis in (ax.xaxis, ax.yaxis):  # plain numbers, not powers of ten
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("roots rendered at once (R)")
    ax.set_ylabel("tokens/s (level-1 chunks)")
    ax.set_title(f"Render-only throughput\n{_header(data)}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    from .checkpoint import atomic_write
    # format given: matplotlib would otherwise append ".png" to a name without it
    atomic_write(Path(path), lambda p: fig.savefig(p, dpi=120, format="png"))
    plt.close(fig)
