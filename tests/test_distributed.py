"""Data-parallel training under torchrun (gloo, 2 CPU processes): the same loss curve as one
process with the same global batch, rank 0 alone writing, a killed run resuming, and the
result generating text. Plus the pieces: environment detection, equal batch pieces, and
gradient accumulation equal to one big batch."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import fractal_flood
from fractal_flood.errors import FractalFloodError
from fractal_flood.train import distributed
from fractal_flood.train.run import TrainOptions, run_training

from conftest import torch_threads

pytestmark = pytest.mark.usefixtures("single_thread")

TESTS = Path(__file__).resolve().parent
# Printed metrics have 4 decimals; two ranks differ from one process only in the order of
# the floating-point sums of the gradient all-reduce (~1e-7), far below this.
LOSS_TOLERANCE = 1e-3
# float16 model files: one unit in the last place at |w| ~ 1 is ~1e-3
WEIGHT_TOLERANCE = 2e-3


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    src = str(Path(fractal_flood.__file__).resolve().parents[1])  # the code under test
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _metrics(lines) -> dict:
    """{(part, step): {name: value}} from the validation lines."""
    out = {}
    for line in lines:
        m = re.match(r"(\w+) step (\d+): (.*)", line.strip())
        if m:
            out[(m[1], int(m[2]))] = {k: float(v) for k, v in re.findall(r"(\w+)=([-\d.]+)", m[3])}
    return out


TRAIN_ARGS = ["--preset", "tiny", "--parts", "renderer,manager", "--steps", "4", "--lm-steps", "6",
              "--batch", "32", "--eval-every", "2", "--save-every", "3", "--device", "cpu", "--no-progress",
              "--keep-below-bar"]  # a few steps: below the renderer's bar by design


# ---------------------------------------------------------------- the pieces


def test_environment_detection():
    assert distributed.from_environment({}) is None
    assert distributed.from_environment({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (1, 4, 1)
    for bad in ({"RANK": "x", "WORLD_SIZE": "2"}, {"RANK": "2", "WORLD_SIZE": "2"}, {"WORLD_SIZE": "2"}):
        with pytest.raises(FractalFloodError):
            distributed.from_environment(bad)


def test_one_process_needs_no_process_group(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    with distributed.session("cpu") as ctx:
        assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.active) == (0, 1, True, False)
        assert not torch.distributed.is_initialized()
        assert distributed.broadcast_int(ctx, 7) == 7
        logs = {"loss": torch.tensor(2.5)}
        assert distributed.mean_over_ranks(ctx, logs) is logs


def test_pieces_split_a_batch_evenly():
    got = [distributed.piece_slice(12, i, 4) for i in range(4)]
    assert [list(range(12))[s] for s in got] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    with pytest.raises(FractalFloodError, match="equal pieces"):
        distributed.piece_slice(10, 0, 4)


def test_gradient_accumulation_equals_one_big_batch(tmp_path, small_corpus_file):
    """One process, 4 micro-batches per step: the same run as 1, up to summation order."""
    def run(out, accum):
        lines = []
        with torch.random.fork_rng():
            run_training(TrainOptions(out_dir=out, preset="tiny", corpus=str(small_corpus_file),
                                      parts=("renderer", "manager"), steps=4, lm_steps=4, batch=32,
                                      grad_accum=accum, eval_every=2, save_every=4, progress=False,
                                      log=lines.append))
        return _metrics(lines)

    one, four = run(tmp_path / "one", 1), run(tmp_path / "four", 4)
    assert set(one) == set(four) and ("manager", 4) in one
    for key in one:
        for name, value in one[key].items():
            assert four[key][name] == pytest.approx(value, abs=LOSS_TOLERANCE), (key, name)
    with pytest.raises(FractalFloodError, match="equal pieces"):
        run_training(TrainOptions(out_dir=tmp_path / "bad", preset="tiny", corpus=str(small_corpus_file),
                                  parts=("manager",), lm_steps=2, batch=30, grad_accum=4, progress=False,
                                  log=lambda s: None))


# ---------------------------------------------------------------- two processes


@pytest.mark.slow
def test_two_processes_match_one_and_only_rank_0_writes(tmp_path, small_corpus_file):
    out2, records = tmp_path / "two", tmp_path / "records"
    records.mkdir()
    args = ["train", "--corpus", str(small_corpus_file), "--out", str(out2), *TRAIN_ARGS]
    proc = subprocess.run(_torchrun(str(TESTS / "_record_writes.py"), str(records), *args),
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert any("world size 2" in line for line in lines)
    # rank 0 alone prints...
    assert sum("manager: done" in line for line in lines) == 1

    # ...and writes: rank 1 opened nothing for writing under the test's directory
    by_rank = {r: json.loads((records / f"rank{r}.json").read_text()) for r in (0, 1)}
    mine = {r: [p for p in paths if p.startswith(str(tmp_path))] for r, paths in by_rank.items()}
    assert mine[1] == [], mine[1]
    for name in ("tokenizer.json", "manager.safetensors", "renderer.safetensors", "index.json"):
        assert any(p.endswith(name) for p in mine[0]), name

    # one process, same global batch, same seed
    out1, single = tmp_path / "one", []
    with torch_threads(1), torch.random.fork_rng():
        run_training(TrainOptions(out_dir=out1, preset="tiny", corpus=str(small_corpus_file),
                                  parts=("renderer", "manager"), steps=4, lm_steps=6, batch=32, eval_every=2,
                                  save_every=3, device="cpu", progress=False, log=single.append))
    two, one = _metrics(lines), _metrics(single)
    assert set(two) == set(one) == {(p, s) for p, n in (("renderer", 4), ("manager", 6)) for s in range(2, n + 1, 2)}
    for key in one:
        for name, value in one[key].items():
            assert two[key][name] == pytest.approx(value, abs=LOSS_TOLERANCE), (key, name, two[key], one[key])
    for part in ("renderer", "manager"):
        w1, w2 = load_file(str(out1 / f"{part}.safetensors")), load_file(str(out2 / f"{part}.safetensors"))
        assert w1.keys() == w2.keys()
        for k in w1:
            assert torch.allclose(w1[k].float(), w2[k].float(), atol=WEIGHT_TOLERANCE, rtol=0), (part, k)


@pytest.mark.slow
def test_a_run_killed_under_torchrun_resumes_and_generates(tmp_path, small_corpus_file, tiny_tokenizer):
    """``torchrun ... fractal_flood train`` killed (every process at once) after its first
    renderer checkpoint, then resumed under torchrun: the run completes and generates."""
    out = tmp_path / "m"
    args = ["-m", "fractal_flood", "train", "--corpus", str(small_corpus_file), "--out", str(out),
            "--preset", "tiny", "--parts", "renderer,manager", "--steps", "100", "--lm-steps", "6",
            "--batch", "64", "--eval-every", "1000", "--save-every", "10", "--device", "cpu", "--no-progress",
            "--keep-below-bar"]
    state = out / "train_state" / "renderer.json"  # written last of a save
    proc = subprocess.Popen(_torchrun(*args), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert state.exists(), "no renderer checkpoint was written"
        # the whole job at once, as a lost machine would: torchrun starts its workers in
        # sessions of their own, so they are found as its children
        for pid in [*_children(proc.pid), proc.pid]:
            os.kill(pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (out / "manager.json").exists()

    resumed = subprocess.run(_torchrun(*args, "--resume"), env=_env(), capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    m = re.search(r"renderer: resuming from step (\d+) of 100", resumed.stdout)
    assert m and 10 <= int(m[1]) < 100 and int(m[1]) % 10 == 0, resumed.stdout
    assert "manager: no saved state" in resumed.stdout
    assert json.loads((out / "renderer.json").read_text())["step"] == 100
    assert json.loads((out / "manager.json").read_text())["step"] == 6

    gen = subprocess.run([sys.executable, "-m", "fractal_flood", "generate", "--model", str(out), "--prompt",
                          "ROMEO:", "--roots", "40", "--device", "cpu"], env=_env(), capture_output=True,
                         text=True, timeout=120)
    assert gen.returncode == 0, gen.stderr
    text = gen.stdout[len("ROMEO:"):].rstrip("\n")
    assert gen.stdout.startswith("ROMEO:") and len(text) >= 5, gen.stdout  # a tiny model's text, not good text
    assert set(text) <= set(tiny_tokenizer.alphabet)
