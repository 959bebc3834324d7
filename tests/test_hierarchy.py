"""Hierarchies deeper than the default, end to end: ``--levels`` on the command line, a tiny
renderer trained on a 3- and a 4-level tokenizer, flood == sequential on it, and the
evaluation's render fidelity for every level."""

from __future__ import annotations

import json
import time

import pytest
import torch

from fractal_flood.cli.main import main
from fractal_flood.hierarchy.level_specs import format_specs, parse_specs
from fractal_flood.measure.evaluate import evaluate
from fractal_flood.measure.metrics import render_fidelity
from fractal_flood.models import checkpoint as ckpt
from fractal_flood.render.base import DecodeOptions
from fractal_flood.render.decoders import make_decoder
from fractal_flood.train.run import TrainOptions, run_training

from cli_run import run_main

pytestmark = pytest.mark.usefixtures("single_thread")

THREE = "roots:256:3,words:192:3,chunks:128:8"
FOUR = "roots:320:2,phrases:256:2,words:192:3,chunks:128:8"
STEPS = 300


def one_line_error(rc, err) -> str:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0] and "Traceback" not in err, err
    return lines[0]


# ---------------------------------------------------------------- stats --levels


def test_stats_levels_json(small_corpus_file, small_text, capsys):
    rc, out, err = run_main(["stats", "--json", "--corpus", small_corpus_file, "--levels", FOUR], capsys)
    assert rc == 0, err
    d = json.loads(out)
    assert d["depth"] == 4 and parse_specs(d["levels"]) == parse_specs(FOUR)  # sizes reached
    assert d["chars"] == len(small_text)
    names = [lv.name for lv in parse_specs(FOUR)]
    counts = [d[f"{n}.tokens"] for n in names]
    assert counts == sorted(counts) and counts[0] == d["roots"] and counts[-1] == d["chunks"]
    assert d["chars_per_manager_step"] == pytest.approx(len(small_text) / d["roots"])
    for n in names:
        assert d[f"{n}.chars_per_token"] == pytest.approx(len(small_text) / d[f"{n}.tokens"])


def test_stats_levels_text(small_corpus_file, capsys):
    rc, out, err = run_main(["stats", "--corpus", small_corpus_file, "--levels", "roots:200:4"], capsys)
    assert rc == 0, err
    rows = dict(line.split(": ", 1) for line in out.strip().splitlines())
    assert {k.strip() for k in rows} >= {"depth", "levels", "roots.chars_per_token", "chars_per_manager_step"}


@pytest.mark.parametrize("levels,says", [
    ("roots:2048", "name:size:max_children"),
    ("roots:2048:4;chunks:1024:16", "name:size:max_children"),
    ("roots:big:4", "integers"),
    ("roots:2048:0", "max_children must be >= 1"),
    ("", "at least one level"),
    ("roots:1024:4,chunks:2048:16", "grow toward the top"),
    ("roots:2048:4,roots:1024:16", "differ"),
    ("roots:30:4", "smaller than the alphabet"),  # the corpus has 59 characters
])
@pytest.mark.parametrize("command", ["stats", "train"])
def test_bad_levels_one_line(command, levels, says, small_corpus_file, tmp_path, capsys):
    out_dir = tmp_path / "never"
    argv = [command, "--corpus", small_corpus_file, "--levels", levels]
    if command == "train":
        argv += ["--preset", "tiny", "--out", out_dir, "--no-progress"]
    rc, out, err = run_main(argv, capsys)
    assert says in one_line_error(rc, err)
    assert not out_dir.exists()  # nothing written


def test_stats_levels_with_chunks_is_refused(small_corpus_file, capsys):
    rc, out, err = run_main(["stats", "--corpus", small_corpus_file, "--levels", THREE, "--chunks", "128"], capsys)
    assert "--levels replaces" in one_line_error(rc, err)


# ---------------------------------------------------------------- end to end, 3 and 4 levels


@pytest.fixture(scope="module")
def trained(small_corpus_file, tmp_path_factory):
    """Model directories trained on ``small_text`` with 3 and 4 expanding levels: the 3-level
    one through ``fractal-flood train --levels``, the 4-level one through TrainOptions.
    Each: a tiny renderer (STEPS steps) and a few manager steps (the evaluation needs one)."""
    dirs, seconds = {}, {}
    for depth, spec in ((3, THREE), (4, FOUR)):
        out = tmp_path_factory.mktemp(f"levels{depth}")
        t0 = time.perf_counter()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            common = dict(steps=STEPS, lm_steps=20, eval_every=STEPS, save_every=STEPS)
            if depth == 3:
                rc = main(["train", "--preset", "tiny", "--corpus", str(small_corpus_file), "--out", str(out),
                           "--levels", spec, "--no-progress", "--parts", "renderer,manager", "--keep-below-bar",
                           *[a for k, v in common.items() for a in (f"--{k.replace('_', '-')}", str(v))]])
                assert rc == 0
            else:
                run_training(TrainOptions(out_dir=out, preset="tiny", corpus=str(small_corpus_file),
                                          levels=parse_specs(spec), parts=("renderer", "manager"),
                                          progress=False, log=lambda s: None, **common))
        dirs[depth], seconds[depth] = out, time.perf_counter() - t0
    print(f"\ntraining seconds (tokenizer + {STEPS} renderer steps + 20 manager steps): {seconds}")
    return dirs


@pytest.mark.parametrize("depth,spec", [(3, THREE), (4, FOUR)])
def test_deep_hierarchy_flood_equals_sequential(trained, small_text, depth, spec):
    tok = ckpt.load_tokenizer(trained[depth])
    assert tok.depth == depth and format_specs(tok.levels) == spec
    renderer, meta = ckpt.load_renderer(trained[depth], tok)
    assert meta["step"] == STEPS and renderer.num_levels == depth
    n = tok.num_roots
    roots = tok.encode(small_text[5000:5300]) + [n - 1, n - 2, 0, n // 2]
    f = make_decoder("flood", renderer, tok.alphabet, DecodeOptions(k=1)).render(roots)
    s = make_decoder("sequential", renderer, tok.alphabet, DecodeOptions(max_tries=1)).render(roots)
    assert f.text == s.text and torch.equal(f.tokens, s.tokens)
    assert len(f.counts) == len(s.counts) == depth
    for a, b in zip(f.counts, s.counts):
        assert torch.equal(a, b)
    assert f.num_roots == len(roots) and len(f.text) > len(roots)
    fid, cer = render_fidelity(tok, roots, f.root_texts())
    assert 0.0 <= fid <= 1.0 and cer >= 0.0
    print(f"\n{depth} levels ({spec}): render fidelity {fid:.4f}, CER {cer:.4f} over {len(roots)} roots")


@pytest.mark.parametrize("depth", [3, 4])
def test_deep_hierarchy_evaluation_reports_every_level(trained, small_corpus_file, depth):
    r = evaluate(trained[depth], corpus=str(small_corpus_file), device="cpu", max_roots=200)
    tok = ckpt.load_tokenizer(trained[depth])
    names = [lv.name for lv in tok.levels]
    assert [lv["name"] for lv in r["levels"]] == [f"{a}->{b}" for a, b in zip(names, names[1:])]
    for lv in r["levels"]:
        assert 0.0 <= lv["fidelity"] <= 1.0
    assert 0.0 <= r["render"]["fidelity"] <= 1.0 and r["render"]["roots"] == 200
    fids = ", ".join(f"{lv['name']} {lv['fidelity']:.3f}" for lv in r["levels"])
    print(f"\n{depth} levels, fidelity per level: {fids}; whole render {r['render']['fidelity']:.3f}")


def test_train_levels_must_match_the_directory(trained, small_corpus_file, capsys):
    rc, out, err = run_main(["train", "--preset", "tiny", "--corpus", small_corpus_file, "--out", trained[3],
                            "--levels", FOUR, "--steps", "1", "--no-progress", "--resume"], capsys)
    assert "not roots:320:2" in one_line_error(rc, err)
    assert format_specs(ckpt.load_tokenizer(trained[3]).levels) == THREE  # untouched


@pytest.mark.parametrize("depth", [3, 4])
def test_flood_endpoint_describes_chunks_at_any_depth(trained, depth):
    """/v1/flood's chunks are the level-1 items with every character under them, however
    many levels lie below (it once read the level-2 counts as characters)."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from fractal_flood.generation.pipeline import load_pipeline
    from fractal_flood.serve.app import create_app

    with TestClient(create_app(load_pipeline(trained[depth], device="cpu"), max_batch=2, block_roots=5)) as c:
        r = c.post("/v1/flood", json={"prompt": "", "max_tokens": 12, "seed": 3})
    assert r.status_code == 200, r.text
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    roots = [root for e in events[:-1] for root in e["roots"]]
    assert len(roots) == 12 and sum(len(root["chunks"]) for root in roots) == events[-1]["chunks"]
    for root in roots:
        assert root["text"] == "".join(ch["text"] for ch in root["chunks"])
        assert all(ch["text"] for ch in root["chunks"])  # every level-1 item writes something
