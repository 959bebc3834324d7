"""Every option of every subcommand at its extremes (0, negative, huge, NaN, infinite, the
wrong type; a path that is a file, a directory, missing or unwritable) gives one line on
stderr, nothing on stdout and a non-zero exit. One table, built from the parser itself so
that a new option cannot go untested, run through ``cli.main`` in process."""

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fractal_flood.cli import args as cli
from fractal_flood.cli.main import build_parser, main

from cli_run import run_main

pytestmark = pytest.mark.usefixtures("single_thread")

BASE = {  # what each command needs besides the option under test
    "stats": ["stats"], "train": ["train", "--out", "{tmp}/never"],
    "generate": ["generate", "--device", "cpu"], "eval": ["eval", "--device", "cpu"],
    "bench": ["bench", "--device", "cpu"], "serve": ["serve", "--device", "cpu", "--port", "0"],
}
FLOAT_BAD = {
    "finite_float": ["nan", "inf", "-inf", "1e400", "abc", ""],
    "nonneg_float": ["nan", "inf", "1e400", "-0.5", "abc", ""],
    "positive_float": ["nan", "inf", "0", "-1", "abc", ""],
    "unit_float": ["nan", "inf", "0", "1.5", "-1", "abc"],
    "dropout_rate": ["nan", "inf", "1", "-0.1", "abc", ""],
    "class_count": ["1", "-2", "1.5", "abc", "", "nan", str(1 << 30)],
}
# Options whose bad values are only found when the command runs: hand-written cases,
# (command, option, value, a fragment of the one line).
RUNTIME = [
    ("train", "--device", "tpu", "unknown device"),
    ("train", "--parts", "", "no part"),
    ("train", "--parts", "renderer,painter", "painter"),
    ("train", "--parts", "manager,manager", "twice"),
    ("train", "--preset", "huge", "--preset"),
    ("train", "--corpus", "{empty}", "empty"),
    ("train", "--corpus", "{binary}", "UTF-8"),
    ("stats", "--corpus", "{empty}", "empty"),
    ("stats", "--corpus", "{binary}", "UTF-8"),
    ("stats", "--chunks", "3", "alphabet"),
    ("stats", "--corpus", "{tmp}/*.nothing", "no file"),
    ("train", "--corpus", "{empty_dir}", "no"),
    ("generate", "--device", "tpu", "unknown device"),
    ("generate", "--dtype", "float64", "dtype"),
    ("generate", "--dtype", "", "dtype"),
    ("generate", "--model", "{tmp}/missing-model", "not found"),
    ("generate", "--model", "{empty}", "not a model directory"),
    ("generate", "--model", "{tmp}", "tokenizer.json"),
    ("generate", "--prompt", "ROMEO: caf\u00e9", "\u00e9"),
    ("generate", "--decoder", "beam", "--decoder"),
    ("generate", "--prompts", "{tmp}/missing.txt", "not found"),
    ("generate", "--prompts", "{tmp}", "directory"),
    ("generate", "--prompts", "{empty}", "no prompts"),
    ("serve", "--device", "tpu", "unknown device"),
    ("serve", "--dtype", "int8", "dtype"),
    ("serve", "--model", "{tmp}/missing-model", "not found"),
    ("serve", "--bench-json", "{tmp}/missing-bench.json", "no such file"),
    ("eval", "--device", "tpu", "unknown device"),
    ("eval", "--model", "{tmp}/missing-model", "not found"),
    ("eval", "--corpus", "{one_line}", "too short"),
    ("eval", "--corpus", "{empty}", "empty"),
    ("bench", "--device", "cuda:7" if not os.environ.get("CUDA_VISIBLE_DEVICES") else "tpu", "cuda"),
    ("bench", "--dtype", "int8", "dtype"),
    ("bench", "--model", "{tmp}/missing-model", "not found"),
    ("bench", "--baseline-model", "{tmp}/missing-model", "--baseline-model"),
    ("stats", "--levels", "roots:2048", "--levels"),
    ("stats", "--levels", "roots:0:4", "--levels"),
    ("stats", "--levels", "", "--levels"),
    ("stats", "--levels", "roots:2048:4,chunks:9999999:16", "--levels"),
    ("train", "--levels", "roots:abc:4", "--levels"),
    ("train", "--levels", "chars:100:4", "--levels"),
    ("train", "--head-classes", "7", "--head-classes"),  # 2,048 roots: not a divisor
    ("train", "--head-classes", "2048", "--head-classes"),
    ("train", "--lm-shape", "2x190x4", "--lm-shape"),  # the width is not a multiple of the heads
    ("train", "--lm-shape", "0x128x4", "--lm-shape"),
    ("train", "--lm-shape", "2x128", "--lm-shape"),
    ("train", "--lm-shape", "2x128x4.5", "--lm-shape"),
    ("train", "--lm-shape", "", "--lm-shape"),
]
# Any text is a value of these: --prompt's bad case is an unknown character (above); --stop
# and --model-name are free text; a --host that cannot be bound is the serve tests' concern.
NOT_A_VALUE = {"--prompt", "--stop", "--model-name", "--host"}


def _actions():
    """(command, action) for every option of every subcommand, --help aside."""
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                for a in sub._actions:
                    if a.option_strings and "--help" not in a.option_strings:
                        yield name, a


def _generated():
    """Extremes by the option's type."""
    cases = []
    for cmd, a in _actions():
        opt = a.option_strings[-1]
        kind = getattr(a.type, "__name__", None)
        if a.nargs == 0:  # a flag takes no value
            cases.append((cmd, opt + "=yes", None, opt))
        elif kind == "integer":
            lo, hi = a.type.lo, a.type.hi
            for v in (lo - 1, hi + 1, -10 ** 30, 10 ** 30, "nan", "inf", "1.5", "abc", ""):
                cases.append((cmd, opt, str(v), opt))
        elif kind in FLOAT_BAD:
            cases += [(cmd, opt, v, opt) for v in FLOAT_BAD[kind]]
        elif kind == "input_file":
            cases += [(cmd, opt, v, opt) for v in ("{tmp}/missing.txt", "{tmp}", "{locked}/x.txt")]
        elif kind == "corpus_spec":  # a file, a directory or a glob
            cases += [(cmd, opt, v, opt) for v in ("{tmp}/missing.txt", "{locked}/x.txt", "")]
        elif kind == "output_file":
            cases += [(cmd, opt, v, opt) for v in ("{tmp}", "{tmp}/no-folder/x", "{locked}/x", "")]
        elif kind == "output_dir":
            cases += [(cmd, opt, v, opt) for v in ("{empty}", "{empty}/below", "{locked}/m")]
        elif a.choices:
            cases += [(cmd, opt, v, opt) for v in ("bogus", "")]
    return cases


CASES = _generated() + RUNTIME


def test_every_option_has_a_case():
    covered = {(cmd, opt.split("=")[0]) for cmd, opt, _, _ in CASES}
    missing = [(cmd, a.option_strings[-1]) for cmd, a in _actions()
               if (cmd, a.option_strings[-1]) not in covered and a.option_strings[-1] not in NOT_A_VALUE]
    assert not missing, f"add bad-value cases to tests/test_cli_extremes.py for {missing}"


@pytest.fixture()
def paths(tmp_path, monkeypatch):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00abc")
    one_line = tmp_path / "one.txt"
    one_line.write_text("First Citizen:\n")
    (tmp_path / "empty_dir").mkdir()
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "x.txt").write_text("text\n")
    locked.chmod(0o500)
    if os.geteuid() == 0:  # root ignores modes: the CLI's permission check is what is tested
        real = os.access
        monkeypatch.setattr(cli.os, "access", lambda p, mode: real(p, mode) and not (
            str(p).startswith(str(locked)) and (mode & os.W_OK or Path(p) == locked / "x.txt")))
    else:
        (locked / "x.txt").chmod(0o000)
    yield {"tmp": str(tmp_path), "empty": str(empty), "empty_dir": str(tmp_path / "empty_dir"), "binary": str(binary), "one_line": str(one_line),
           "locked": str(locked)}
    locked.chmod(0o700)


def one_line_error(rc, out, err):
    assert rc not in (0, None), (rc, out, err)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "error" in lines[0].lower() or "interrupted" in lines[0], err
    return lines[0]


@pytest.mark.parametrize("cmd,opt,value,fragment", CASES,
                         ids=[f"{c}{o}={v!r}" for c, o, v, _ in CASES])
def test_bad_value_is_one_line(cmd, opt, value, fragment, paths, capsys):
    argv = [a.format(**paths) for a in BASE.get(cmd, [cmd])]
    argv += [opt] if value is None else [opt, value.format(**paths)]
    rc, out, err = run_main(argv, capsys)
    line = one_line_error(rc, out, err)
    assert out == "" or (cmd == "train" and out.startswith("training on"))  # its first progress line
    assert fragment.format(**paths) in line, line
    assert not (Path(paths["tmp"]) / "never").exists()  # nothing was written


def test_huge_values_are_bounded_with_the_limit_named(capsys):
    rc, out, err = run_main(["generate", "--k", str(10 ** 9)], capsys)
    assert f"1 .. {cli.MAX_K}" in one_line_error(rc, out, err)
    rc, out, err = run_main(["generate", "--seed", str(2 ** 64)], capsys)
    assert "must be in 0 .. " in one_line_error(rc, out, err)
    rc, out, err = run_main(["train", "--out", "x", "--seed", str(2 ** 64)], capsys)
    assert "4,294,967,295" in one_line_error(rc, out, err)


def test_fused_step_needs_cuda_and_excludes_compile(capsys, monkeypatch):
    """--fused-step on a CPU (outside Triton's interpreter) and with --compile: one line each."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    rc, out, err = run_main(["generate", "--device", "cpu", "--fused-step", "--roots", "4"], capsys)
    assert "runs on a CUDA device" in one_line_error(rc, out, err)
    rc, out, err = run_main(["generate", "--fused-step", "--compile", "--roots", "4"], capsys)
    assert "choose one" in one_line_error(rc, out, err)


@pytest.mark.parametrize("flag", ["--fused-step", "--compile"])
def test_stream_step_flags_refuse_prompts_files(flag, tmp_path, capsys):
    """--prompts runs the batched engine, which neither flag changes: one line, not a silent no-op."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("ROMEO:\n")
    rc, out, err = run_main(["generate", "--prompts", str(prompts), flag], capsys)
    assert "batched engine" in one_line_error(rc, out, err)


# ---------------------------------------------------------------- --help stays light


def test_help_does_not_import_torch():
    code = ("import sys\nfrom fractal_flood.cli.main import main\n"
            "for argv in ([], ['--help'], ['stats', '--help'], ['train', '--help'], ['generate', '--help'],"
            " ['eval', '--help'], ['bench', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit as e:\n        assert e.code == 0, argv\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "docs/DESIGN.md" in r.stdout


# ---------------------------------------------------------------- outputs land where asked


def test_plot_is_written_at_exactly_the_given_path(tmp_path):
    pytest.importorskip("matplotlib")
    from fractal_flood.measure import report as bench_report
    rows = [{"mode": "render-only", "decoder": "flood", "k": 1, "roots": r, "tokens_per_s": 10.0 * r}
            for r in (1, 8, 64)]
    data = {"rows": rows, "run": {"device": "cpu", "dtype": "float32", "torch": "x", "date": "d"}}
    try:
        bench_report.write_plot(data, tmp_path / "plot")
    except (KeyError, TypeError):  # the header needs more of a real report
        pytest.skip("bench_report's header needs a full report")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot"]
    assert (tmp_path / "plot").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_json_output_is_strict():
    from fractal_flood.fileio import dumps
    text = dumps({"a": float("nan"), "b": [float("inf"), 1.5], "c": {"d": -float("inf")}})
    assert json.loads(text) == {"a": None, "b": [None, 1.5], "c": {"d": None}}
    assert "NaN" not in text and "Infinity" not in text


def test_api_temperature_rejects_nan_and_inf():
    from fractal_flood.render.base import DecodeOptions
    from fractal_flood.sampling.tokens import SamplingConfig
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="temperature"):
            SamplingConfig(temperature=bad)
        with pytest.raises(ValueError, match="temperature"):
            DecodeOptions(temperature=bad).validate()
    with pytest.raises(ValueError, match="threshold"):
        DecodeOptions(threshold=math.nan).validate()


# ---------------------------------------------------------------- Ctrl-C


def test_ctrl_c_in_generate_prints_the_finished_blocks(capsys, monkeypatch):
    from fractal_flood.generation.pipeline import TextPipeline
    args = ["generate", "--roots", "12", "--block", "4", "--seed", "5", "--device", "cpu", "--prompt", "KING:"]
    assert main(args) == 0
    full = capsys.readouterr().out
    real_stream = TextPipeline.stream

    def two_blocks_then_ctrl_c(self, *a, **kw):
        for i, item in enumerate(real_stream(self, *a, **kw)):
            if i == 2:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(TextPipeline, "stream", two_blocks_then_ctrl_c)
    rc, out, err = run_main(args, capsys)
    assert rc == 130
    assert one_line_error(rc, out, err).endswith("interrupted: after 2 finished block(s) of up to 4 roots")
    assert out.startswith("KING:") and len(out) > len("KING:\n")
    assert full.startswith(out[:-1])  # what was printed is the start of the full text
    assert len(out) < len(full)


def test_ctrl_c_in_train_saves_and_resume_continues(tmp_path, small_corpus_file, capsys, monkeypatch):
    from fractal_flood.train.renderer_task import RendererTask
    real_loss, calls = RendererTask.loss, []

    def loss(self, *args):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_loss(self, *args)

    monkeypatch.setattr(RendererTask, "loss", loss)
    args = ["train", "--preset", "tiny", "--corpus", str(small_corpus_file), "--out", str(tmp_path / "m"),
            "--parts", "renderer", "--steps", "6", "--batch", "8", "--no-progress", "--keep-below-bar"]
    rc, out, err = run_main(args, capsys)
    assert rc == 130
    line = one_line_error(rc, out, err)
    assert "renderer saved at step 3 of 6" in line and "--resume" in line
    monkeypatch.undo()
    rc, out, err = run_main(args, capsys)  # without --resume: refused, nothing lost
    assert "--resume" in one_line_error(rc, out, err)
    rc, out, err = run_main(args + ["--resume"], capsys)
    assert rc == 0, err
    assert "resuming from step 3 of 6" in out


@pytest.mark.slow
@pytest.mark.parametrize("sig,code,says", [(signal.SIGINT, 130, ()),
                                           (signal.SIGTERM, 128 + signal.SIGTERM, ("interrupted by SIGTERM", "--resume"))],
                         ids=["SIGINT", "SIGTERM"])
def test_a_real_signal_stops_training_with_one_line(tmp_path, small_corpus_file, sig, code, says):
    """The real thing: SIGINT (Ctrl-C), or SIGTERM (kill, a scheduler, a container stopping),
    to `python -m fractal_flood train`: the state is saved, the lock released, one line."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fractal_flood", "train", "--preset", "tiny", "--corpus", str(small_corpus_file),
         "--out", str(tmp_path / "m"), "--parts", "renderer", "--steps", "100000", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        # SIGINT as a terminal's child has it: a suite started in the background (`cmd &` in a
        # script) passes SIGINT on ignored, and an ignored signal stays ignored across exec
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stdout:  # the loop has started once the parameter count is logged
        if "parameters" in line:
            break
    time.sleep(3)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    line = one_line_error(proc.returncode, "", err)
    assert "renderer saved at step" in line and all(s in line for s in says), line
    assert (tmp_path / "m" / "train_state" / "renderer.json").exists()
    assert not (tmp_path / "m" / "train.lock").exists()
    assert not any(".tmp" in p.name for p in (tmp_path / "m").rglob("*"))


@pytest.mark.parametrize("switch", ["FRACTAL_FLOOD_CPU_STEP", "FRACTAL_FLOOD_ROWWISE"])
def test_an_unknown_runtime_switch_is_one_line(switch, monkeypatch, capsys):
    monkeypatch.setenv(switch, "fast")
    assert main(["generate", "--prompt", "ROMEO:", "--roots", "2", "--seed", "1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{switch}='fast'" in err[0], err


def _train_args(corpus, out, *extra):
    return ["train", "--preset", "tiny", "--corpus", str(corpus), "--out", str(out), "--parts", "renderer",
            "--steps", "3", "--batch", "8", "--no-progress", *extra]


def test_sigterm_in_train_saves_and_releases_in_process(tmp_path, small_corpus_file, capsys, monkeypatch):
    """The same, in this process: SIGTERM arrives in step 4 of 6."""
    from fractal_flood.train.renderer_task import RendererTask
    real_loss, calls = RendererTask.loss, []

    def loss(self, *args):
        calls.append(1)
        if len(calls) == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_loss(self, *args)

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(RendererTask, "loss", loss)
    out = tmp_path / "m"
    rc, o, err = run_main(_train_args(small_corpus_file, out, "--steps", "6"), capsys)
    assert rc == 143
    line = one_line_error(rc, o, err)
    assert "interrupted by SIGTERM" in line and "renderer saved at step 3 of 6" in line, line
    assert not (out / "train.lock").exists()
    assert signal.getsignal(signal.SIGTERM) is before  # put back when main returns


def test_a_full_disk_in_train_is_one_line_naming_the_file(tmp_path, small_corpus_file, capsys, monkeypatch):
    """ENOSPC while the renderer's checkpoint is written: one line naming the model's file
    (not a temporary name), no temporary file left, the lock released."""
    import errno
    real = os.fsync

    def fsync(fd):
        if "renderer" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    out = tmp_path / "m"
    rc, o, err = run_main(_train_args(small_corpus_file, out), capsys)
    line = one_line_error(rc, o, err)
    assert rc == 2 and f"cannot write {out}" in line and "renderer" in line, line
    assert "No space left on device" in line and ".tmp" not in line
    assert not (out / "train.lock").exists()
    assert not any(".tmp" in p.name for p in out.rglob("*"))


def test_a_part_below_its_bar_exits_non_zero_unless_kept(tmp_path, small_corpus_file, capsys):
    rc, out, err = run_main(_train_args(small_corpus_file, tmp_path / "m"), capsys)
    assert rc == 3, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "renderer: below its validation bar after 3 steps: render fidelity" in lines[0], err
    assert "--keep-below-bar" in lines[0] and "Traceback" not in err
    assert lines[0] in out  # in the run's log too
    rc, out, err = run_main(_train_args(small_corpus_file, tmp_path / "k", "--keep-below-bar"), capsys)
    assert rc == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "kept (--keep-below-bar)" in lines[0], err


def test_a_batch_that_does_not_split_names_the_users_numbers(tmp_path, small_corpus_file, capsys):
    rc, out, err = run_main(_train_args(small_corpus_file, tmp_path / "m", "--batch", "7", "--grad-accum", "2"),
                            capsys)
    line = one_line_error(rc, out, err)
    assert "--batch 7" in line and "--grad-accum 2" in line and "a batch of 3" not in line, line
    assert not (tmp_path / "m").exists()


def test_tokenizer_chars_too_few_to_merge_is_refused(tmp_path, small_corpus_file, capsys):
    rc, out, err = run_main(_train_args(small_corpus_file, tmp_path / "m", "--tokenizer-chars", "1"), capsys)
    line = one_line_error(rc, out, err)
    assert "learned no merges" in line and "--tokenizer-chars 1" in line, line
    assert not (tmp_path / "m").exists()


def test_negative_infinity_is_read_as_a_value(capsys):
    rc, out, err = run_main(["generate", "--device", "cpu", "--threshold", "-inf"], capsys)
    line = one_line_error(rc, out, err)
    assert "expected one argument" not in line and "--threshold" in line and "finite" in line, line
    parser = build_parser()
    assert parser.parse_args(["generate", "--threshold", "-1e3"]).threshold == -1000.0
    assert parser.parse_args(["generate", "--threshold", "-.5"]).threshold == -0.5


def test_a_symlink_loop_is_called_one(tmp_path, capsys):
    loop = tmp_path / "loop"
    loop.symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(loop)
    for argv in (["stats", "--corpus", loop], ["generate", "--device", "cpu", "--prompts", loop],
                 ["generate", "--device", "cpu", "--model", loop], ["train", "--out", loop],
                 ["bench", "--corpus", loop]):
        rc, out, err = run_main(argv, capsys)
        line = one_line_error(rc, out, err)
        assert f"{loop} is a symlink loop" in line and "not found" not in line, (argv, line)
    broken = tmp_path / "broken"
    broken.symlink_to(tmp_path / "nowhere")
    rc, out, err = run_main(["stats", "--corpus", broken], capsys)
    assert f"{broken} is a broken symlink to {tmp_path / 'nowhere'}" in one_line_error(rc, out, err)


def _help(command):
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return sub.format_help()


def test_eval_help_quotes_no_count_that_can_go_stale():
    text = " ".join(_help("eval").split())
    assert "17.9k" not in text and "~" not in text
    assert "--max-roots" in text and "the report says how many" in text


def test_train_without_a_preset_takes_the_devices(tmp_path):
    assert build_parser().parse_args(["train", "--out", str(tmp_path / "m")]).preset is None
    text = " ".join(_help("train").split())
    assert "small on a CPU and seed on a GPU" in text and "(default: seed)" not in text
