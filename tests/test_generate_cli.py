"""``fractal-flood generate`` for people: many prompts (lines or JSON lines) batched into JSON
lines equal to one-prompt runs, stdin, --max-chars, --stop, random seeds that repeat."""

import io
import json

import pytest

from fractal_flood.cli.main import main

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def base(tiny_model_dir):
    return ["generate", "--model", str(tiny_model_dir), "--device", "cpu", "--block", "5"]


def run(argv, capsys, stdin=None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse refuses a value
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def test_prompts_file_equals_single_runs(base, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("ROMEO:\\n\n\nKING\nFirst Citizen:\n", encoding="utf-8")
    rc, out, err = run(base + ["--prompts", str(prompts), "--roots", "9", "--seed", "100", "--max-batch", "2"],
                       capsys)
    assert rc == 0, err
    lines = [json.loads(x) for x in out.splitlines()]
    assert [d["prompt"] for d in lines] == ["ROMEO:\n", "KING", "First Citizen:"]  # blank line skipped
    assert [d["seed"] for d in lines] == [100, 101, 102]
    for d in lines:
        rc, single, _ = run(base + ["--prompt", d["prompt"], "--roots", "9", "--seed", str(d["seed"])], capsys)
        assert rc == 0 and single == d["prompt"] + d["text"] + "\n"
        assert d["roots"] == 9 and d["finish_reason"] == "length"


def test_jsonl_fields_and_output_file(base, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    rows = [{"prompt": "ROMEO:\n", "max_chars": 25, "seed": 7},
            {"prompt": "", "roots": 6, "temperature": 0, "seed": 3},
            {"prompt": "KING", "roots": 12, "top_k": 5, "top_p": 0.9, "stop": ["e"], "seed": 4}]
    prompts.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    out_file = tmp_path / "out.jsonl"
    rc, out, err = run(base + ["--prompts", str(prompts), "--output", str(out_file)], capsys)
    assert rc == 0 and out == "", err
    got = [json.loads(x) for x in out_file.read_text(encoding="utf-8").splitlines()]
    assert len(got[0]["text"]) == 25 and got[0]["finish_reason"] == "length"
    assert got[1]["roots"] == 6
    assert "e" not in got[2]["text"]
    rc, single, _ = run(base + ["--prompt", "ROMEO:\n", "--max-chars", "25", "--seed", "7"], capsys)
    assert single == "ROMEO:\n" + got[0]["text"] + "\n"
    rc, single, _ = run(base + ["--prompt", "KING", "--roots", "12", "--top-k", "5", "--top-p", "0.9",
                                "--stop", "e", "--seed", "4"], capsys)
    assert single == "KING" + got[2]["text"] + "\n"


def test_prompt_from_stdin_and_random_seed(base, capsys, monkeypatch):
    rc, out, err = run(base + ["--prompt", "-", "--roots", "8", "--json"], capsys, "ROMEO:\n", monkeypatch)
    assert rc == 0, err
    d = json.loads(out)
    assert d["prompt"] == "ROMEO:\n" and f"[seed {d['seed']}]" in err
    rc, again, _ = run(base + ["--prompt", "ROMEO:\n", "--roots", "8", "--json", "--seed", str(d["seed"])], capsys)
    assert json.loads(again)["text"] == d["text"]
    seeds = set()
    for _ in range(3):
        rc, out, err = run(base + ["--roots", "2"], capsys)
        seeds.add(err.split("seed ")[-1])
    assert len(seeds) == 3  # a fresh seed each run


def test_max_chars_and_stop(base, capsys):
    rc, out, err = run(base + ["--max-chars", "17", "--seed", "1", "--json"], capsys)
    d = json.loads(out)
    assert len(d["text"]) == 17 and d["finish_reason"] == "length"
    rc, out, _ = run(base + ["--roots", "30", "--seed", "1", "--json"], capsys)
    full = json.loads(out)["text"]
    stop = full[8:10]
    rc, out, _ = run(base + ["--roots", "30", "--seed", "1", "--json", "--stop", stop], capsys)
    d = json.loads(out)
    assert d["text"] == full[:full.find(stop)] and d["finish_reason"] == "stop"


BAD = {
    "bad_json": ('{"prompt": "x"', "line 1"),
    "unknown_field": ('{"prompt": "x", "temp": 1}', "temp"),
    "bad_number": ('{"prompt": "x", "temperature": "hot"}', "temperature"),
    "nan": ('{"prompt": "x", "top_p": NaN}', "top_p"),
    "bad_char": ('x\nROMEO: caf\u00e9', "line 2"),
    "bad_roots": ('{"prompt": "x", "roots": 0}', "roots"),
    "empty": ("\n\n", "no prompts"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_prompts_file_is_one_line(base, tmp_path, capsys, name):
    text, words = BAD[name]
    path = tmp_path / "p.jsonl"
    path.write_text(text, encoding="utf-8")
    out_file = tmp_path / "out.jsonl"
    rc, out, err = run(base + ["--prompts", str(path), "--output", str(out_file), "--seed", "1"], capsys)
    assert rc == 2 and out == "" and not out_file.exists()
    assert len(err.strip().splitlines()) == 1 and words in err, err


@pytest.mark.parametrize("extra,words", [(["--stop", ""], "--stop"), (["--seed", "-1"], "--seed"),
                                         (["--max-chars", "0"], "--max-chars"),
                                         (["--output", "x.jsonl"], "--output"),
                                         (["--prompts", "/nonexistent/p.txt"], "/nonexistent"),
                                         (["--stop", "\u00e9"], "\u00e9")])
def test_bad_values_are_one_line(base, capsys, extra, words):
    rc, out, err = run(base + extra, capsys)
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and words in err, err


def test_a_full_disk_on_output_is_one_line_and_writes_nothing(base, tmp_path, capsys, monkeypatch):
    import errno
    import os
    prompts = tmp_path / "p.txt"
    prompts.write_text("KING\n", encoding="utf-8")
    out_file = tmp_path / "out.jsonl"

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    rc, out, err = run(base + ["--prompts", str(prompts), "--roots", "4", "--seed", "1", "--output", str(out_file)],
                       capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert f"cannot write {out_file}: No space left on device" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.txt"]  # nothing half-written


def test_an_output_that_cannot_be_written_is_refused_before_generating(base, tmp_path, capsys, monkeypatch):
    import fractal_flood.generation.pipeline as pipeline
    prompts = tmp_path / "p.txt"
    prompts.write_text("KING\n", encoding="utf-8")

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the output path was checked")

    monkeypatch.setattr(pipeline, "load_pipeline", never)
    rc, out, err = run(base + ["--prompts", str(prompts), "--output", "/proc/out.jsonl"], capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "/proc/out.jsonl" in lines[0] and ".tmp" not in lines[0], err


def test_ctrl_c_with_json_prints_the_finished_blocks_as_json(base, capsys, monkeypatch):
    from fractal_flood.generation.pipeline import TextPipeline
    args = base + ["--roots", "15", "--seed", "4", "--json"]  # three blocks of 5 roots
    rc, whole, err = run(args, capsys)
    assert rc == 0, err
    full = json.loads(whole)
    real = TextPipeline.stream

    def two_blocks(self, *a, **k):
        for i, block in enumerate(real(self, *a, **k)):
            if i == 2:
                raise KeyboardInterrupt
            yield block

    monkeypatch.setattr(TextPipeline, "stream", two_blocks)
    rc, out, err = run(args, capsys)
    assert rc == 130 and len(err.strip().splitlines()) == 1 and "interrupted" in err, err
    part = json.loads(out)
    assert part["finish_reason"] == "interrupted" and part["roots"] == 10
    assert part["root_ids"] == full["root_ids"][:10] and part["seed"] == 4
    assert part["text"] and full["text"].startswith(part["text"])


@pytest.mark.parametrize("to_file", [False, True])
def test_ctrl_c_with_prompts_writes_the_finished_requests(base, tmp_path, capsys, monkeypatch, to_file):
    """Ctrl-C while many prompts run: the requests already answered are written as a whole
    run writes them (stdout or --output), one line on stderr says how many, exit 130."""
    from fractal_flood.generation.engine import Engine

    prompts = tmp_path / "p.jsonl"
    rows = [{"prompt": "ROMEO:", "roots": 5, "seed": 1}, {"prompt": "KING", "roots": 5, "seed": 2},
            {"prompt": "", "roots": 60, "seed": 3}]
    prompts.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    out_file = tmp_path / "out.jsonl"
    args = base + ["--prompts", str(prompts)] + (["--output", str(out_file)] if to_file else [])
    rc, whole, err = run(args, capsys)
    assert rc == 0, err
    full = [json.loads(x) for x in (out_file.read_text(encoding="utf-8") if to_file else whole).splitlines()]
    if to_file:
        out_file.unlink()
    real_step, calls = Engine.step, []

    def step_then_ctrl_c(self):
        calls.append(1)
        if len(calls) == 4:  # the two short requests are answered by then, the long one is not
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(Engine, "step", step_then_ctrl_c)
    rc, out, err = run(args, capsys)
    assert rc == 130 and len(err.strip().splitlines()) == 1, err
    assert "interrupted: after 2 of 3 prompts finished" in err and "Traceback" not in err
    part = [json.loads(x) for x in (out_file.read_text(encoding="utf-8") if to_file else out).splitlines()]
    assert part == [d | {k: part[i][k] for k in ("seconds", "manager_seconds", "flood_seconds")}
                    for i, d in enumerate(full[:2])]
    if to_file:
        assert out == ""
