"""scripts/step_candidates.py (docs/log/notebook.md's runtime candidates for the CPU decode
step) runs on a tiny trained model directory: the eager step and the C step, a table row
each, the C step batch-invariant and within the eager step's rounding."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("single_thread")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "step_candidates.py"


def test_eager_and_c_rows(tiny_model_dir, tmp_path):
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(SCRIPT.parents[1] / "src"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, str(SCRIPT), "--model", str(tiny_model_dir), "--candidates", "eager,c",
                          "--no-first-use", "--rounds", "2", "--steps", "4", "--reps", "2,1", "--cache", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert [x for x in lines if x.startswith("round ")][1].startswith("round  2 us/step (eager c)")
    rows = {x.split("|")[1].strip(): [c.strip() for c in x.split("|")[2:-1]] for x in lines if x.startswith("| ")}
    assert rows["eager"][8:] == ["0", "yes", "no"]
    assert float(rows["c"][8]) < 1e-4 and rows["c"][9:] == ["yes", "yes"]
    assert rows["c"][2] == rows["c"][3] == "1.00"


def test_unknown_candidate_is_one_line():
    out = subprocess.run([sys.executable, str(SCRIPT), "--candidates", "c,tvm"], capture_output=True, text=True,
                         env={"PYTHONPATH": str(SCRIPT.parents[1] / "src"), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 2 and "unknown candidate 'tvm'" in out.stderr
