"""scripts/profile_step.py runs on the CPU on a tiny manager within seconds and reports a
table of operators whose per-step times add up."""

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("single_thread")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "profile_step.py"


@pytest.fixture(scope="module")
def profile_step():
    spec = importlib.util.spec_from_file_location("profile_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tensor_draw_takes_the_gpu_path(profile_step, capsys, monkeypatch):
    """--tensor-draw: the draw by tensor ops (as on a GPU) does more operators than the host's."""
    from fractal_flood.sampling import tokens as sampling
    for name in ("HOST_DRAW_ROWS", "HOST_HASH_ROWS"):  # the option sets them for the process
        monkeypatch.setattr(sampling, name, getattr(sampling, name))
    counts = []
    for extra in ([], ["--tensor-draw"]):
        assert profile_step.main(["--device", "cpu", "--tiny", "--steps", "4", "--warmup", "2", *extra]) == 0
        counts.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["modes"][0]["work_ops_per_step"])
    assert counts[1] > counts[0] + 10


def test_profiles_a_tiny_step_on_the_cpu(profile_step, capsys):
    assert profile_step.main(["--device", "cpu", "--tiny", "--steps", "4", "--warmup", "2", "--rows", "5"]) == 0
    out = capsys.readouterr().out
    assert "| operator (self CPU time) | calls/step |" in out
    summary = json.loads(out.strip().splitlines()[-1])
    (mode,) = summary["modes"]
    assert mode["mode"] == "eager" and mode["steps"] == 4 and mode["step_us"] > 0
    # at least the 8 products, 5 layer norms and 2 attentions of 2 layers do work; views do not count
    assert 15 <= mode["work_ops_per_step"] < sum(r["calls_per_step"] for r in mode["rows"])
    names = {r["name"] for r in mode["rows"]}
    assert "aten::addmm" in names and "aten::native_layer_norm" in names  # the step's linears, norms
    assert sum(r["share"] for r in mode["rows"]) == pytest.approx(1.0)
    # 2 layers x (qkv, attention out, MLP in, MLP out) biased linears per step
    addmm = next(r for r in mode["rows"] if r["name"] == "aten::addmm")
    assert addmm["calls_per_step"] == pytest.approx(8.0)


@pytest.mark.parametrize("argv", [["--modes", "graph"], ["--modes", "fused"], ["--modes", "fast"], ["--steps", "0"],
                                  ["--steps", "40"]])  # 40 + warm-up do not fit the tiny context
def test_bad_input_is_one_line(profile_step, capsys, argv):
    assert profile_step.main(["--device", "cpu", "--tiny", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("profile_step: error:"), err


def test_compile_aftereffects_smoke_run_on_the_cpu(capsys):
    """The GPU diagnosis script's phases and leftovers report work on the CPU (no compile)."""
    spec = importlib.util.spec_from_file_location("compile_aftereffects", SCRIPT.parent / "compile_aftereffects.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--device", "cpu", "--quick", "--no-compile"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [p["phase"] for p in summary["phases"]] == ["fresh", "fresh again"]
    for p in summary["phases"]:
        assert p["manager_step_us"] > 0 and p["flood_ms"] > 0 and p["e2e_tokens_per_s"] > 0
        assert p["leftovers"]["child_processes"] == 0 and p["leftovers"]["gc_objects"] > 0
