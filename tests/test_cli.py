"""The command line: help and version, generate (text and JSON), stats, train, and one clear
line on stderr for every bad input. Everything runs ``cli.main`` in this process (a process
start costs seconds of torch import on a small machine); ``test_the_real_command`` runs the
real ``python -m fractal_flood`` once. Every option at its extremes: test_cli_extremes.py.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fractal_flood import __version__
from fractal_flood.cli.main import main
from fractal_flood.models import checkpoint as ckpt

from cli_run import run_main

TIMEOUT = 240

pytestmark = pytest.mark.usefixtures("single_thread")  # the in-process tests


@pytest.fixture(scope="module")
def corrupt_model(tmp_path_factory) -> Path:
    """The shipped model's files with renderer.safetensors cut in half."""
    src = ckpt.default_model_dir()
    d = tmp_path_factory.mktemp("corrupt_model")
    for name in ("tokenizer.json", "renderer.json", "manager.json", "manager.safetensors"):
        shutil.copy(src / name, d / name)
    data = (src / "renderer.safetensors").read_bytes()
    (d / "renderer.safetensors").write_bytes(data[: len(data) // 2])
    return d


BAD_INPUTS = {
    # name: (generate arguments before the common --device cpu, a fragment of the line)
    "unknown_char_prompt": (["--prompt", "ROMEO: caf\u00e9", "--roots", "3"], "\u00e9"),
    "roots_0": (["--roots", "0"], "--roots"),
    "roots_neg": (["--roots", "-3"], "--roots"),
    "k_0": (["--k", "0"], "--k"),
    "threshold_abc": (["--threshold", "abc"], "abc"),
    "model_missing": (["--model", "/nonexistent/fractal-flood-model"], "/nonexistent"),
    "top_p_2": (["--top-p", "2"], "--top-p"),
}


def one_line_error(rc, out, err):
    assert rc != 0, (out, err)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "error" in lines[0].lower(), err
    return lines[0]


def test_the_real_command(tmp_path):
    """``python -m fractal_flood`` itself, in subprocesses (the rest runs ``main`` in process):
    --version, and generate with its summary line on stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8"}
    cmd = [sys.executable, "-m", "fractal_flood"]
    version = subprocess.Popen(cmd + ["--version"], stdout=subprocess.PIPE, text=True, env=env)
    gen = subprocess.run(cmd + ["generate", "--roots", "16", "--seed", "1", "--device", "cpu"],
                         capture_output=True, text=True, encoding="utf-8", env=env, timeout=TIMEOUT)
    assert __version__ in version.communicate(timeout=TIMEOUT)[0]
    assert gen.returncode == 0, gen.stderr
    assert len(gen.stdout.rstrip("\n")) >= 16 and "16 roots" in gen.stderr
    assert "Traceback" not in gen.stderr


def test_help(capsys):
    rc, out, err = run_main(["--help"], capsys)
    assert rc == 0, err
    for cmd in ("stats", "train", "generate", "eval", "bench"):
        assert cmd in out


def test_version(capsys):
    rc, out, err = run_main(["--version"], capsys)
    assert rc == 0 and __version__ in out


def test_generate_prints_text(capsys, shipped_tokenizer):
    rc, out, err = run_main(["generate", "--roots", "16", "--seed", "1", "--device", "cpu"], capsys)
    assert rc == 0, err
    text = out[:-1] if out.endswith("\n") else out
    assert len(text) >= 16
    assert set(text) <= set(shipped_tokenizer.alphabet)
    assert "16 roots" in err  # the summary line


def test_generate_json(capsys, shipped_tokenizer):
    rc, out, err = run_main(["generate", "--json", "--roots", "16", "--seed", "1", "--device", "cpu",
                             "--prompt", "ROMEO:"], capsys)
    assert rc == 0, err
    assert "NaN" not in out and "Infinity" not in out
    d = json.loads(out)
    assert d["prompt"] == "ROMEO:"
    assert isinstance(d["text"], str) and set(d["text"]) <= set(shipped_tokenizer.alphabet)
    assert len(d["root_ids"]) == d["roots"] == 16
    assert all(isinstance(i, int) and 0 <= i < shipped_tokenizer.num_roots for i in d["root_ids"])
    assert len(d["energies"]["level0"]) == 16
    assert len(d["energies"]["level1"]) == d["chunks"]
    assert all(isinstance(e, float) for e in d["energies"]["level0"])
    assert d["seconds"] > 0 and d["chunks_per_s"] > 0  # timings
    assert d["chars"] == len(d["text"])
    assert len(d["levels"]) == 2 and d["levels"][0]["items"] == 16
    assert len(d["text"]) >= 16  # every root spells at least one character


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_one_line(name, capsys):
    args, expected = BAD_INPUTS[name]
    rc, out, err = run_main(["generate", *args, "--device", "cpu"], capsys)
    line = one_line_error(rc, out, err)
    assert out == ""
    assert expected in line, line


def test_device_cuda_without_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    line = one_line_error(*run_main(["generate", "--roots", "3", "--device", "cuda"], capsys))
    assert "cuda" in line.lower()


def test_corrupt_model_dir(corrupt_model, capsys):
    line = one_line_error(*run_main(["generate", "--roots", "3", "--device", "cpu", "--model", corrupt_model],
                                    capsys))
    assert "renderer.safetensors" in line


def test_train_missing_corpus(tmp_path, capsys):
    line = one_line_error(*run_main(["train", "--preset", "tiny", "--corpus", tmp_path / "no-such-corpus.txt",
                                     "--out", tmp_path / "never"], capsys))
    assert "no-such-corpus.txt" in line and "not found" in line


def test_stats_json(capsys, small_corpus_file, small_text):
    rc, out, err = run_main(["stats", "--json", "--corpus", small_corpus_file, "--chunks", "128",
                             "--roots", "192"], capsys)
    assert rc == 0, err
    d = json.loads(out)
    assert d["chars"] == len(small_text)
    assert d["chunk_vocab"] <= 128 and d["root_vocab"] <= 192
    assert 0 < d["roots"] <= d["chunks"] <= d["chars"]
    assert d["chars_per_chunk"] == pytest.approx(d["chars"] / d["chunks"])
    assert d["chunks_per_root"] == pytest.approx(d["chunks"] / d["roots"])
    assert d["chars_per_root"] == pytest.approx(d["chars"] / d["roots"])
    assert 1 < d["chars_per_chunk"] <= 16 and 1 <= d["chunks_per_root"] <= 4
    assert d["max_chunk_chars"] <= 16 and d["max_root_chunks"] <= 4


def test_train_makes_a_loadable_model(tmp_path, small_corpus_file, capsys):
    out_dir = tmp_path / "trained"
    rc, out, err = run_main(["train", "--preset", "tiny", "--corpus", small_corpus_file, "--out", out_dir,
                             "--steps", "20", "--lm-steps", "20", "--no-progress", "--keep-below-bar"], capsys)
    assert rc == 0, err
    tok = ckpt.load_tokenizer(out_dir)
    renderer, meta = ckpt.load_renderer(out_dir, tok)
    manager, mmeta = ckpt.load_manager(out_dir, tok)
    assert meta["step"] == 20 and meta["preset"] == "tiny"
    assert mmeta["step"] == 20
    from fractal_flood.generation.pipeline import load_pipeline
    res = load_pipeline(out_dir, device="cpu").generate("", roots=5)
    assert len(res.root_ids) == 5


# ---------------------------------------------------------------- more bad input, in process
# (the same main() the command runs; cheaper than a process each)


@pytest.mark.parametrize("argv", [
    ["generate", "--threshold", "nan"],
    ["generate", "--temperature", "-1"],
    ["generate", "--render-temperature", "-0.5"],
    ["generate", "--top-k", "0"],
    ["generate", "--top-p", "0"],
    ["generate", "--block", "0"],
    ["generate", "--max-tries", "0"],
    ["generate", "--decoder", "beam"],
    ["generate", "--roots", "1.5"],
    ["generate", "--dtype", "float64", "--device", "cpu"],
    ["generate", "--device", "tpu"],
    ["frobnicate"],
    ["train"],  # --out is required
    ["train", "--out", "x", "--preset", "huge"],
    ["stats", "--chunks", "0"],
])
def test_more_bad_input_in_process(argv, capsys):
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    one_line_error(rc, out, err)


def test_train_bad_parts_in_process(tmp_path, small_corpus_file, capsys):
    rc = main(["train", "--preset", "tiny", "--corpus", str(small_corpus_file), "--out", str(tmp_path / "m"),
               "--parts", "renderer,painter", "--no-progress"])
    out, err = capsys.readouterr()
    line = one_line_error(rc, out, err)
    assert "painter" in line


def test_stats_on_an_empty_corpus_in_process(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    rc = main(["stats", "--corpus", str(empty)])
    out, err = capsys.readouterr()
    assert "empty" in one_line_error(rc, out, err)


def test_stats_vocab_smaller_than_alphabet_in_process(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("abcdefghij\n" * 20)
    rc = main(["stats", "--corpus", str(corpus), "--chunks", "3"])
    out, err = capsys.readouterr()
    one_line_error(rc, out, err)


def test_stream_prints_the_same_text_in_process(capsys):
    args = ["generate", "--roots", "12", "--seed", "3", "--device", "cpu", "--prompt", "KING:", "--block", "5"]
    assert main(args) == 0
    plain = capsys.readouterr().out
    assert main(args + ["--stream"]) == 0
    streamed = capsys.readouterr().out
    assert plain.startswith("KING:") and len(plain) > len("KING:\n")
    assert streamed == plain


def test_train_on_a_too_short_corpus_in_process(tmp_path, capsys):
    corpus = tmp_path / "mini.txt"
    corpus.write_text("To be or not to be.\nThat is it.\n")
    rc = main(["train", "--preset", "tiny", "--corpus", str(corpus), "--out", str(tmp_path / "m"),
               "--parts", "manager", "--lm-steps", "2", "--no-progress"])
    out, err = capsys.readouterr()
    one_line_error(rc, out, err)
