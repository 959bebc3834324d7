"""scripts/paired_ratio.py (docs/log/notebook.md's alternated single-stream ratios) runs on a tiny trained
model directory: rounds in rotating order, and a model against itself writes the same text."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("single_thread")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "paired_ratio.py"


def test_rounds_rotate_and_a_model_against_itself_has_the_same_characters_per_step(tiny_model_dir):
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(SCRIPT.parents[1] / "src"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, str(SCRIPT), "--model", str(tiny_model_dir), "--baseline-model",
                          str(tiny_model_dir), "--rounds", "2", "--roots", "6"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[1].startswith("round  1 (ours baseline)") and lines[2].startswith("round  2 (baseline ours)")
    assert "AR peer" not in out.stdout  # the tiny model has none
    assert "characters per manager step ratio 1.000" in lines[3] and "2 rounds" in lines[3]


def test_bad_rounds_is_one_line():
    out = subprocess.run([sys.executable, str(SCRIPT), "--rounds", "0"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--rounds must be >= 1" in out.stderr


def test_the_manager_alone_takes_its_turns(tiny_model_dir):
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(SCRIPT.parents[1] / "src"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, str(SCRIPT), "--model", str(tiny_model_dir), "--manager-step",
                          "--rounds", "2", "--roots", "6"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    rounds = [line for line in out.stdout.splitlines() if line.startswith("round ")]
    assert rounds[0].startswith("round  1 (ours manager step)")
    assert rounds[1].startswith("round  2 (manager step ours)")
    for line in rounds:
        with_slides = float(line.split("manager ")[-1].split(" us/step")[0])
        alone = float(line.split("window slides, ")[-1].split(" alone")[0])
        assert 0 < with_slides < 1e6 and 0 < alone < 1e6
