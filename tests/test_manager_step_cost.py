"""scripts/manager_step_cost.py (docs/log/notebook.md's step, draw and engine-split figures) runs on a
tiny trained model directory and prints one line per directory and the engine split."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("single_thread")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "manager_step_cost.py"


def test_prints_step_draw_and_engine_split(tiny_model_dir):
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(SCRIPT.parents[1] / "src"),
           "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, str(SCRIPT), str(tiny_model_dir), "--n", "3", "--rounds", "2",
                          "--draw-batches", "1,5", "--engine", "2", "--roots", "4"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[1].startswith("medians of 2 alternated rounds")
    assert "step" in lines[2] and "draw" in lines[2] and "one softmax" in lines[2] and "tensor ops only" in lines[2] and "through the modules" in lines[2] and "tensor-op draws" in lines[2]
    assert lines[3].startswith("draw of   1 rows: host inversion") and "tensor ops only" in lines[3]
    assert lines[4].startswith("draw of   5 rows")
    assert lines[5].startswith("engine round, B=2 x 4 roots") and "pooled flood" in lines[5]
