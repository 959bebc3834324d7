"""The bench's verdicts and outputs: targets met or not, an aligned terminal table, JSON,
Markdown for RESULTS.md and a PNG plot.

All of them read only the rows (dicts) that ``bench.run_bench`` returns, so they can be
regenerated from a saved JSON file without measuring again.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ..errors import FractalFloodError
from ..fileio import dumps
from .row import NA

FIDELITY_BAR = 0.999  # speed counts only at or above this render fidelity ("99.9% per level")
MODES = (("render-only", "Render-only (held-out roots -> text)"),
         ("end-to-end", "End-to-end (prompt -> text, manager included)"),
         ("autoregressive", "Autoregressive peer (over chunk tokens)"))
EXPLAIN = ("A token is one level-1 chunk. Seconds: median of the timed runs (warm-up excluded, device "
           "synchronised). Fidelity: share of rendered roots equal to the tokenizer's own text; "
           "CER: character error rate. held-out bpc: held-out bits per character of the model that chose "
           "the text (the manager for Fractal Flood, whose renderer only spells the manager's roots; "
           "the peer for its own rows): the same-quality yardstick printed next to speed. sample bpc: bits "
           "per character of the row's own text under the trained AR peer. flops: matrix FLOPs of every "
           "pass the row ran (renderer, manager, peer), counted from shapes; MFLOP/token = flops / tokens "
           "/ 10^6. 'render table lookup' is the tokenizer's own decode: the exact reference a learned "
           "renderer is measured against. 'plan chars/4 per s' is the plan's own figure (characters / 4), "
           "shown only to compare with the plan.")

# The CPU render-only target is "10x today's at R=256": today's figure is the previous default
# model's CPU bench, named in "source". CPU absolute figures from two runs are not comparable
# (other load, other machine), so a baseline row measured in the same run (--baseline-model)
# replaces it whenever the run has one.
TODAY_CPU_RENDER_R256 = {
    "tokens_per_s": 413.0768451821532, "row": "render flood k=1 R=256", "renderer": "6x256",
    "source": "docs/bench/cpu_2026-11-27/bench.json (2026-11-27T14:38:02+00:00, CPU (x86_64, 2 threads), "
              "float32, the previous 6 x 256 default model)"}

FLOOD = {"flood", "adaptive"}


def _faithful(r: dict) -> bool:
    return r["fidelity"] != NA and r["fidelity"] >= FIDELITY_BAR


def _ours(r: dict) -> bool:
    """A row of the model under test (not the --baseline-model's)."""
    return r.get("model") != "baseline"


def _fastest(rows: list):
    return max(rows, key=lambda r: r["tokens_per_s"]) if rows else None


def _peer(rows: list, requests: int):
    """The strongest AR peer row at this many requests (our static-cache stream)."""
    return _fastest([r for r in rows if r["mode"] == "autoregressive" and r["decoder"].startswith("ARStream")
                     and r["requests"] == requests])


def _engine_peer(rows: list, requests: int, compute_type: str):
    """The fastest CTranslate2 peer row of this compute type at this many requests (over its
    thread counts: the engine as a user would set it up on this machine)."""
    return _fastest([r for r in rows if r["mode"] == "autoregressive"
                     and r["decoder"].startswith(f"ctranslate2 {compute_type},") and r["requests"] == requests])


def _best(rows: list, pred):
    """-> (candidate rows, the fastest faithful one or None)."""
    cands = [r for r in rows if pred(r)]
    return cands, _fastest([r for r in cands if _faithful(r)])


def _absolute(rows, pred):
    cands, row = _best(rows, pred)
    return cands, (row["tokens_per_s"] if row else None), ([row["name"]] if row else []), ""


def _ratio(rows, pred, ref):
    """Fastest faithful row over a reference row; no reference: not measured."""
    if ref is None:
        return [], None, [], ""
    cands, row = _best(rows, pred)
    if row is None:
        return cands, None, [], ""
    return cands, row["tokens_per_s"] / ref["tokens_per_s"], [row["name"], ref["name"]], ""


def _e2e_single(r):
    return r["mode"] == "end-to-end" and r["stream"] == "single" and r["decoder"] in FLOOD and _ours(r)


def _default_single(r):
    """The row of the default command: ``generate`` with no opt-in step (``+compile``,
    ``+fused`` rows are the opt-ins)."""
    return _e2e_single(r) and r["name"] == "e2e single flood k=1"


def _vs_previous_plan(rows):
    """The CPU target for a coarser plan: single-stream end-to-end over the
    --baseline-model's, divided by the characters-per-manager-step ratio of the two runs
    (>= 1: speed grew at least as much as the plan got coarser). Both rows are the k = 1
    flood at the same sampling."""
    base = [r for r in rows if r.get("model") == "baseline" and r["mode"] == "end-to-end" and _faithful(r)]
    ours = [r for r in rows if _default_single(r) and _faithful(r)]
    cands = [r for r in rows if r.get("model") == "baseline" and r["mode"] == "end-to-end"]
    if not base or not ours:
        return cands, None, [], "needs --baseline-model" if not cands else ""
    b, o = base[0], ours[0]
    speed = o["tokens_per_s"] / b["tokens_per_s"]
    plan = (o["chars"] / o["manager_steps"]) / (b["chars"] / b["manager_steps"])
    return cands, speed / plan, [o["name"], b["name"]], \
        f"tokens/s {speed:.2f}x the previous default's, characters per manager step {plan:.2f}x"


def _render(r):
    return r["mode"] == "render-only" and r["decoder"] in FLOOD and _ours(r)


def _vs_sequential(rows):
    seq = [r for r in rows if r["mode"] == "end-to-end" and r["decoder"] == "sequential"]
    return _ratio(rows, _e2e_single, seq[0] if seq else None)


def _vs_hf(rows):
    hf1 = [r for r in rows if r["decoder"] == "transformers generate" and r["requests"] == 1]
    return _ratio(rows, _e2e_single, hf1[0] if hf1 else None)


def _vs_peer_single(rows):
    return _ratio(rows, _e2e_single, _peer(rows, 1))


def _vs_engine_single(compute_type: str):
    return lambda rows: _ratio(rows, _e2e_single, _engine_peer(rows, 1, compute_type))


def _vs_peer_batched(rows, only=None, peer_of=_peer):
    """The worst ratio over the batch sizes both were measured at (each B must be met);
    ``peer_of(rows, B)``: the peer row to compare with."""
    cands = [r for r in rows if r["mode"] == "end-to-end" and r["stream"] == "batched"
             and (only is None or r["requests"] == only)]
    pairs = []
    for B in sorted({r["requests"] for r in cands}):
        row, peer = _fastest([r for r in cands if r["requests"] == B and _faithful(r)]), peer_of(rows, B)
        if peer is not None:
            pairs.append((row["tokens_per_s"] / peer["tokens_per_s"] if row else None, row, peer, B))
    if not pairs:
        return [], None, [], ""
    if any(v is None for v, *_ in pairs):
        return cands, None, [], f"no row at fidelity >= {FIDELITY_BAR:.1%} at some B"
    v, row, peer, B = min(pairs, key=lambda p: p[0])
    return cands, v, [row["name"], peer["name"]], ", ".join(f"B={b}: {x:,.2f}x" for x, _, _, b in pairs)


def _vs_today(rows):
    cands, row = _best(rows, lambda r: _render(r) and r["decoder"] == "flood" and r["k"] == 1
                       and r["roots"] == 256)
    # a same-run baseline counts only if it is today's model (its renderer's size in the note)
    today = f"renderer {TODAY_CPU_RENDER_R256['renderer']}"
    base = [r for r in rows if r.get("model") == "baseline" and r["mode"] == "render-only"
            and r["roots"] == 256 and r.get("note", "").endswith(today)]
    if row is None:
        return cands, None, [], ""
    if base:
        return cands, row["tokens_per_s"] / base[0]["tokens_per_s"], [row["name"], base[0]["name"]], \
            "same-run baseline"
    old = TODAY_CPU_RENDER_R256
    return cands, row["tokens_per_s"] / old["tokens_per_s"], [row["name"]], \
        (f"against {old['tokens_per_s']:,.0f} tokens/s ({old['row']}) of {old['source']}: another run, so "
         f"only indicative (CPU load and machine differ); measure --baseline-model for a same-run ratio")


# (name, hardware, goal, unit, measure(rows) -> (candidates, value, rows used, note))
TARGETS = (
    ("single-stream end-to-end", "gpu", 10_000, "tokens/s", lambda rows: _absolute(rows, _e2e_single)),
    ("render-only", "gpu", 100_000, "tokens/s", lambda rows: _absolute(rows, _render)),
    ("batched end-to-end", "gpu", 500_000, "tokens/s",
     lambda rows: _absolute(rows, lambda r: r["mode"] == "end-to-end" and r["stream"] == "batched")),
    ("end-to-end vs the sequential baseline", "gpu", 50, "x", _vs_sequential),
    ("vs transformers generate() at batch 1", "gpu", 20, "x", _vs_hf),
    ("batched end-to-end vs the AR peer at B=1,024", "gpu", 1, "x",
     lambda rows: _vs_peer_batched(rows, 1024)),
    ("render-only, the million goal", "gpu", 1_000_000, "tokens/s", lambda rows: _absolute(rows, _render)),
    ("end-to-end single-stream vs the AR peer", "cpu", 1.5, "x", _vs_peer_single),
    ("batched end-to-end vs the AR peer, same requests", "cpu", 1, "x", _vs_peer_batched),
    ("render-only flood K=1 at R=256 vs the recorded CPU flood", "cpu", 10, "x", _vs_today),
    ("single-stream speed-up over the previous default / its chars-per-step ratio", "cpu", 1, "x",
     _vs_previous_plan),
    ("single-stream end-to-end with the default command (no --compile, no --fused-step)", "gpu",
     10_000, "tokens/s", lambda rows: _absolute(rows, _default_single)),
    ("end-to-end single-stream vs the AR peer in CTranslate2 float32", "cpu", 1.5, "x",
     _vs_engine_single("float32")),
    ("end-to-end single-stream vs the AR peer in CTranslate2 int8", "cpu", 1, "x", _vs_engine_single("int8")),
    ("batched end-to-end vs the AR peer in CTranslate2 float32, same requests", "cpu", 1, "x",
     lambda rows: _vs_peer_batched(rows, peer_of=lambda rs, B: _engine_peer(rs, B, "float32"))),
)


def compute_targets(rows: list, hardware: str = "gpu") -> list:
    """Each target from the rows of one run: 'met', 'not met', 'not measured', or 'other
    hardware' (a CPU target in a GPU run and vice versa; its value is still shown). Only rows
    at render fidelity >= 99.9% count (a fast decoder that writes wrong text meets nothing)."""
    out = []
    for name, hw, goal, unit, how in TARGETS:
        cands, value, used, note = how(rows)
        if hw != hardware:
            status = "other hardware"
        elif not cands:
            status = "not measured"
        else:
            status = "met" if value is not None and value >= goal else "not met"
        if cands and value is None and not note:
            note = f"no row at fidelity >= {FIDELITY_BAR:.1%}"
        out.append({"target": name, "hardware": hw.upper(), "goal": goal, "unit": unit, "value": value,
                    "status": status, "rows": used, "note": note})
    return out


def versus_peer(rows: list) -> list:
    """Each Fractal Flood end-to-end row beside the AR peer at the same number of requests:
    [(ff row, peer row or None)]."""
    return [(r, _peer(rows, r["requests"])) for r in rows if r["mode"] == "end-to-end"]


def _num(v, spec: str) -> str:
    return NA if v == NA or v is None else format(v, spec)


def _cells(r: dict) -> dict:
    """Display strings for one row, by column title."""
    return {"row": r["name"], "stream": r["stream"], "k": str(r["k"]), "model": r.get("model", NA),
            "roots": _num(r["roots"], ","), "requests": _num(r["requests"], ","), "tokens": _num(r["tokens"], ","),
            "chars": _num(r["chars"], ","), "seconds": _num(r["seconds"], ".4g"),
            "tokens/s": _num(r["tokens_per_s"], ",.0f"), "chars/s": _num(r["chars_per_s"], ",.0f"),
            "plan chars/4 per s": _num(r["plan_chars_div_4_per_s"], ",.0f"),
            "fidelity": _num(r["fidelity"], ".1%"), "CER": _num(r["cer"], ".2%"),
            "held-out bpc": _num(r["heldout_bpc"], ".3f"), "sample bpc": _num(r["sample_bpc"], ".3f"),
            "flops": _num(r["flops"], ".3g"), "MFLOP/token": _num(r["mflop_per_token"], ",.2f"),
            "draws": _num(r["draws"], ","), "passes": _num(r["passes"], ","),
            "mgr steps": _num(r["manager_steps"], ","), "runs": str(r["repeats"])}


TERMINAL = ("row", "requests", "tokens", "seconds", "tokens/s", "fidelity", "CER", "held-out bpc", "sample bpc",
            "flops", "MFLOP/token", "passes", "mgr steps")
MARKDOWN = ("row", "stream", "k", "model", "roots", "requests", "tokens", "chars", "seconds", "tokens/s",
            "chars/s", "plan chars/4 per s", "fidelity", "CER", "held-out bpc", "sample bpc", "flops",
            "MFLOP/token", "draws", "passes", "mgr steps", "runs")
VERSUS = ("requests", "Fractal Flood row", "FF tokens/s", "FF held-out bpc", "FF MFLOP/token", "AR peer row",
          "peer tokens/s", "peer held-out bpc", "peer MFLOP/token", "FF / peer speed")
TEXT_COLUMNS = {"row", "stream", "model", "target", "hardware", "goal", "status", "rows", "fastest row per kind",
                "Fractal Flood row", "AR peer row"}  # left-aligned
TARGET_COLUMNS = ("target", "hardware", "goal", "measured", "status", "rows")


def aligned(header: tuple, lines: list) -> str:
    """Plain-text columns: words left-aligned, numbers right-aligned."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    left = [h in TEXT_COLUMNS for h in header]
    fmt = lambda cells: "  ".join(c.ljust(w) if lf else c.rjust(w)
                                  for c, w, lf in zip(cells, widths, left)).rstrip()
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(c) for c in lines])


def _target_cells(t: dict) -> list:
    v = t["value"]
    value = NA if v is None else (f"{v:,.2f}x" if t["unit"] == "x" else f"{v:,.0f}")
    goal = f">= {t['goal']:,}" + ("x" if t["unit"] == "x" else f" {t['unit']}")
    used = ", ".join(t["rows"])
    return [t["target"], t.get("hardware", "GPU"), goal, value, t["status"],
            "; ".join(x for x in (used, t["note"]) if x)]


def _versus_cells(data: dict) -> list:
    out = []
    for ff, peer in versus_peer(data["rows"]):
        f = _cells(ff)
        p = _cells(peer) if peer else {}
        ratio = f"{ff['tokens_per_s'] / peer['tokens_per_s']:,.2f}x" if peer else NA
        out.append([f["requests"], f["row"], f["tokens/s"], f["held-out bpc"], f["MFLOP/token"],
                    p.get("row", "not measured"), p.get("tokens/s", NA), p.get("held-out bpc", NA),
                    p.get("MFLOP/token", NA), ratio])
    return out


def _header(data: dict) -> str:
    run = data["run"]
    return f"{run['device']}, {run['dtype']}, torch {run['torch']}, {run['date']}"


def _quality(data: dict) -> str:
    q = data["quality_reference"]
    return (f"held-out bits per char: manager {_num(q['manager_heldout_bpc'], '.3f')}, AR peer "
            f"{_num(q['peer_heldout_bpc'], '.3f')} ({q['heldout_windows']} windows of each one's context); "
            f"the peer's own samples at temperature {q['temperature']} score "
            f"{_num(q['peer_samples_bpc'], '.3f')} under it")


def _targets_title() -> str:
    return f"targets (a row counts only at render fidelity >= {FIDELITY_BAR:.1%})"


def format_table(data: dict) -> str:
    """The terminal report: rows, Fractal Flood beside the AR peer, quality, skipped sizes, targets."""
    lines = [f"fractal-flood bench: {_header(data)}", ""]
    lines.append(aligned(TERMINAL, [[_cells(r)[c] for c in TERMINAL] for r in data["rows"]]))
    versus = _versus_cells(data)
    if versus:
        lines += ["", "Fractal Flood beside the AR peer at the same number of requests:", aligned(VERSUS, versus)]
    lines += ["", _quality(data)] + [f"skipped: {s}" for s in data["skipped"]]
    lines += ["", _targets_title() + ":", aligned(TARGET_COLUMNS, [_target_cells(t) for t in data["targets"]])]
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
    rows = [[r["name"], _cells(r)["tokens/s"], _cells(r)["fidelity"], _cells(r)["MFLOP/token"]]
            for r in best.values()]
    return "\n".join([f"fractal-flood bench: {_header(data)}",
                      aligned(("fastest row per kind", "tokens/s", "fidelity", "MFLOP/token"), rows), "",
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
    versus = _versus_cells(data)
    if versus:
        parts += ["### Fractal Flood beside the AR peer (same number of requests)", "",
                  _md_table(VERSUS, versus), ""]
    parts += ["### Text quality", "", _quality(data) + ".", ""]
    parts += [f"### {_targets_title()[0].upper()}{_targets_title()[1:]}", "",
              _md_table(TARGET_COLUMNS, [_target_cells(t) for t in data["targets"]]), ""]
    if data["skipped"]:
        parts += ["Skipped:", ""] + [f"- {s}" for s in data["skipped"]] + [""]
    return "\n".join(parts)


def write_json(data: dict, path) -> None:
    """Strict JSON (a non-finite number is null), written atomically at exactly ``path``."""
    from ..fileio import write_text
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


def _plain_numbers(axis) -> None:
    from matplotlib.ticker import FuncFormatter, NullFormatter
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _speed_quality(ax, rows: list) -> None:
    """Held-out bits per char against tokens/s: one point per model and decoder (row)."""
    style = {"manager": ("o", "tab:blue", "Fractal Flood (manager's bpc)"),
             "AR peer": ("s", "tab:red", "AR peer (its own bpc)")}
    seen = set()
    for r in rows:
        if r["mode"] == "render-only" or r["heldout_bpc"] == NA or r.get("model") not in style:
            continue
        marker, color, label = style[r["model"]]
        if r["decoder"] == "transformers generate":
            marker, color, label = "^", "tab:orange", "AR peer, HF generate()"
        elif r["decoder"].startswith("ctranslate2"):
            marker, color, label = "D", "tab:purple", "AR peer, CTranslate2"
        ax.scatter(r["tokens_per_s"], r["heldout_bpc"], marker=marker, color=color,
                   label=None if label in seen else label, zorder=3)
        seen.add(label)
        short = r["name"].replace("e2e ", "").replace("AR peer ", "peer ").replace(" k=1", "")
        ax.annotate(short, (r["tokens_per_s"], r["heldout_bpc"]), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xscale("log")
    _plain_numbers(ax.xaxis)
    ax.set_xlabel("tokens/s (level-1 chunks per second, log scale)")
    ax.set_ylabel("held-out bits per character (lower is better)")
    ax.set_title("Speed and quality: end-to-end and AR peer", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    if seen:
        ax.legend(fontsize=7)


def _throughput(ax, rows: list) -> None:
    """Render-only throughput against the number of roots, log-log, one line per decoder."""
    lines = defaultdict(list)  # (model, decoder, k) -> [(roots, tokens/s)]
    for r in rows:
        if r["mode"] == "render-only":
            key = (r.get("model", "renderer"), r["decoder"], 0 if r["k"] == NA else r["k"])
            lines[key].append((r["roots"], r["tokens_per_s"]))
    for (model, decoder, k), pts in sorted(lines.items()):
        xs, ys = zip(*sorted(pts))
        label = ("baseline " if model == "baseline" else "") + decoder + (f" k={k}" if k else "")
        ax.plot(xs, ys, marker="o", label=label, linestyle="--" if decoder == "table lookup" else "-")
    ax.set_xscale("log")
    ax.set_yscale("log")
    if lines:
        ax.set_xticks(sorted({x for pts in lines.values() for x, _ in pts}))  # the R measured
        ax.legend(fontsize=7)
    for axis in (ax.xaxis, ax.yaxis):
        _plain_numbers(axis)
    ax.set_xlabel("roots rendered at once (R)")
    ax.set_ylabel("tokens/s (level-1 chunks per second)")
    ax.set_title("Render-only throughput", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)


def write_plot(data: dict, path) -> None:
    """A PNG with two panels (speed-quality; render throughput against R), written to
    exactly ``path``, whatever its suffix."""
    plt = require_matplotlib()
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    _speed_quality(left, data["rows"])
    _throughput(right, data["rows"])
    fig.suptitle(f"fractal-flood bench: {_header(data)}", fontsize=9)
    fig.tight_layout()
    from ..fileio import atomic_write
    # format given: matplotlib would otherwise append ".png" to a name without it
    atomic_write(Path(path), lambda p: fig.savefig(p, dpi=120, format="png"))
    plt.close(fig)
