"""Training: the noise process, training pairs, token streams, the learned result of a tiny
run, resume after an interruption, and the time limit."""

import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fractal_flood.corpus.expansions import (LevelTable, canvas_lengths, hard_negatives, level_tables,
                                             random_negatives, sample_conditions, wrong_pairs)
from fractal_flood.corpus.streams import TokenStream, lm_batch
from fractal_flood.errors import CheckpointError, FractalFloodError
from fractal_flood.models import checkpoint as ckpt
from fractal_flood.models.config import RendererConfig, get_preset
from fractal_flood.models.renderer import FractalDiffusionModel
from fractal_flood.train.noise import corrupt, replace_prob
from fractal_flood.train.run import STATE_DIR, TrainOptions, run_training

pytestmark = pytest.mark.usefixtures("single_thread")

# ---------------------------------------------------------------- noise


def test_replace_prob_is_linear_over_T():
    T = 100
    p = replace_prob(torch.arange(T), T)
    assert p[-1] == pytest.approx(1.0)
    assert p[0] == pytest.approx(1 / T)
    assert torch.all(p[1:] > p[:-1])
    assert torch.allclose(p[1:] - p[:-1], torch.full((T - 1,), 1 / T))


def test_corrupt_at_T_minus_1_is_pure_noise():
    T, C, B, L = 100, 11, 4000, 8
    g = torch.Generator().manual_seed(0)
    clean = torch.zeros(B, L, dtype=torch.long)  # all class 0
    noisy = corrupt(clean, torch.full((B,), T - 1), T, C, g)
    assert noisy.shape == clean.shape and noisy.min() >= 0 and noisy.max() < C
    freq = torch.bincount(noisy.flatten(), minlength=C).float() / noisy.numel()
    # uniform over every class, class 0 (the clean token) no more often than the others
    assert (freq - 1 / C).abs().max() < 0.01, freq
    # and independent of the clean input
    other = corrupt(torch.full((B, L), 5), torch.full((B,), T - 1), T, C,
                    torch.Generator().manual_seed(0))
    assert torch.equal(other, noisy)


def test_corrupt_at_small_t_is_mostly_clean():
    T, C, B, L = 100, 11, 4000, 8
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(0, C, (B, L), generator=g)
    for t, p in [(0, 0.01), (9, 0.10)]:
        noisy = corrupt(clean, torch.full((B,), t), T, C, g)
        changed = (noisy != clean).float().mean().item()
        # a replaced token equals the original with probability 1 / C
        expected = p * (1 - 1 / C)
        assert abs(changed - expected) < 0.01, (t, changed, expected)
    # per-item t: rows at T-1 are noise, rows at 0 clean
    t = torch.tensor([0, T - 1] * (B // 2))
    noisy = corrupt(clean, t, T, C, g)
    diff = (noisy != clean).float().mean(1)
    assert diff[0::2].mean() < 0.03 and diff[1::2].mean() > 0.8


def test_corrupt_is_reproducible_with_a_generator():
    clean = torch.randint(0, 7, (32, 5))
    t = torch.randint(0, 100, (32,))
    a = corrupt(clean, t, 100, 7, torch.Generator().manual_seed(3))
    b = corrupt(clean, t, 100, 7, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


# ---------------------------------------------------------------- pairs


@pytest.fixture(scope="module")
def tables(tiny_tokenizer):
    return level_tables(tiny_tokenizer)


def test_level_tables_match_tokenizer(tables, tiny_tokenizer):
    roots, chunks = tables
    assert roots.targets.shape == (tiny_tokenizer.num_roots, tiny_tokenizer.max_root_chunks)
    assert chunks.targets.shape == (tiny_tokenizer.num_chunks, tiny_tokenizer.max_chunk_chars)
    assert roots.pad_id == tiny_tokenizer.num_chunks and chunks.pad_id == tiny_tokenizer.num_chars
    for r in range(0, tiny_tokenizer.num_roots, 17):
        exp = tiny_tokenizer.expand(r)
        assert roots.targets[r, :len(exp)].tolist() == exp
        assert (roots.targets[r, len(exp):] == roots.pad_id).all()
        assert roots.lengths[r] == len(exp)
        # the length head's targets: each chunk's own number of characters, pads 0
        assert roots.child_lengths[r, :len(exp)].tolist() == [len(tiny_tokenizer.spell(c)) for c in exp]
        assert (roots.child_lengths[r, len(exp):] == 0).all()
    assert chunks.child_lengths is None  # characters have no children
    assert not roots.packed and chunks.packed


@pytest.mark.parametrize("level", [0, 1])
def test_hard_negatives_differ_in_one_or_two_positions(tables, level):
    table = tables[level]
    g = torch.Generator().manual_seed(level)
    cond = sample_conditions(table, 5000, g)
    right = table.targets[cond]
    hard, lengths = hard_negatives(table, cond, g)
    assert torch.equal(lengths, table.lengths[cond])
    assert hard.shape == right.shape
    assert hard.min() >= 0 and hard.max() < table.num_classes
    ndiff = (hard != right).sum(1)
    assert ndiff.min() >= 1, "a hard negative equals the right expansion"
    assert ndiff.max() <= 2
    # both kinds occur
    assert (ndiff == 1).any() and (ndiff == 2).any()
    # changes lie within the real tokens, or the first pad at the top; a packed level's
    # canvas is the real length, so there a change is never a pad
    pos = torch.arange(right.shape[1])
    last = table.lengths[cond].unsqueeze(1) - (1 if table.packed else 0)
    assert not ((hard != right) & (pos.unsqueeze(0) > last)).any()
    if table.packed:
        assert not ((hard != right) & (hard == table.pad_id)).any()


def test_random_negatives_never_pick_the_same_condition():
    """On a table whose row i spells i, the chosen condition can be read off the row."""
    n, L = 37, 3
    targets = torch.arange(n).unsqueeze(1).repeat(1, L)
    table = LevelTable(targets, torch.full((n,), L), pad_id=n, packed=False)
    g = torch.Generator().manual_seed(0)
    cond = torch.arange(n).repeat(200)
    neg, lengths = random_negatives(table, cond, g)
    assert (lengths == L).all()
    picked = neg[:, 0]
    assert torch.equal(neg, table.targets[picked])
    assert (picked != cond).all()
    # every other condition is reachable
    assert len(set(picked[cond == 0].tolist())) == n - 1


@pytest.mark.parametrize("level", [0, 1])
def test_random_negatives_differ_from_right(tables, level):
    table = tables[level]
    g = torch.Generator().manual_seed(2)
    cond = sample_conditions(table, 3000, g)
    neg, _ = random_negatives(table, cond, g)
    assert ((neg != table.targets[cond]).any(1)).all()


def test_wrong_pairs_halves(tables):
    table = tables[0]
    g = torch.Generator().manual_seed(4)
    cond = sample_conditions(table, 1000, g)
    wrong, lengths = wrong_pairs(table, cond, g)
    assert lengths.shape == (1000,)
    assert wrong.shape == (1000, table.targets.shape[1])
    right = table.targets[cond]
    first, second = wrong[:500], wrong[500:]
    # first half: the whole expansion of another condition
    match = (first.unsqueeze(1) == table.targets.unsqueeze(0)).all(-1)  # (500, N)
    assert match.any(1).all(), "first half is not made of table rows"
    assert not match[torch.arange(500), cond[:500]].any()
    # second half: the right expansion with 1 or 2 tokens changed
    ndiff = (second != right[500:]).sum(1)
    assert ndiff.min() >= 1 and ndiff.max() <= 2


@pytest.mark.parametrize("level", [0, 1])
def test_sample_conditions_covers_all(tables, level):
    table = tables[level]
    g = torch.Generator().manual_seed(5)
    cond = sample_conditions(table, 40 * table.num_conditions, g)
    assert cond.min() >= 0 and cond.max() < table.num_conditions
    counts = torch.bincount(cond, minlength=table.num_conditions)
    assert (counts > 0).all()
    # uniform over conditions: no count far from the mean of 40
    assert counts.max() < 90 and counts.min() > 10


def test_lm_batch_targets_are_inputs_shifted():
    ids = torch.arange(1000) * 3  # every window is recognisable
    g = torch.Generator().manual_seed(0)
    x, y = lm_batch(ids, 16, 32, g)
    assert x.shape == y.shape == (16, 32)
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(y, x + 3)  # contiguous windows of the stream
    assert x.min() >= 0 and y.max() <= ids.max()
    # a stream shorter than the context gives the longest windows it can
    x, y = lm_batch(torch.arange(10), 4, 32, g)
    assert x.shape == (4, 9) and torch.equal(y, x + 1)
    with pytest.raises(ValueError):
        lm_batch(torch.arange(1), 4, 32, g)


def test_token_stream_split_keeps_held_out_tail():
    ids = list(range(1000))
    s = TokenStream.split(ids, val_fraction=0.05)
    assert torch.equal(torch.cat([s.train, s.val]), torch.tensor(ids))
    assert len(s.val) == 50
    assert s.val[0] == 950 and s.val[-1] == 999  # the tail, not a random sample
    tiny = TokenStream.split([1, 2, 3])
    assert len(tiny.val) >= 1 and len(tiny.train) + len(tiny.val) == 3


# ---------------------------------------------------------------- the learned result


@torch.no_grad()
def fidelity(model: FractalDiffusionModel, tables, seed=0):
    """Per level over every condition: exact expansion from pure noise (argmax, one pass),
    and the share of conditions where energy(wrong) > energy(right), random and hard."""
    out = {}
    T = model.config.timesteps
    g = torch.Generator().manual_seed(seed)
    for level, table in enumerate(tables):
        cond = torch.arange(table.num_conditions)
        right = table.targets[cond]
        lengths = canvas_lengths(table, cond)
        noise = torch.randint(0, table.num_classes, right.shape, generator=g)
        t = torch.full((len(cond),), T - 1)
        pred = model.denoise(level, cond, noise, t, lengths)[0].argmax(-1)
        ok = pred == right
        if lengths is not None:
            ok |= torch.arange(right.shape[1]).unsqueeze(0) >= lengths.unsqueeze(1)
        out[f"exact{level}"] = ok.all(-1).float().mean().item()
        e_right = model.energy(level, cond, right, lengths)
        for kind, fn in (("random", random_negatives), ("hard", hard_negatives)):
            wrong, wrong_len = fn(table, cond, g)
            e_wrong = model.energy(level, cond, wrong, None if lengths is None else wrong_len)
            out[f"detect_{kind}{level}"] = (e_wrong > e_right).float().mean().item()
    return out


def test_training_drives_fidelity_up(trained_tiny, tiny_trained_tokenizer, tiny_renderer):
    """A few hundred tiny-preset steps: exact expansion from pure noise goes from ~0 to well
    above it at both levels, and the energy tells right from wrong far above chance.
    (Measured at 300 steps on 60k chars, three training seeds: exact 0.05-0.6 per level,
    detection 0.75-0.95; the fixture's seed gives exact ~0.36 / ~0.16.)"""
    tables = level_tables(tiny_trained_tokenizer)
    torch.manual_seed(0)
    untrained = FractalDiffusionModel(tiny_renderer.config).eval()
    before = fidelity(untrained, tables)
    after = fidelity(tiny_renderer, tables)
    for level in (0, 1):
        assert before[f"exact{level}"] < 0.02, before
        assert after[f"exact{level}"] > 0.04, after
        assert after[f"exact{level}"] > before[f"exact{level}"] + 0.03
        assert after[f"detect_random{level}"] > 0.7, after
        assert after[f"detect_hard{level}"] > 0.7, after
    # the run's own validation agrees that it learned
    res = trained_tiny[1]["renderer"]
    assert res["steps"] == 300
    assert res["exact0"] > 0.03 and res["exact1"] > 0.03
    assert res["detect0"] > 0.7 and res["detect1"] > 0.7
    # and the manager's held-out loss is below a uniform guess over the roots
    man = trained_tiny[1]["manager"]
    assert man["val_loss"] < math.log(tiny_trained_tokenizer.num_roots)


def test_trained_dir_layout(tiny_model_dir):
    files = {p.name for p in Path(tiny_model_dir).iterdir()}
    for name in ("tokenizer.json", "renderer.json", "renderer.safetensors", "manager.json",
                 "manager.safetensors", STATE_DIR):
        assert name in files
    meta = ckpt.read_meta(tiny_model_dir, "renderer")
    assert meta["preset"] == "tiny" and meta["step"] == 300
    assert not any(n.startswith(".") or ".tmp" in n for n in files)


# ---------------------------------------------------------------- resume and limits


def _opts(out, corpus, **kw):
    base = dict(out_dir=out, preset="tiny", corpus=str(corpus), parts=("renderer",), steps=30,
                batch=16, eval_every=10, save_every=10, progress=False, log=lambda s: None)
    base.update(kw)
    return TrainOptions(**base)


class Interrupted(Exception):
    pass


def _state(out, part="renderer"):
    """The saved training state as plain data (read without the library's loader)."""
    from safetensors.torch import load_file
    meta = json.loads((Path(out) / STATE_DIR / f"{part}.json").read_text())
    tensors = load_file(str(Path(out) / STATE_DIR / f"{part}.safetensors"))
    best = meta["best"] if meta["best"] is not None else float("inf")
    return {"step": meta["step"], "total_steps": meta["total_steps"], "best": best,
            "model": {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}}


@pytest.mark.slow  # test_ctrl_c_saves_the_state_first_and_resume_continues checks the same, faster
def test_resume_continues_an_interrupted_run(tmp_path, small_corpus_file):
    """Interrupt at step 15 (saved at 10), resume: it continues from step 10, finishes at
    the original total, and ends with exactly the weights of an uninterrupted run."""
    full = tmp_path / "full"
    torch.manual_seed(0)  # model init draws from the global generator (see test_seed_...)
    run_training(_opts(full, small_corpus_file))

    cut = tmp_path / "cut"
    lines = []

    def interrupt_at_15(line):
        lines.append(line)
        if "step 15" in line:  # a validation line: the save at step 10 has happened
            raise Interrupted(line)

    torch.manual_seed(0)
    with pytest.raises(Interrupted):
        run_training(_opts(cut, small_corpus_file, eval_every=5, log=interrupt_at_15))
    saved = _state(cut)
    assert saved["step"] == 10 and saved["total_steps"] == 30

    log = []
    res = run_training(_opts(cut, small_corpus_file, resume=True, log=log.append))
    assert any("resuming from step 10 of 30" in line for line in log), log
    assert res["renderer"]["steps"] == 30
    done = _state(cut)
    assert done["step"] == 30
    ref = _state(full)
    for k, v in ref["model"].items():
        torch.testing.assert_close(done["model"][k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert ckpt.read_meta(cut, "renderer")["step"] == 30
    ckpt.load_renderer(cut, ckpt.load_tokenizer(cut))


def test_same_seed_same_weights(tmp_path, small_corpus_file):
    torch.manual_seed(1)
    run_training(_opts(tmp_path / "a", small_corpus_file, steps=2, eval_every=2, save_every=2))
    torch.manual_seed(2)  # the global generator must not matter, only opts.seed
    run_training(_opts(tmp_path / "b", small_corpus_file, steps=2, eval_every=2, save_every=2))
    a, b = _state(tmp_path / "a")["model"], _state(tmp_path / "b")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_without_a_directory_is_a_clear_error(tmp_path, small_corpus_file):
    with pytest.raises(FractalFloodError, match="nothing to resume"):
        run_training(_opts(tmp_path / "empty", small_corpus_file, resume=True))


def test_resume_from_a_corrupt_state_is_a_clear_error(tmp_path, small_corpus_file):
    out = tmp_path / "m"
    run_training(_opts(out, small_corpus_file, steps=2, eval_every=2, save_every=1))
    state = out / STATE_DIR / "renderer.safetensors"
    good = state.read_bytes()
    state.write_bytes(good[:100])
    with pytest.raises(CheckpointError, match="cannot resume renderer.*truncated or corrupt"):
        run_training(_opts(out, small_corpus_file, resume=True))
    state.write_bytes(good)
    meta = out / STATE_DIR / "renderer.json"
    meta.write_text(meta.read_text()[:50])
    with pytest.raises(CheckpointError, match="renderer training state"):
        run_training(_opts(out, small_corpus_file, resume=True))


def test_time_limit_caps_steps(tmp_path, small_corpus_file):
    out = tmp_path / "m"
    res = run_training(_opts(out, small_corpus_file, steps=500, time_limit=1e-3, eval_every=1000,
                             save_every=1000))
    steps = res["renderer"]["steps"]
    assert 1 <= steps < 500
    assert _state(out)["total_steps"] == steps == _state(out)["step"]
    assert ckpt.read_meta(out, "renderer")["step"] == steps  # the last step is published


def test_time_limit_bounds_the_whole_run(tmp_path, small_corpus_file):
    """Two parts of 100k steps each under a 3 s limit: the first part gets at most half of
    it, the second what is left, and both stop long before their schedules end."""
    log = []
    t0 = time.perf_counter()
    res = run_training(_opts(tmp_path / "m", small_corpus_file, parts=("renderer", "manager"),
                             steps=100_000, lm_steps=100_000, time_limit=3.0, eval_every=10 ** 6,
                             save_every=10 ** 6, log=log.append))
    wall = time.perf_counter() - t0
    shares = {line.split(":")[0]: float(line.split(": ")[1].split("s of")[0]) for line in log
              if "s of the 3s --time-limit" in line}
    assert shares["renderer"] <= 1.5 and shares["manager"] <= 3.0 - shares["renderer"] + 0.1, shares
    assert 1 <= res["renderer"]["steps"] < 100_000 and 1 <= res["manager"]["steps"] < 100_000
    assert wall < 3.0 + 120, wall  # plus a validation and a save per part, however busy the machine


@pytest.mark.parametrize("bad", [dict(steps=0), dict(batch=-1), dict(save_every=0),
                                 dict(parts=("renderer", "painter")), dict(preset="huge")])
def test_bad_options_are_clear_errors(tmp_path, small_corpus_file, bad):
    with pytest.raises((FractalFloodError, ValueError)):
        run_training(_opts(tmp_path / "m", small_corpus_file, **bad))


def test_corpus_outside_the_tokenizer_alphabet_is_rejected(tmp_path, small_corpus_file):
    out = tmp_path / "m"
    run_training(_opts(out, small_corpus_file, steps=1, eval_every=1, save_every=1))
    other = tmp_path / "other.txt"
    other.write_text("caf\u00e9 \u00e9t\u00e9\n", encoding="utf-8")
    with pytest.raises(FractalFloodError, match="unknown character"):  # a new part, same tokenizer
        run_training(_opts(out, other, parts=("manager",), lm_steps=1))


def test_tiny_preset_is_smaller_than_seed():
    tiny, seed = get_preset("tiny"), get_preset("seed")
    levels = [{"name": "roots", "size": 192, "max_children": 4}, {"name": "chunks", "size": 128, "max_children": 16},
              {"name": "chars", "size": 65, "max_children": 0}]
    n_tiny = FractalDiffusionModel(RendererConfig(levels=levels, **tiny.renderer)).num_params()
    n_seed = FractalDiffusionModel(RendererConfig(levels=levels, **seed.renderer)).num_params()
    assert n_tiny * 10 < n_seed


def test_resume_keeps_the_best_heldout_loss_of_a_language_model(tmp_path, small_corpus_file):
    """The manager publishes only improving checkpoints; a resumed run must remember the best
    held-out loss so far, not start again from infinity."""
    out = tmp_path / "lm"

    def interrupt_at_15(line):
        if "step 15" in line:
            raise Interrupted(line)

    with pytest.raises(Interrupted):
        run_training(_opts(out, small_corpus_file, parts=("manager",), lm_steps=30, eval_every=5,
                           log=interrupt_at_15))
    saved = _state(out, "manager")
    published = ckpt.read_meta(out, "manager")
    assert saved["step"] == 10 and saved["best"] == pytest.approx(published["metrics"]["val_loss"])
    seen = []
    run_training(_opts(out, small_corpus_file, parts=("manager",), lm_steps=30, resume=True,
                       log=seen.append))
    final = _state(out, "manager")
    published = ckpt.read_meta(out, "manager")
    assert final["best"] == pytest.approx(published["metrics"]["val_loss"])
    assert final["best"] <= saved["best"]  # never published a worse checkpoint after resuming


def test_packed_training_loss_equals_one_padded_pass(tiny_tokenizer):
    """The renderer task packs each lower level into length-sorted groups, each trimmed to its
    longest row; that is the same loss (and gradient) as one masked pass over the whole
    padded batch, and two equal pieces average to it (data parallel / accumulation)."""
    from fractal_flood.train.renderer_task import RendererTask

    torch.manual_seed(0)
    cfg = RendererConfig(levels=[lv.to_dict() for lv in tiny_tokenizer.levels], n_layers=2, d_model=32,
                         n_heads=4)
    model = FractalDiffusionModel(cfg)
    task = RendererTask(model, tiny_tokenizer, 64, 1.0, torch.device("cpu"), torch.Generator().manual_seed(1))
    batch = task.draw()
    results = {}
    for groups in (1, 4):
        task.groups = groups
        model.zero_grad()
        loss, logs = task.loss(batch)
        loss.backward()
        results[groups] = (loss.detach(), {k: v for k, v in logs.items()},
                           model.wte.weight.grad.clone())
    (l1, logs1, g1), (l4, logs4, g4) = results[1], results[4]
    torch.testing.assert_close(l1, l4, rtol=1e-5, atol=1e-6)
    for k in logs1:
        torch.testing.assert_close(logs1[k], logs4[k], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g1, g4, rtol=1e-4, atol=1e-7)
    halves = sum(task.loss(batch, p, 2)[0].detach() for p in range(2)) / 2
    torch.testing.assert_close(halves, l4, rtol=1e-5, atol=1e-6)
    assert set(logs4) == {"ce0", "en0", "len0", "ce1", "en1"}


# ---------------------------------------------------------------- one run per directory


def test_a_trained_directory_needs_resume_or_overwrite(tmp_path, small_corpus_file):
    out = tmp_path / "m"
    run_training(_opts(out, small_corpus_file, steps=2, eval_every=2, save_every=2))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(FractalFloodError, match="already holds a trained renderer.*--resume.*--overwrite"):
        run_training(_opts(out, small_corpus_file, steps=2))
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # untouched
    with pytest.raises(FractalFloodError, match="choose one"):
        run_training(_opts(out, small_corpus_file, resume=True, overwrite=True))
    log = []
    run_training(_opts(out, small_corpus_file, steps=3, eval_every=3, save_every=3, overwrite=True,
                       log=log.append))
    assert any("--overwrite: removed" in line and "renderer.json" in line for line in log), log
    assert ckpt.read_meta(out, "renderer")["step"] == 3
    # a part the directory does not hold yet is added next to it, with the same tokenizer
    run_training(_opts(out, small_corpus_file, parts=("manager",), lm_steps=2, eval_every=2))
    load = ckpt.load_model_dir(out)
    assert load.renderer is not None and load.manager is not None


def test_a_second_writer_is_refused_with_the_holders_name(tmp_path, small_corpus_file):
    import socket

    from fractal_flood.fileio import LOCK_FILE
    out = tmp_path / "m"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        info = {"pid": holder.pid, "host": socket.gethostname(), "started": "2026-01-01T00:00:00+00:00"}
        (out / LOCK_FILE).write_text(json.dumps(info))
        with pytest.raises(FractalFloodError) as e:
            run_training(_opts(out, small_corpus_file, steps=1))
        assert f"pid {holder.pid} on {info['host']}" in str(e.value) and "\n" not in str(e.value)
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    # the holder is dead now: its lock is taken over, with a message, and removed at the end
    log = []
    run_training(_opts(out, small_corpus_file, steps=1, eval_every=1, log=log.append))
    assert any("taking over" in line and str(holder.pid) in line for line in log), log
    assert not (out / LOCK_FILE).exists()


def test_the_lock_is_released_when_training_fails(tmp_path, small_corpus_file):
    from fractal_flood.fileio import LOCK_FILE
    out = tmp_path / "m"
    with pytest.raises(Interrupted):
        run_training(_opts(out, small_corpus_file, log=_raise_at("step 10", Interrupted)))
    assert not (out / LOCK_FILE).exists()


# ---------------------------------------------------------------- interruption


def _raise_at(fragment, exc):
    def log(line):
        if fragment in line:
            raise exc(line)
    return log


def test_ctrl_c_saves_the_state_first_and_resume_continues(tmp_path, small_corpus_file, monkeypatch):
    """Ctrl-C in step 10, long before the first scheduled save (100): the state after step 9
    is saved, the error says so, and --resume finishes with the weights of an unbroken run."""
    from fractal_flood.train.renderer_task import RendererTask
    from fractal_flood.train.run import TrainingInterrupted
    real_loss, calls = RendererTask.loss, []

    def loss_until_10(self, *args):
        calls.append(1)
        if len(calls) == 10:
            raise KeyboardInterrupt
        return real_loss(self, *args)

    out = tmp_path / "cut"
    monkeypatch.setattr(RendererTask, "loss", loss_until_10)
    with pytest.raises(TrainingInterrupted, match="renderer saved at step 9 of 16.*--resume"):
        run_training(_opts(out, small_corpus_file, steps=16, eval_every=1000, save_every=100))
    monkeypatch.undo()
    assert _state(out)["step"] == 9
    assert not any(".tmp" in p.name or p.name == "train.lock" for p in out.rglob("*"))
    run_training(_opts(out, small_corpus_file, steps=16, resume=True, eval_every=1000, save_every=100))
    full = tmp_path / "full"
    run_training(_opts(full, small_corpus_file, steps=16, eval_every=1000, save_every=100))
    assert _state(out)["step"] == 16
    for k, v in _state(full)["model"].items():
        torch.testing.assert_close(_state(out)["model"][k], v, rtol=1e-5, atol=1e-6, msg=k)


def test_resume_applies_a_new_step_count(tmp_path, small_corpus_file):
    out = tmp_path / "m"
    run_training(_opts(out, small_corpus_file, steps=10))
    log = []
    res = run_training(_opts(out, small_corpus_file, steps=14, resume=True, log=log.append))
    assert any("--steps 14 replaces the saved schedule of 10 steps" in line for line in log), log
    assert res["renderer"]["steps"] == 14 and _state(out)["step"] == 14
    log.clear()
    run_training(_opts(out, small_corpus_file, steps=12, resume=True, log=log.append))
    assert any("nothing left to train" in line for line in log), log
    assert _state(out)["step"] == 14


def test_a_corpus_too_short_for_the_manager_is_refused_before_the_renderer_trains(tmp_path):
    corpus = tmp_path / "mini.txt"
    corpus.write_text("To be or not to be.\nThat is it.\n")
    out = tmp_path / "m"
    with pytest.raises(FractalFloodError, match="too short to train the manager"):
        run_training(_opts(out, corpus, parts=("renderer", "manager"), steps=5))
    assert not (out / "renderer.json").exists() and not (out / STATE_DIR).exists()


# ---------------------------------------------------------------- no pickle


class _Planted:
    """Unpickling this calls Path.write_text(marker): what a hostile state file would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


@pytest.fixture(scope="module")
def two_step_dir(small_corpus_file, tmp_path_factory):
    """A renderer trained 2 steps, state saved: copied by the tests that break it."""
    out = tmp_path_factory.mktemp("two_step") / "m"
    run_training(_opts(out, small_corpus_file, steps=2, eval_every=2, save_every=2))
    return out


@pytest.fixture()
def trained_copy(two_step_dir, tmp_path):
    out = tmp_path / "m"
    shutil.copytree(two_step_dir, out)
    return out


def test_a_planted_pickle_never_runs(tmp_path, small_corpus_file, trained_copy):
    import pickle
    out = trained_copy
    marker = tmp_path / "marker"
    payload = pickle.dumps(_Planted(marker))
    state = out / STATE_DIR
    # 1. a pickle at the old state path, next to no new state
    for name in ("renderer.json", "renderer.safetensors"):
        (state / name).unlink()
    (state / "renderer.pt").write_bytes(payload)
    with pytest.raises(CheckpointError, match="renderer.pt is a pickled training state.*never loaded"):
        run_training(_opts(out, small_corpus_file, resume=True))
    # 2. a pickle under the new names
    (state / "renderer.safetensors").write_bytes(payload)
    (state / "renderer.json").write_bytes(payload)
    with pytest.raises(CheckpointError, match="renderer training state"):
        run_training(_opts(out, small_corpus_file, resume=True))
    assert not marker.exists()


@pytest.mark.parametrize("change", [
    dict(step=-1), dict(step=10 ** 9), dict(step="3"), dict(best=float("nan")), dict(format="x"),
    dict(stamp="another save"), dict(param_groups="all"), dict(optim_scalars={"0/step": "x"}),
    dict(tokenizer_sha256="0" * 64),
])
def test_a_tampered_state_json_is_one_checkpoint_error(small_corpus_file, trained_copy, change):
    out = trained_copy
    p = out / STATE_DIR / "renderer.json"
    meta = json.loads(p.read_text())
    meta.update(change)
    p.write_text(json.dumps(meta))  # json.dumps writes a bare NaN: refused as well
    with pytest.raises(CheckpointError, match="renderer") as e:
        run_training(_opts(out, small_corpus_file, resume=True))
    assert "\n" not in str(e.value)


def test_a_state_with_nan_weights_is_refused(small_corpus_file, trained_copy):
    from safetensors.torch import load_file, save_file
    out = trained_copy
    p = out / STATE_DIR / "renderer.safetensors"
    tensors = load_file(str(p))
    with __import__("safetensors").safe_open(str(p), framework="pt") as f:
        meta = f.metadata()
    k = next(k for k in tensors if k.startswith("optim/"))
    tensors[k] = torch.full_like(tensors[k], float("nan"))
    save_file(tensors, str(p), metadata=meta)
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        run_training(_opts(out, small_corpus_file, resume=True))


# ---------------------------------------------------------------- time limits under load


def _fake_clock(monkeypatch, slow_steps, slow, fast):
    """The training run's clock, advanced only by its steps: the first ``slow_steps`` steps
    take ``slow`` seconds each (another job holds the machine), the rest ``fast``. -> the
    clock, a one-item list."""
    from types import SimpleNamespace

    import fractal_flood.train.run as run_mod
    from fractal_flood.train.renderer_task import RendererTask
    clock, real_loss, calls = [1000.0], RendererTask.loss, []

    def loss(self, *args):
        calls.append(1)
        clock[0] += slow if len(calls) <= slow_steps else fast
        return real_loss(self, *args)

    monkeypatch.setattr(run_mod, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(RendererTask, "loss", loss)
    return clock


def test_time_limit_refits_the_schedule_after_a_slow_start(tmp_path, small_corpus_file, monkeypatch):
    """Steps 0-39 take 0.5 s (a busy machine), the rest 0.1 s, under a 30 s limit. Sized once
    from steps 10-40, the run would stop at step 60, 21 s into its 30; refitted as it runs,
    it takes ~150 steps and uses its time."""
    clock = _fake_clock(monkeypatch, slow_steps=40, slow=0.5, fast=0.1)
    log = []
    res = run_training(_opts(tmp_path / "m", small_corpus_file, steps=10_000, batch=8, time_limit=30.0,
                             eval_every=10 ** 6, save_every=10 ** 6, log=log.append))
    used = clock[0] - 1000.0
    steps = res["renderer"]["steps"]
    fits = [int(line.split("the schedule is now ")[1].split()[0]) for line in log if "the schedule is now" in line]
    assert fits[0] == 60 and max(fits) > 120, log  # first sized by the slow stretch, then refitted
    assert 130 <= steps <= 160, (steps, log)
    assert 0.9 * 30 <= used <= 30.5, used
    assert _state(tmp_path / "m")["step"] == steps


def test_time_limit_shortens_the_schedule_when_the_machine_gets_busy(tmp_path, small_corpus_file, monkeypatch):
    """The other way round: fast first (0.05 s a step), then 0.5 s from step 60 on. The run
    still ends at its deadline, not ~20x past it."""
    from fractal_flood.train.renderer_task import RendererTask
    clock = _fake_clock(monkeypatch, slow_steps=0, slow=0.0, fast=0.05)
    real_loss, calls = RendererTask.loss, []  # the fake clock's loss, slowed from step 60

    def slower(self, *args):
        calls.append(1)
        if len(calls) > 60:
            clock[0] += 0.45
        return real_loss(self, *args)

    monkeypatch.setattr(RendererTask, "loss", slower)
    res = run_training(_opts(tmp_path / "m", small_corpus_file, steps=10_000, batch=8, time_limit=20.0,
                             eval_every=10 ** 6, save_every=10 ** 6))
    used = clock[0] - 1000.0
    assert 0.9 * 20 <= used <= 20.6, used
    assert 60 < res["renderer"]["steps"] < 120, res


# ---------------------------------------------------------------- validation bars


def test_a_renderer_below_its_bar_says_so_in_one_line(tmp_path, small_corpus_file):
    log, warned = [], []
    res = run_training(_opts(tmp_path / "m", small_corpus_file, steps=2, log=log.append, warn=warned.append))
    reason = res["renderer"]["below_bar"]
    assert "render fidelity" in reason and "99.9%" in reason
    assert len(warned) == 1 and reason in warned[0] and "--keep-below-bar" in warned[0], warned
    assert warned[0] in log  # and in the run's log
    assert ckpt.read_meta(tmp_path / "m", "renderer")["step"] == 2  # saved: --resume continues it
    warned.clear()
    res = run_training(_opts(tmp_path / "k", small_corpus_file, steps=2, keep_below_bar=True,
                             warn=warned.append))
    assert len(warned) == 1 and "kept (--keep-below-bar)" in warned[0], warned


def test_a_renderer_at_its_bar_is_not_flagged():
    from fractal_flood.train.renderer_task import RendererTask
    assert RendererTask.below_bar(None, {"exact0": 1.0, "detect0": 0.6, "exact1": 0.999}) is None
    assert "exact1=0.9980" in RendererTask.below_bar(None, {"exact0": 1.0, "exact1": 0.998})
    assert RendererTask.below_bar(None, {"exact0": float("nan")}) is not None


def test_a_manager_that_never_improves_on_its_first_evaluation_says_so(tmp_path, small_corpus_file, monkeypatch):
    """Held-out losses 5.0, 5.1, 5.2 at steps 1-3: the first stays the best (and the published
    checkpoint); the run says so. One that improves once is not flagged."""
    from fractal_flood.train.lm_task import LMTask
    losses = iter([5.0, 5.1, 5.2, 5.0, 4.9, 5.3])
    monkeypatch.setattr(LMTask, "validate", lambda self: {"val_loss": next(losses), "val_bpc": 1.0})
    warned = []
    res = run_training(_opts(tmp_path / "m", small_corpus_file, parts=("manager",), lm_steps=3, eval_every=1,
                             warn=warned.append))
    assert "never improved on its first evaluation (5.0000) in 3 evaluations" in res["manager"]["below_bar"]
    assert len(warned) == 1 and warned[0].startswith("manager: below its validation bar"), warned
    assert ckpt.read_meta(tmp_path / "m", "manager")["step"] == 1
    warned.clear()
    res = run_training(_opts(tmp_path / "n", small_corpus_file, parts=("manager",), lm_steps=3, eval_every=1,
                             warn=warned.append))
    assert "below_bar" not in res["manager"] and warned == []


def test_a_manager_evaluated_once_cannot_show_it_improved(tmp_path, small_corpus_file):
    res = run_training(_opts(tmp_path / "m", small_corpus_file, parts=("manager",), lm_steps=2,
                             eval_every=1000, warn=lambda s: None))
    assert "evaluated once" in res["manager"]["below_bar"]


# ---------------------------------------------------------------- the default preset


def test_the_default_preset_suits_the_device():
    from fractal_flood.train.run import default_preset
    assert default_preset(torch.device("cpu")) == "small"
    assert default_preset(torch.device("cuda")) == "seed"  # the plan's sizes, hours on a CPU


def test_train_without_a_preset_takes_the_devices_then_the_directorys(tmp_path, small_corpus_file):
    log = []
    out = tmp_path / "m"
    run_training(_opts(out, small_corpus_file, preset=None, device="cpu", steps=1, batch=8, log=log.append))
    assert "preset small: the default on a CPU (--preset picks another)" in log
    assert ckpt.read_meta(out, "renderer")["preset"] == "small"
    assert _state(out)["step"] == 1
    tiny = tmp_path / "t"  # a directory trained with another preset keeps it when continued
    run_training(_opts(tiny, small_corpus_file, steps=1))
    log.clear()
    run_training(_opts(tiny, small_corpus_file, preset=None, device="cpu", steps=2, resume=True, log=log.append))
    assert f"preset tiny: the one {tiny} was trained with" in log, log
    assert ckpt.read_meta(tiny, "renderer")["preset"] == "tiny"


# ---------------------------------------------------------------- numbers the user gave


def test_a_batch_that_does_not_split_names_the_users_numbers(tmp_path, small_corpus_file):
    with pytest.raises(FractalFloodError) as e:
        run_training(_opts(tmp_path / "m", small_corpus_file, batch=7, grad_accum=2))
    msg = str(e.value)
    assert "--batch 7" in msg and "--grad-accum 2" in msg and "a multiple of 8" in msg, msg
    assert "a batch of 3" not in msg
    assert not (tmp_path / "m").exists()  # refused before anything was written
    with pytest.raises(FractalFloodError, match=r"manager: --batch 7 .*--grad-accum 2.*a multiple of 2"):
        run_training(_opts(tmp_path / "m", small_corpus_file, parts=("manager",), batch=7, grad_accum=2))
    res = run_training(_opts(tmp_path / "m", small_corpus_file, batch=8, grad_accum=2, steps=1))  # 8 splits
    assert res["renderer"]["steps"] == 1


def test_a_tokenizer_sample_too_short_to_merge_is_refused(tmp_path, small_corpus_file):
    with pytest.raises(FractalFloodError, match=r"learned no merges at level '(roots|chunks)'.*--tokenizer-chars 1\b"):
        run_training(_opts(tmp_path / "m", small_corpus_file, tokenizer_chars=1))
    assert not (tmp_path / "m").exists()
