"""scripts/block_size_cost.py (the notebook's block-size figures), scripts/render_cost.py and scripts/profile_generate.py
(RESULTS.md's split of one generate) run on a tiny trained model directory and refuse bad
input in one line."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("single_thread")

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def run(script, *args):
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(SCRIPTS.parent / "src"), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, str(SCRIPTS / script), *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_block_sizes_take_turns_and_write_the_same_text(tiny_model_dir):
    out = run("block_size_cost.py", "--model", str(tiny_model_dir), "--blocks", "3,8", "--roots", "10",
              "--rounds", "2")
    assert out.returncode == 0, out.stderr
    assert "(the same text at every block size, every round)" in out.stdout
    assert "block     3:" in out.stdout and "x1.000 of block 3" in out.stdout and "block     8:" in out.stdout


@pytest.mark.parametrize("args", [("--blocks", "64,x"), ("--blocks", "0"), ("--rounds", "0")])
def test_block_sizes_refuse_bad_input(args):
    out = run("block_size_cost.py", *args)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "error" in out.stderr


def test_the_profile_splits_one_generate(tiny_model_dir):
    out = run("profile_generate.py", "--model", str(tiny_model_dir), "--roots", "12", "--repeats", "2")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "2 x generate(" in lines[0] and "manager steps" in lines[0]
    total = next(line for line in lines if line.startswith("total"))
    assert total.split()[2] == "100.0%"
    shares = [float(line.split()[-2].rstrip("%")) for line in lines
              if line.split() and line.split()[-2].endswith("%") and not line.startswith("total")]
    assert len(shares) == 10 and abs(sum(shares) - 100.0) < 0.5  # the phases add up to the whole


def test_the_profile_refuses_bad_input():
    out = run("profile_generate.py", "--roots", "0")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1


def test_the_render_cost_takes_turns_and_writes_the_same_text(tiny_model_dir):
    """scripts/render_cost.py (the notebook's render figures): the C kernels and the module
    path take turns, every render's text compared."""
    out = run("render_cost.py", "--model", str(tiny_model_dir), "--blocks", "2,5", "--rounds", "2")
    assert out.returncode == 0, out.stderr
    assert "every render's text the same both ways" in out.stdout
    rows = [line for line in out.stdout.splitlines() if line.startswith("| 2 |") or line.startswith("| 5 |")]
    assert len(rows) == 2 and all(line.rstrip().endswith("x |") for line in rows)


@pytest.mark.parametrize("args", [("--blocks", "8,x"), ("--blocks", "0"), ("--rounds", "0")])
def test_the_render_cost_refuses_bad_input(args):
    out = run("render_cost.py", *args)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "error" in out.stderr
