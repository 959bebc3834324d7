"""The real command, ``python -m fractal_flood``, in subprocesses: help and version, generate
(text and JSON), stats, train, and one clear line on stderr for every bad input.

Every command is started at once in a module fixture (each with one intra-op thread) and the
tests read their results, so the ~1.5 s torch import of each process overlaps.
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
from fractal_flood import checkpoint as ckpt
from fractal_flood.cli import main

TIMEOUT = 240

pytestmark = pytest.mark.usefixtures("single_thread")  # the in-process tests


class Runs:
    """Commands started together; ``get(name)`` waits for one and returns (rc, out, err)."""

    def __init__(self, cwd: Path):
        self.cwd = cwd
        self.procs = {}
        self.results = {}
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8"}

    def start(self, name: str, *args: str) -> None:
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "fractal_flood", *map(str, args)], cwd=self.cwd, env=self.env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8")

    def get(self, name: str):
        if name not in self.results:
            proc = self.procs[name]
            out, err = proc.communicate(timeout=TIMEOUT)
            self.results[name] = (proc.returncode, out, err)
        return self.results[name]

    def close(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


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
    # name: generate arguments (before the common --device cpu)
    "unknown_char_prompt": ["--prompt", "ROMEO: caf\u00e9", "--roots", "3"],
    "roots_0": ["--roots", "0"],
    "roots_neg": ["--roots", "-3"],
    "k_0": ["--k", "0"],
    "threshold_abc": ["--threshold", "abc"],
    "model_missing": ["--model", "/nonexistent/fractal-flood-model"],
    "top_p_2": ["--top-p", "2"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_corpus_file, corrupt_model):
    work = tmp_path_factory.mktemp("cli")
    r = Runs(work)
    r.start("help", "--help")
    r.start("version", "--version")
    r.start("train", "train", "--preset", "tiny", "--corpus", small_corpus_file, "--out", work / "trained",
            "--steps", "20", "--lm-steps", "20")
    r.start("generate", "generate", "--roots", "16", "--seed", "1", "--device", "cpu")
    r.start("generate_json", "generate", "--json", "--roots", "16", "--seed", "1", "--device", "cpu",
            "--prompt", "ROMEO:")
    r.start("stats", "stats", "--json", "--corpus", small_corpus_file, "--chunks", "128", "--roots", "192")
    for name, args in BAD_INPUTS.items():
        r.start(name, "generate", *args, "--device", "cpu")
    r.start("device_cuda", "generate", "--roots", "3", "--device", "cuda")
    r.start("corrupt_model", "generate", "--roots", "3", "--device", "cpu", "--model", corrupt_model)
    r.start("train_missing_corpus", "train", "--preset", "tiny", "--corpus", work / "no-such-corpus.txt",
            "--out", work / "never")
    yield r
    r.close()


def one_line_error(rc, out, err):
    assert rc != 0, (out, err)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "error" in lines[0].lower(), err
    return lines[0]


def test_help(runs):
    rc, out, err = runs.get("help")
    assert rc == 0, err
    for cmd in ("stats", "train", "generate", "eval", "bench"):
        assert cmd in out


def test_version(runs):
    rc, out, err = runs.get("version")
    assert rc == 0, err
    assert __version__ in out


def test_generate_prints_text(runs, shipped_tokenizer):
    rc, out, err = runs.get("generate")
    assert rc == 0, err
    text = out[:-1] if out.endswith("\n") else out
    assert len(text) >= 16
    assert set(text) <= set(shipped_tokenizer.alphabet)
    assert "Traceback" not in err
    assert "16 roots" in err  # the summary line


def test_generate_json(runs, shipped_tokenizer):
    rc, out, err = runs.get("generate_json")
    assert rc == 0, err
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
def test_bad_input_is_one_line(runs, name):
    rc, out, err = runs.get(name)
    line = one_line_error(rc, out, err)
    assert out == ""
    expected = {"unknown_char_prompt": "\u00e9", "roots_0": "--roots", "roots_neg": "--roots",
                "k_0": "--k", "threshold_abc": "abc", "model_missing": "/nonexistent",
                "top_p_2": "--top-p"}[name]
    assert expected in line, line


def test_device_cuda_without_gpu(runs):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    line = one_line_error(*runs.get("device_cuda"))
    assert "cuda" in line.lower()


def test_corrupt_model_dir(runs):
    line = one_line_error(*runs.get("corrupt_model"))
    assert "renderer.safetensors" in line


def test_train_missing_corpus(runs, tmp_path):
    line = one_line_error(*runs.get("train_missing_corpus"))
    assert "no-such-corpus.txt" in line and "not found" in line


def test_stats_json(runs, small_text):
    rc, out, err = runs.get("stats")
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


def test_train_makes_a_loadable_model(runs):
    rc, out, err = runs.get("train")
    assert rc == 0, err
    assert "Traceback" not in err
    out_dir = runs.cwd / "trained"
    tok = ckpt.load_tokenizer(out_dir)
    renderer, meta = ckpt.load_renderer(out_dir, tok)
    manager, mmeta = ckpt.load_manager(out_dir, tok)
    assert meta["step"] == 20 and meta["preset"] == "tiny"
    assert mmeta["step"] == 20
    from fractal_flood.pipeline import load_pipeline
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
