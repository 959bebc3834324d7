"""scripts/cpu_step_cost.py (docs/log/notebook.md's CPU runtime figures) runs on a tiny trained
model directory, compares the runtimes it is given (the one-call step with the Python draw
among them), and refuses an unknown runtime."""

import subprocess
import sys
from pathlib import Path

import pytest

from fractal_flood.manager import cpu_step

pytestmark = [pytest.mark.usefixtures("single_thread"),
              pytest.mark.skipif(cpu_step.library() is None, reason="no C compiler built the step")]

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "cpu_step_cost.py"


def run(*args):
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(SCRIPT.parents[1] / "src"), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_compares_the_python_draw_and_the_c_draw(tiny_model_dir):
    out = run("--model", str(tiny_model_dir), "--rounds", "2", "--roots", "4", "--peer-tokens", "4",
              "--rows", "2", "--steps", "2", "--threads", "1", "--runtimes", "blas,body,native")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "round  2 (blas body native)" in text
    for work in ("e2e", "slots"):
        assert f"{work}: median tokens/s blas " in text
    assert text.count("native / body: median") == text.count("body / blas: median") >= 2


def test_an_unknown_runtime_is_refused():
    out = run("--runtimes", "native,fast")
    assert out.returncode == 2 and "--runtimes" in out.stderr
