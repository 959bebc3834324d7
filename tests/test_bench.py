"""The bench: the real CLI end to end (in process, quick sizes, a tiny model with an AR
peer), its rows, FLOPs and snapshots, its timing rule, its quality metrics and its targets.
One CLI run is shared by the tests that read its files."""

import contextlib
import importlib.util
import io
import json
import os
import random
import shutil
import statistics
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import TINY_LM_STEPS, torch_threads
from fractal_flood.measure import ct2_peer
from fractal_flood.measure import report as bench_report
from fractal_flood.manager.stream import ARStream
from fractal_flood.measure.bench import NA, QUICK, ROW_FIELDS, Bench, ar_flops, ar_work, hf_generate_flops
from fractal_flood.measure.report import FIDELITY_BAR, TODAY_CPU_RENDER_R256, compute_targets
from fractal_flood.models.causal_lm import CausalLM
from fractal_flood.cli.main import main
from fractal_flood.models.config import CausalLMConfig
from fractal_flood.models.flops import causal_lm_flops
from fractal_flood.measure.metrics import edit_distance, render_fidelity
from fractal_flood.sampling.tokens import SamplingConfig
from fractal_flood.measure.timing import measure

pytestmark = pytest.mark.usefixtures("single_thread")

HAS_MPL = importlib.util.find_spec("matplotlib") is not None
KINDS = {  # every kind of row the quick run must keep: (mode, stream, decoder prefix)
    "sequential": ("render-only", "single", "sequential"), "flood": ("render-only", "single", "flood"),
    "adaptive": ("render-only", "single", "adaptive"), "table lookup": ("render-only", "single", "table lookup"),
    "e2e single": ("end-to-end", "single", "flood"), "e2e batched": ("end-to-end", "batched", "flood"),
    "AR peer": ("autoregressive", "single", "ARStream"), "AR peer batched": ("autoregressive", "batched", "ARStream"),
}


@pytest.fixture(scope="module")
def bench_model(tiny_model_dir, small_corpus_file, tmp_path_factory):
    """The session's tiny model plus a briefly trained AR peer (the bench's baseline)."""
    from fractal_flood.train.run import TrainOptions, run_training

    out = tmp_path_factory.mktemp("bench_model") / "model"
    shutil.copytree(tiny_model_dir, out, ignore=shutil.ignore_patterns("train_state"))
    with torch_threads(1), torch.random.fork_rng():
        torch.manual_seed(0)
        run_training(TrainOptions(out_dir=out, preset="tiny", corpus=str(small_corpus_file), parts=("peer",),
                                  lm_steps=TINY_LM_STEPS, eval_every=TINY_LM_STEPS, save_every=TINY_LM_STEPS,
                                  progress=False, log=lambda s: None))
    return out


def quick_bench(tmp: Path, model: Path, corpus: Path, device: str):
    """``fractal-flood bench --quick`` in process -> (stdout, stderr, out files, JSON snapshots
    written after each row)."""
    out = {"json": tmp / "bench.json", "md": tmp / "bench.md", "plot": tmp / "speed-quality"}  # no suffix
    args = ["bench", "--quick", "--model", str(model), "--corpus", str(corpus), "--device", device,
            "--json", str(out["json"]), "--markdown", str(out["md"])]
    snapshots = []
    write_json = bench_report.write_json

    def recording(data, path):
        snapshots.append(json.loads(json.dumps(data)))  # a copy, as a reader of the file would see it
        write_json(data, path)

    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        mp.setattr(bench_report, "write_json", recording)
        rc = main(args + (["--plot", str(out["plot"])] if HAS_MPL else []))
    assert rc == 0, stderr.getvalue()[-3000:]
    return stdout.getvalue(), stderr.getvalue(), out, snapshots


@pytest.fixture(scope="module")
def quick(bench_model, small_corpus_file, tmp_path_factory):
    return quick_bench(tmp_path_factory.mktemp("bench"), bench_model, small_corpus_file, "cpu")


def check_report(stdout, stderr, out, snapshots):
    data = json.loads(out["json"].read_text())
    assert data["rows"]
    for row in data["rows"]:
        assert set(ROW_FIELDS) == set(row), set(ROW_FIELDS) ^ set(row)
        assert row["seconds"] > 0 and row["tokens"] > 0 and row["tokens_per_s"] > 0
        assert row["tokens_per_s"] == pytest.approx(row["tokens"] / row["seconds"])
        assert row["plan_chars_div_4_per_s"] == pytest.approx(row["chars_per_s"] / 4)
        assert row["seconds"] == pytest.approx(statistics.median(row["times"]))
        assert row["mflop_per_token"] == pytest.approx(row["flops"] / row["tokens"] / 1e6)
        if row["mode"] == "autoregressive":
            assert row["fidelity"] == NA and row["cer"] == NA
        else:
            assert 0 <= row["fidelity"] <= 1 and 0 <= row["cer"]
        assert row["sample_bpc"] == NA or 0 < row["sample_bpc"] < 20
        assert row["requests"] >= 1
    for kind, (mode, stream, decoder) in KINDS.items():
        assert any(r["mode"] == mode and r["stream"] == stream and r["decoder"].startswith(decoder)
                   for r in data["rows"]), f"no {kind} row"
    for key in ("device", "dtype", "torch", "date", "command"):
        assert data["run"][key]
    assert data["run"]["partial"] is False  # the per-row snapshots were replaced by the full report
    assert {t["status"] for t in data["targets"]} <= {"met", "not met", "not measured", "other hardware"}
    md = out["md"].read_text()
    assert data["run"]["device"] in md and "fractal-flood bench" in md and "| row |" in md
    assert "MFLOP/token" in md and "held-out bpc" in md and "beside the AR peer" in md
    assert "tokens/s" in stdout and "target" in stdout and "MFLOP/token" in stdout  # the terminal table
    assert "[bench" in stderr  # progress goes to stderr
    return data


def test_quick_bench_cli_writes_every_field(quick):
    data = check_report(*quick)
    assert data["run"]["dtype"] == "float32" and data["run"]["quick"] is True
    assert data["run"]["hardware"] == "cpu"


def test_every_row_counts_its_flops(quick):
    data = json.loads(quick[2]["json"].read_text())
    for r in data["rows"]:
        if r["decoder"] == "table lookup":
            assert r["flops"] == 0  # no model runs
        else:
            assert r["flops"] > 0 and r["mflop_per_token"] > 0, r["name"]
    by = {r["name"]: r for r in data["rows"]}
    # best-of-16 draws 16 candidates and scores them: more FLOPs per token than K = 1 on the
    # same roots (R = 4: the first size of every sweep, so never skipped)
    assert by["render flood k=16 R=4"]["mflop_per_token"] > 4 * by["render flood k=1 R=4"]["mflop_per_token"]


def test_flops_add_up_from_the_models_work(quick, bench_model):
    """AR rows: the peer's static-cache decode; end-to-end rows: the manager's decode plus a
    render that did some work of its own."""
    from fractal_flood.models import checkpoint as ckpt

    tok = ckpt.load_tokenizer(bench_model)
    manager, peer = ckpt.load_manager(bench_model, tok)[0], ckpt.load_peer(bench_model, tok)[0]
    data = json.loads(quick[2]["json"].read_text())
    for r in data["rows"]:
        if r["decoder"].startswith("ARStream"):
            n = r["tokens"] // r["requests"]
            assert r["flops"] == ar_flops(peer.config, r["requests"], len(tok.encode_chunks("\n")), n)
        elif r["mode"] == "end-to-end":
            steps = r["manager_steps"]
            assert r["flops"] > ar_flops(manager.config, r["requests"], len(tok.encode("\n")), steps) > 0


def test_table_lookup_row_is_the_exact_reference(quick):
    data = json.loads(quick[2]["json"].read_text())
    rows = [r for r in data["rows"] if r["decoder"] == "table lookup"]
    assert [r["roots"] for r in rows] == list(QUICK.roots)
    for r in rows:
        assert r["fidelity"] == 1.0 and r["cer"] == 0.0 and r["model"] == "tokenizer"
        assert "exact reference" in r["note"]
        # the same roots rendered by the flood give the same characters when it is faithful
        flood = next(f for f in data["rows"] if f["name"] == f"render flood k=1 R={r['roots']}")
        assert flood["tokens"] == r["tokens"]
        if flood["fidelity"] == 1.0:
            assert flood["chars"] == r["chars"]


def test_the_peer_stands_beside_every_end_to_end_row(quick):
    data = json.loads(quick[2]["json"].read_text())
    q = data["quality_reference"]
    assert 0 < q["manager_heldout_bpc"] < 20 and 0 < q["peer_heldout_bpc"] < 20
    peers = [r for r in data["rows"] if r["decoder"].startswith("ARStream")]
    for r in data["rows"]:
        if r["mode"] == "end-to-end":
            assert r["heldout_bpc"] == q["manager_heldout_bpc"] and r["model"] == "manager"
            assert any(p["requests"] == r["requests"] for p in peers), r["name"]
        elif r["decoder"].startswith("ctranslate2"):  # the same weights, scored by the engine
            assert r["heldout_bpc"] == pytest.approx(q["peer_heldout_bpc"], rel=0.05) and r["model"] == "AR peer"
        elif r["mode"] == "autoregressive":
            assert r["heldout_bpc"] == q["peer_heldout_bpc"] and r["model"] == "AR peer"
        else:
            assert r["heldout_bpc"] == NA
    assert "beside the AR peer" in quick[0]


def test_ctranslate2_rows_or_why_not(quick):
    """With the engines extra: the peer in CTranslate2, float32 and int8, one thread and all
    the cores, single-stream and at every peer batch and 32; without it, a skip that says so."""
    data = json.loads(quick[2]["json"].read_text())
    ct2 = [r for r in data["rows"] if r["decoder"].startswith("ctranslate2")]
    targets = {t["target"]: t for t in data["targets"]}
    name = "end-to-end single-stream vs the AR peer in CTranslate2 float32"
    if not ct2_peer.available():
        assert not ct2 and any(s.startswith("CTranslate2 rows:") for s in data["skipped"])
        assert targets[name]["status"] == "not measured"
        return
    q = data["quality_reference"]
    threads = sorted({1, os.cpu_count() or 1})
    peer_batches = {r["requests"] for r in data["rows"] if r["decoder"].startswith("ARStream")}
    for ct in ("float32", "int8"):
        for th in threads:
            rows = [r for r in ct2 if r["decoder"] == f"ctranslate2 {ct}, {th} thread" + ("s" if th > 1 else "")]
            assert {r["requests"] for r in rows} == peer_batches | {32}, (ct, th)
            assert all(r["dtype"] == ct and r["heldout_bpc"] != NA for r in rows)
    f32 = [r for r in ct2 if r["dtype"] == "float32"]
    assert f32[0]["heldout_bpc"] == pytest.approx(q["peer_heldout_bpc"], abs=1e-3)
    assert targets[name]["status"] in ("met", "not met") and targets[name]["value"] > 0


def test_vs_peer_rows_are_the_comparisons_only(bench_model, small_corpus_file):
    """``--rows vs-peer``: the end-to-end flood rows and every AR peer row, nothing else; the
    command line names the new flags."""
    from argparse import Namespace

    from fractal_flood.measure.bench import _command, run_bench

    data = run_bench(bench_model, "cpu", quick=True, corpus=small_corpus_file, rows="vs-peer", threads=1)
    kinds = {(r["mode"], r["decoder"].split(" ")[0]) for r in data["rows"]}
    assert ("end-to-end", "flood") in kinds and ("autoregressive", "ARStream") in kinds
    assert {m for m, _ in kinds} == {"end-to-end", "autoregressive"}
    assert all(r["decoder"] == "flood" for r in data["rows"] if r["mode"] == "end-to-end")
    assert data["run"]["torch_threads"] == 1
    args = Namespace(model=None, device="cpu", dtype="auto", repeats=None, json_path=None, markdown=None, plot=None,
                     baseline_model=None, corpus=None, rows="vs-peer", threads=1, engines=True, quick=False)
    assert _command(args) == "fractal-flood bench --device cpu --rows vs-peer --threads 1 --engines"


def test_rows_are_complete_when_reported(quick):
    """Each row is reported once, whole: every snapshot written after a row holds rows equal
    to the final ones (nothing is changed after it was reported)."""
    *_, out, snapshots = quick
    final = {r["name"]: r for r in json.loads(out["json"].read_text())["rows"]}
    partial = [s for s in snapshots if s["run"]["partial"]]
    assert len(partial) == len(final)  # one snapshot per row
    for i, snap in enumerate(partial):
        assert len(snap["rows"]) == i + 1
        for r in snap["rows"]:
            assert set(r) == set(ROW_FIELDS) and None not in r.values()
            assert r == final[r["name"]], r["name"]
    assert len({r["name"] for r in final.values()}) == len(final)


@pytest.mark.skipif(not HAS_MPL, reason="matplotlib is not installed")
def test_plot_is_written_at_exactly_the_path(quick):
    stdout, stderr, out, _ = quick
    path = out["plot"]
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not path.with_name(path.name + ".png").exists()
    assert f"wrote {path}" in stderr


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_quick_bench_on_cuda(tmp_path, bench_model, small_corpus_file):
    """The CUDA paths (graphs, the pipeline's second stream, bf16) run and report."""
    data = check_report(*quick_bench(tmp_path, bench_model, small_corpus_file, "cuda"))
    assert any(r["decoder"] == "ARStream graph" for r in data["rows"])


def test_baseline_model_is_measured_in_the_same_run(bench_model, small_corpus_file, tmp_path):
    b = Bench(bench_model, "cpu", "float32", QUICK, corpus=str(small_corpus_file))
    row = b.baseline_row(bench_model)
    assert row.model == "baseline" and row.roots == 256 and row.flops > 0 and 0 <= row.fidelity <= 1
    assert b.baseline_row(tmp_path) is None  # an empty folder does not load: reported, not raised
    assert "does not load" in b.skipped[-1]
    e2e = b.baseline_e2e_row(bench_model)
    assert e2e.model == "baseline" and e2e.mode == "end-to-end" and e2e.manager_steps > 0 and e2e.chars > 0
    assert b.baseline_e2e_row(tmp_path) is None and "does not load" in b.skipped[-1]


def test_fused_rows(bench_model, small_corpus_file):
    """The GPU run's fused-step rows (ours and the AR peer's), here with Triton's kernels in
    its interpreter: named, measured, and ours renders what the eager row renders."""
    from fractal_flood.manager.fused_step import interpreted

    if not torch.cuda.is_available() and not interpreted():
        pytest.skip("needs a GPU or TRITON_INTERPRET=1 (conftest sets it without a GPU)")
    sizes = replace(QUICK, e2e_roots=6, peer_tokens=6)
    b = Bench(bench_model, "cpu", "float32", sizes, corpus=str(small_corpus_file))
    eager = b.e2e_single("flood", sizes.e2e_roots)
    b.fused_rows()
    fused, peer = b.rows[-2], b.rows[-1]
    assert fused.name == "e2e single flood k=1 +fused" and peer.name == "AR peer single eager+fused"
    assert fused.tokens == eager.tokens and fused.chars == eager.chars and fused.fidelity == eager.fidelity
    assert peer.tokens == 6 and peer.seconds > 0


def test_bad_input_is_one_line(tmp_path, capsys):
    assert main(["bench", "--quick", "--model", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "not found" in err
    with pytest.raises(SystemExit) as e:  # an output path is checked while parsing, before any work
        main(["bench", "--quick", "--json", str(tmp_path / "no" / "such" / "dir.json")])
    assert e.value.code == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # a directory, not a file: refused while parsing too
        main(["bench", "--quick", "--markdown", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "directory" in err
    assert main(["bench", "--quick", "--baseline-model", str(tmp_path / "missing")]) == 2
    assert "--baseline-model" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["bench", "--quick", "--device", "cuda"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "CUDA" in err


# ---- the work of the autoregressive rows -----------------------------------------------------

@pytest.mark.parametrize("prompt_len,steps,context", [(1, 30, 8), (3, 30, 8), (12, 5, 8), (2, 9, 3), (1, 4, 1)])
def test_ar_work_matches_the_stream(prompt_len, steps, context, monkeypatch):
    """``ar_work`` follows the window rule: its prefill passes and positions are what an
    ``ARStream`` does (hidden_cached, its cached forward, counted on the model itself; the
    eager step, so that every step goes through it)."""
    monkeypatch.setenv("FRACTAL_FLOOD_CPU_STEP", "eager")
    torch.manual_seed(0)
    model = CausalLM(CausalLMConfig(vocab_size=11, n_layers=1, d_model=16, n_heads=2, context=context)).eval()
    positions = []
    forward = model.hidden_cached
    model.hidden_cached = lambda idx, pos: positions.append(idx.size(1)) or forward(idx, pos)
    ar = ARStream(model, 2, SamplingConfig(temperature=1.0), "cpu")
    ar.start(torch.arange(prompt_len) % 11)
    ar.generate(steps)
    passes, counted = ar_work(prompt_len, steps, context)
    assert (passes, steps) == (ar.prefills, ar.steps)
    assert counted == sum(positions)


def test_ar_flops_scale_with_work():
    cfg = CausalLMConfig(vocab_size=100, n_layers=2, d_model=32, n_heads=2, context=64)
    assert causal_lm_flops(cfg, 4, 10) == 4 * causal_lm_flops(cfg, 1, 10)
    # generate()'s dynamic cache attends over the keys so far, never more than the static cache's all
    assert 0 < hf_generate_flops(cfg, 1, 63) < causal_lm_flops(cfg, 1, 63)
    assert hf_generate_flops(cfg, 3, 10) == 3 * hf_generate_flops(cfg, 1, 10)


class DeferredDevice:
    """Like a GPU stream: a call only queues its work, ``sync`` does (waits for) all of it."""

    def __init__(self):
        self.pending = 0.0

    def launch(self, seconds: float) -> None:
        self.pending += seconds

    def sync(self) -> None:
        time.sleep(self.pending)
        self.pending = 0.0


def test_measure_waits_for_deferred_work():
    slow = DeferredDevice()
    t = measure(lambda: slow.launch(0.05), repeats=3, warmup=1, sync=slow.sync)
    assert t.seconds >= 0.05 and t.repeats == 3
    # the same stage timed without the sync looks free, so the check above has teeth
    unsynced = DeferredDevice()
    assert measure(lambda: unsynced.launch(0.05), repeats=3, warmup=1).seconds < 0.02


def test_measure_does_not_charge_earlier_work():
    dev = DeferredDevice()
    dev.launch(0.3)  # queued before the measurement (e.g. by a previous row)
    t = measure(lambda: dev.launch(0.01), repeats=1, warmup=0, sync=dev.sync)
    assert 0.01 <= t.seconds < 0.2


def test_measure_budget_cuts_repeats():
    dev = DeferredDevice()
    t = measure(lambda: dev.launch(0.04), repeats=10, warmup=1, sync=dev.sync, budget_s=0.1)
    assert 1 <= t.repeats <= 3


def test_edit_distance():
    assert edit_distance("", "") == 0
    assert edit_distance("abc", "") == 3 and edit_distance("", "abc") == 3
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("flaw", "lawn") == 2
    assert edit_distance("ROMEO", "ROMEO") == 0
    rng = random.Random(0)
    for _ in range(200):
        a, b, c = ("".join(rng.choice("ab ") for _ in range(rng.randint(0, 7))) for _ in range(3))
        d = edit_distance(a, b)
        assert d == edit_distance(b, a)
        assert abs(len(a) - len(b)) <= d <= max(len(a), len(b))
        assert edit_distance(a, c) <= d + edit_distance(b, c)


def test_render_fidelity():
    class Tok:
        def root_text(self, r):
            return ["the ", "king", "\n"][r]

    fid, cer = render_fidelity(Tok(), [0, 1, 2, 1], ["the ", "kin", "\n", "kong"])
    assert fid == 0.5 and cer == pytest.approx(2 / 13)
    with pytest.raises(ValueError):
        render_fidelity(Tok(), [0], [])


def _row(name, mode, stream, decoder, tps, fid=1.0, requests=1, k=1, roots=256, model=None):
    return {"name": name, "mode": mode, "stream": stream, "decoder": decoder, "tokens_per_s": tps,
            "fidelity": fid, "requests": requests, "k": k, "roots": roots,
            "model": model or ("AR peer" if mode == "autoregressive" else "manager")}


def test_targets_count_only_faithful_rows():
    rows = [_row("fast but wrong", "render-only", "single", "flood", 1e9, fid=0.9),
            _row("render", "render-only", "single", "flood", 2e5),
            _row("e2e", "end-to-end", "single", "flood", 2e4),
            _row("seq", "end-to-end", "single", "sequential", 100)]
    t = {x["target"]: x for x in compute_targets(rows, "gpu")}
    assert t["render-only"]["status"] == "met" and t["render-only"]["value"] == 2e5
    assert t["single-stream end-to-end"]["status"] == "met"
    assert t["end-to-end vs the sequential baseline"]["value"] == pytest.approx(200)
    assert t["batched end-to-end"]["status"] == "not measured"
    assert t["vs transformers generate() at batch 1"]["status"] == "not measured"
    assert t["render-only, the million goal"]["status"] == "not met"  # 2e5 < 1e6
    rows[1]["fidelity"] = 0.5
    t = {x["target"]: x for x in compute_targets(rows, "gpu")}
    assert t["render-only"]["status"] == "not met" and t["render-only"]["value"] is None
    rows[1]["fidelity"] = 0.9985  # under the 99.9% bar
    assert FIDELITY_BAR == 0.999
    assert {x["target"]: x for x in compute_targets(rows, "gpu")}["render-only"]["value"] is None


def test_the_default_command_gpu_target_reads_the_default_row_only():
    """The opt-in steps' rows count for the plain single-stream target, not for the target
    'with the default command'."""
    name = "single-stream end-to-end with the default command (no --compile, no --fused-step)"
    rows = [_row("e2e single flood k=1", "end-to-end", "single", "flood", 9_000),
            _row("e2e single flood k=1 +fused", "end-to-end", "single", "flood", 12_000),
            _row("e2e single flood k=1 +compile", "end-to-end", "single", "flood", 11_000)]
    t = {x["target"]: x for x in compute_targets(rows, "gpu")}
    assert t["single-stream end-to-end"]["status"] == "met"
    assert t["single-stream end-to-end"]["rows"] == ["e2e single flood k=1 +fused"]
    assert t[name]["status"] == "not met" and t[name]["value"] == 9_000
    assert t[name]["rows"] == ["e2e single flood k=1"]
    rows[0]["tokens_per_s"] = 10_500
    assert {x["target"]: x for x in compute_targets(rows, "gpu")}[name]["status"] == "met"


def test_previous_default_target_divides_the_speed_up_by_the_plan_ratio():
    ours = {**_row("e2e single flood k=1", "end-to-end", "single", "flood", 300), "chars": 500, "manager_steps": 100}
    base = {**_row("baseline e2e single flood k=1", "end-to-end", "single", "flood", 200, model="baseline"),
            "chars": 300, "manager_steps": 100}
    name = "single-stream speed-up over the previous default / its chars-per-step ratio"
    t = {x["target"]: x for x in compute_targets([ours], "cpu")}
    assert t[name]["status"] == "not measured"
    t = {x["target"]: x for x in compute_targets([ours, base], "cpu")}
    # 1.5x the speed for 5/3 the characters per step: 0.9, not met
    assert t[name]["value"] == pytest.approx(1.5 / (5 / 3)) and t[name]["status"] == "not met"
    ours["tokens_per_s"] = 400
    t = {x["target"]: x for x in compute_targets([ours, base], "cpu")}
    assert t[name]["status"] == "met"
    # the baseline's end-to-end row is never this model's single-stream speed
    assert t["end-to-end single-stream vs the AR peer"]["status"] == "not measured"
    assert t["single-stream end-to-end"]["rows"] == ["e2e single flood k=1"]


def test_cpu_targets_compare_with_the_peer_in_the_same_run():
    peer1 = _row("peer 1", "autoregressive", "single", "ARStream eager", 100)
    rows = [_row("e2e", "end-to-end", "single", "flood", 160), peer1,
            _row("e2e B=4", "end-to-end", "batched", "flood", 500, requests=4),
            _row("peer B=4", "autoregressive", "batched", "ARStream eager", 400, requests=4),
            _row("e2e B=16", "end-to-end", "batched", "flood", 900, requests=16),
            _row("peer B=16", "autoregressive", "batched", "ARStream eager", 1000, requests=16),
            _row("peer B=64", "autoregressive", "batched", "ARStream eager", 9000, requests=64),
            _row("render", "render-only", "single", "flood", 5000)]
    t = {x["target"]: x for x in compute_targets(rows, "cpu")}
    single = t["end-to-end single-stream vs the AR peer"]
    assert single["status"] == "met" and single["value"] == pytest.approx(1.6) and single["hardware"] == "CPU"
    batched = t["batched end-to-end vs the AR peer, same requests"]
    # B=4 beats its peer, B=16 does not: every B must; B=64 has no Fractal Flood row to compare
    assert batched["status"] == "not met" and batched["value"] == pytest.approx(0.9)
    assert batched["rows"] == ["e2e B=16", "peer B=16"]
    today = t["render-only flood K=1 at R=256 vs the recorded CPU flood"]
    assert today["value"] == pytest.approx(5000 / TODAY_CPU_RENDER_R256["tokens_per_s"])
    assert today["status"] == "met" and "only indicative" in today["note"]
    # a baseline of another model (not today's 6 x 256) does not replace the old figure
    rows.append({**_row("baseline", "render-only", "single", "flood", 1000, model="baseline"),
                 "note": "model runs/prev, renderer 1x64"})
    t = {x["target"]: x for x in compute_targets(rows, "cpu")}
    assert "only indicative" in t["render-only flood K=1 at R=256 vs the recorded CPU flood"]["note"]
    # a baseline of today's model measured in this run replaces the old file's figure
    rows[-1]["note"] = "model runs/today, renderer 6x256"
    t = {x["target"]: x for x in compute_targets(rows, "cpu")}
    today = t["render-only flood K=1 at R=256 vs the recorded CPU flood"]
    assert today["value"] == pytest.approx(5.0) and today["status"] == "not met"
    assert today["rows"] == ["render", "baseline"]
    # the baseline row never counts as this model's render-only speed
    assert t["render-only"]["rows"] == ["render"] and t["render-only"]["status"] == "other hardware"
    # a faster but unfaithful end-to-end row does not count
    rows[0]["fidelity"] = 0.99
    t = {x["target"]: x for x in compute_targets(rows, "cpu")}
    assert t["end-to-end single-stream vs the AR peer"]["status"] == "not met"


def test_output_paths_are_checked_before_the_run(tmp_path, capsys, monkeypatch):
    """A folder no file can be created in (/proc here; a read-only or full disk alike) is
    refused in one line naming the user's path, before anything is measured."""
    import fractal_flood.measure.bench as bench_mod

    def never(*args, **kwargs):
        raise AssertionError("measured before the output paths were checked")

    monkeypatch.setattr(bench_mod, "run_bench", never)
    for flag in ("--json", "--markdown"):
        try:
            rc = main(["bench", "--quick", "--device", "cpu", flag, "/proc/x.out"])
        except SystemExit as e:  # where /proc is not writable to os.access, parsing refuses it
            rc = e.code
        err = capsys.readouterr().err.strip()
        assert rc == 2 and "\n" not in err and "/proc/x.out" in err and ".tmp" not in err, err
