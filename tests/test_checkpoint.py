"""Model directories: save/load round trips, atomic writes, one clear CheckpointError for
every kind of bad directory."""

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fractal_flood import fileio
from fractal_flood.errors import CheckpointError, FractalFloodError
from fractal_flood.generation.pipeline import load_pipeline
from fractal_flood.models import checkpoint as ckpt
from fractal_flood.models.causal_lm import CausalLM
from fractal_flood.models.config import CausalLMConfig, RendererConfig
from fractal_flood.models.renderer import FractalDiffusionModel

pytestmark = pytest.mark.usefixtures("single_thread")

LEVELS = [{"name": "roots", "size": 50, "max_children": 4}, {"name": "chunks", "size": 30, "max_children": 6},
          {"name": "chars", "size": 12, "max_children": 0}]


def renderer(seed=0) -> FractalDiffusionModel:
    torch.manual_seed(seed)
    return FractalDiffusionModel(RendererConfig(levels=LEVELS, n_layers=2, d_model=32, n_heads=4,
                                                timesteps=20)).eval()


def manager(seed=0) -> CausalLM:
    torch.manual_seed(seed)
    return CausalLM(CausalLMConfig(vocab_size=50, n_layers=2, d_model=32, n_heads=4, context=16)).eval()


def fp16_rounded(model):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    return model


def renderer_outputs(model):
    g = torch.Generator().manual_seed(0)
    out = []
    with torch.no_grad():
        for level, (parent, child) in enumerate(zip(LEVELS, LEVELS[1:])):
            cond = torch.randint(0, parent["size"], (6,), generator=g)
            tgt = torch.randint(0, child["size"] + 1, (6, parent["max_children"]), generator=g)
            t = torch.randint(0, 20, (6,), generator=g)
            out += [x for x in model(level, cond, tgt, t) if x is not None]
            out.append(model.energy(level, cond, tgt))
    return out


def manager_outputs(model):
    idx = torch.randint(0, 50, (3, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return [model(idx)]


def no_temp_files(d: Path):
    return [p.name for p in Path(d).rglob("*") if p.name.startswith(".") or ".tmp" in p.name]


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("part", ["renderer", "manager", "peer"])
def test_round_trip(tmp_path, part):
    make, outputs = (renderer, renderer_outputs) if part == "renderer" else (manager, manager_outputs)
    model = make()
    ckpt.save_part(tmp_path, part, model, extra={"step": 7, "preset": "test"})
    loaded, meta = ckpt.load_part(tmp_path, part)
    assert meta["step"] == 7 and meta["preset"] == "test" and meta["part"] == part
    assert meta["dtype"] == "float16"
    assert loaded.config == model.config
    assert not loaded.training
    assert next(loaded.parameters()).dtype == torch.float32
    # up to fp16 rounding of the weights
    for a, b in zip(outputs(model), outputs(loaded)):
        torch.testing.assert_close(b, a, atol=2e-2, rtol=2e-2)
    # exactly, once the weights are fp16-representable
    exact = fp16_rounded(make())
    ckpt.save_part(tmp_path, part, exact)
    loaded, _ = ckpt.load_part(tmp_path, part)
    for a, b in zip(outputs(exact), outputs(loaded)):
        assert torch.equal(a, b)
    assert no_temp_files(tmp_path) == []


def test_round_trip_float32(tmp_path):
    model = renderer()
    ckpt.save_part(tmp_path, "renderer", model, dtype=torch.float32)
    loaded, meta = ckpt.load_part(tmp_path, "renderer")
    assert meta["dtype"] == "float32"
    for a, b in zip(renderer_outputs(model), renderer_outputs(loaded)):
        assert torch.equal(a, b)


def test_tied_manager_head_survives(tmp_path):
    model = manager()
    ckpt.save_part(tmp_path, "manager", model)
    loaded, _ = ckpt.load_part(tmp_path, "manager")
    assert loaded.lm_head.weight.data_ptr() == loaded.wte.weight.data_ptr()


def test_class_factored_manager_round_trip(tmp_path):
    torch.manual_seed(0)
    model = CausalLM(CausalLMConfig(vocab_size=64, n_layers=1, d_model=16, n_heads=2, context=8,
                                    head_classes=8)).eval()
    ckpt.save_part(tmp_path, "manager", model, dtype=torch.float32)
    loaded, meta = ckpt.load_part(tmp_path, "manager")
    assert meta["config"]["head_classes"] == 8 and loaded.config.head_classes == 8
    assert torch.equal(loaded.class_head.weight, model.class_head.weight)
    idx = torch.randint(0, 64, (2, 8))
    assert torch.equal(loaded(idx), model(idx))


@pytest.mark.parametrize("classes", [3, 1, -1, 64, "many"])
def test_bad_head_classes_in_a_config(tmp_path, classes):
    model = manager()
    ckpt.save_part(tmp_path, "manager", model)
    meta = json.loads((tmp_path / "manager.json").read_text())
    meta["config"]["head_classes"] = classes
    (tmp_path / "manager.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="head_classes"):
        ckpt.load_part(tmp_path, "manager")


def test_trained_dir_round_trip(tiny_model_dir, tiny_trained_tokenizer, tmp_path):
    """A trained directory re-saved and re-loaded gives the same outputs and tokenizer."""
    r, _ = ckpt.load_renderer(tiny_model_dir, tiny_trained_tokenizer)
    m, _ = ckpt.load_manager(tiny_model_dir, tiny_trained_tokenizer)
    ckpt.save_tokenizer(tmp_path, tiny_trained_tokenizer)
    ckpt.save_part(tmp_path, "renderer", r)
    ckpt.save_part(tmp_path, "manager", m)
    tok2 = ckpt.load_tokenizer(tmp_path)
    assert tok2 == tiny_trained_tokenizer
    r2, _ = ckpt.load_renderer(tmp_path, tok2)
    m2, _ = ckpt.load_manager(tmp_path, tok2)
    cond = torch.arange(10)
    tgt = torch.randint(0, 129, (10, 4), generator=torch.Generator().manual_seed(0))
    t = torch.full((10,), 99)
    with torch.no_grad():
        for a, b in zip(r(0, cond, tgt, t), r2(0, cond, tgt, t)):
            assert torch.equal(a, b)  # loaded weights are fp16 already: exact
        idx = torch.arange(20).view(2, 10)
        assert torch.equal(m(idx), m2(idx))


def test_load_to_dtype(tmp_path):
    ckpt.save_part(tmp_path, "renderer", renderer())
    loaded, _ = ckpt.load_part(tmp_path, "renderer", dtype=torch.bfloat16)
    assert next(loaded.parameters()).dtype == torch.bfloat16


# ---------------------------------------------------------------- atomic writes


def test_atomic_write_failure_keeps_previous_file(tmp_path):
    target = tmp_path / "file.bin"
    target.write_bytes(b"old contents")

    def half_then_fail(p):
        Path(p).write_bytes(b"new but half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        fileio.atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old contents"
    assert no_temp_files(tmp_path) == []
    fileio.atomic_write(target, lambda p: Path(p).write_bytes(b"new"))
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.bin"]


def test_save_part_failure_keeps_previous_model(tmp_path, monkeypatch):
    old = renderer(0)
    ckpt.save_part(tmp_path, "renderer", old, extra={"step": 1})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_save = ckpt.save_file

    def crash(state, path, metadata=None):
        real_save(dict(list(state.items())[:2]), path, metadata=metadata)  # a partial file
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(ckpt, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_part(tmp_path, "renderer", renderer(1), extra={"step": 2})
    monkeypatch.undo()
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before  # nothing changed, no temporary file left
    loaded, meta = ckpt.load_part(tmp_path, "renderer")
    assert meta["step"] == 1
    for a, b in zip(renderer_outputs(old), renderer_outputs(loaded)):
        torch.testing.assert_close(b, a, atol=2e-2, rtol=2e-2)


def test_save_tokenizer_failure_keeps_previous_file(tmp_path, monkeypatch, tiny_tokenizer):
    ckpt.save_tokenizer(tmp_path, tiny_tokenizer)
    before = (tmp_path / "tokenizer.json").read_bytes()
    real_write = Path.write_text

    def crash(path, text, **kw):
        real_write(path, text[:20], **kw)  # a partial file
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", crash)
    with pytest.raises(OSError):
        ckpt.save_tokenizer(tmp_path, tiny_tokenizer)
    monkeypatch.undo()
    assert (tmp_path / "tokenizer.json").read_bytes() == before
    assert ckpt.load_tokenizer(tmp_path) == tiny_tokenizer
    assert no_temp_files(tmp_path) == []


def test_saves_leave_no_temp_files(tiny_model_dir):
    assert no_temp_files(tiny_model_dir) == []


# ---------------------------------------------------------------- bad directories


@pytest.fixture()
def model_dir(tiny_model_dir, tmp_path):
    """A private copy of the trained tiny model directory, to break."""
    d = tmp_path / "model"
    shutil.copytree(tiny_model_dir, d, ignore=shutil.ignore_patterns("train_state"))
    return d


def load_all(d):
    tok = ckpt.load_tokenizer(d)
    ckpt.load_renderer(d, tok)
    ckpt.load_manager(d, tok)
    return tok


def expect_error(d, *fragments):
    for load in (load_all, lambda d: load_pipeline(d, device="cpu")):
        with pytest.raises(CheckpointError) as info:
            load(d)
        msg = str(info.value)
        assert "\n" not in msg
        for frag in fragments:
            assert frag in msg, msg
    assert isinstance(info.value, FractalFloodError)


def test_the_copy_loads(model_dir):
    load_all(model_dir)
    load_pipeline(model_dir, device="cpu")


def test_missing_directory(tmp_path):
    expect_error(tmp_path / "nope", "not found", "nope")


def test_a_file_is_not_a_directory(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    expect_error(f, "not a model directory")


@pytest.mark.parametrize("name", ["tokenizer.json", "renderer.json", "renderer.safetensors",
                                  "manager.json", "manager.safetensors"])
def test_missing_file(model_dir, name):
    (model_dir / name).unlink()
    expect_error(model_dir, name, "missing")


@pytest.mark.parametrize("keep", [0, 5, 100, 0.5])
@pytest.mark.parametrize("part", ["renderer", "manager"])
def test_truncated_safetensors(model_dir, part, keep):
    p = model_dir / f"{part}.safetensors"
    data = p.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep
    p.write_bytes(data[:n])
    expect_error(model_dir, f"{part}.safetensors", "truncated or corrupt")


def test_garbage_safetensors(model_dir):
    (model_dir / "renderer.safetensors").write_bytes(b"\x00\xff" * 3000)
    expect_error(model_dir, "renderer.safetensors")


@pytest.mark.parametrize("name", ["renderer.json", "manager.json", "tokenizer.json"])
def test_corrupt_json(model_dir, name):
    p = model_dir / name
    p.write_text(p.read_text(encoding="utf-8")[:40], encoding="utf-8")
    expect_error(model_dir, name)


def test_json_not_utf8(model_dir):
    (model_dir / "renderer.json").write_bytes(b"\xff\xfe{}")
    expect_error(model_dir, "renderer.json")


@pytest.mark.parametrize("field,value", [("format", "some-other-model"), ("format", None),
                                         ("part", "manager"), ("version", 99)])
def test_wrong_header_field(model_dir, field, value):
    p = model_dir / "renderer.json"
    meta = json.loads(p.read_text())
    meta[field] = value
    p.write_text(json.dumps(meta))
    expect_error(model_dir, "renderer.json")


def test_json_of_the_wrong_shape(model_dir):
    (model_dir / "renderer.json").write_text("[1, 2, 3]")
    expect_error(model_dir, "renderer.json")


def _drop_tokenizer_hash(model_dir):
    for part in ("renderer", "manager"):
        p = model_dir / f"{part}.json"
        meta = json.loads(p.read_text())
        meta.pop("tokenizer_sha256")
        p.write_text(json.dumps(meta))


def test_config_from_a_different_vocabulary(model_dir, shipped_tokenizer):
    """The tiny model's renderer and manager next to the shipped (default-size) tokenizer,
    with the parts' tokenizer hashes removed (as in a directory written before them)."""
    _drop_tokenizer_hash(model_dir)
    ckpt.save_tokenizer(model_dir, shipped_tokenizer)
    with pytest.raises(CheckpointError, match="levels"):
        ckpt.load_renderer(model_dir, shipped_tokenizer)
    with pytest.raises(CheckpointError, match="vocabulary"):
        ckpt.load_manager(model_dir, shipped_tokenizer)
    expect_error(model_dir, "tokenizer")


def _set_config(model_dir, **change):
    p = model_dir / "renderer.json"
    meta = json.loads(p.read_text())
    meta["config"].update(change)
    p.write_text(json.dumps(meta))


def test_weights_that_do_not_match_the_config(model_dir):
    _set_config(model_dir, d_model=32)  # the weights are 64 wide
    expect_error(model_dir, "wte.weight", "(382, 64)")
    _set_config(model_dir, d_model=64, n_layers=3)  # a block the weights lack
    expect_error(model_dir, "renderer.safetensors", "does not match")


def test_wrong_shape_message_names_the_file(model_dir):
    _set_config(model_dir, d_model=32)
    expect_error(model_dir, "renderer.safetensors")


@pytest.mark.parametrize("change", [dict(n_heads=7), dict(n_layers="two"), dict(unknown_field=1),
                                    dict(levels=[]), dict(levels="abc")])
def test_malformed_config(model_dir, change):
    _set_config(model_dir, **change)
    expect_error(model_dir, "renderer")


@pytest.mark.parametrize("change", [dict(d_model=-64), dict(levels=[[192, 128], [128, 59, 16]])])
def test_malformed_config_sizes(model_dir, change):
    _set_config(model_dir, **change)
    expect_error(model_dir, "renderer")


def test_shipped_model_loads():
    d = ckpt.default_model_dir()
    tok = load_all(d)
    meta = ckpt.read_meta(d, "renderer")
    assert meta["format"] == ckpt.FORMAT and meta["version"] == ckpt.VERSION
    assert meta["config"]["levels"] == [lv.to_dict() for lv in tok.levels]


# ---------------------------------------------------------------- one run per directory


def test_parts_record_the_tokenizer_they_were_trained_with(tiny_model_dir):
    want = fileio.file_sha256(tiny_model_dir / "tokenizer.json")
    for part in ("renderer", "manager"):
        assert ckpt.read_meta(tiny_model_dir, part)["tokenizer_sha256"] == want


def test_a_tokenizer_from_another_run_is_refused(model_dir, corpus_text):
    """A tokenizer of the same sizes from other text: the hash tells them apart, and the
    line names both."""
    from fractal_flood.hierarchy.tokenizer import HierarchicalTokenizer
    other = HierarchicalTokenizer.train(corpus_text[-60_000:], num_chunks=128, num_roots=192)
    old = fileio.file_sha256(model_dir / "tokenizer.json")
    new = ckpt.save_tokenizer(model_dir, other)
    assert new != old
    expect_error(model_dir, "mixes two runs", old[:16], new[:16])


def test_a_part_without_a_tokenizer_hash_is_accepted_as_legacy(model_dir):
    _drop_tokenizer_hash(model_dir)
    load_all(model_dir)
    # the shipped model has one such part (the AR peer, trained before parts recorded the
    # hash, on the same chunk level); its manager and renderer record the shipped tokenizer's
    shipped = ckpt.default_model_dir()
    assert "tokenizer_sha256" not in ckpt.read_meta(shipped, "peer")
    sha = fileio.file_sha256(shipped / "tokenizer.json")
    assert ckpt.read_meta(shipped, "renderer")["tokenizer_sha256"] == sha
    assert ckpt.read_meta(shipped, "manager")["tokenizer_sha256"] == sha


# ---------------------------------------------------------------- hostile content


def _rewrite_weights(path, change):
    from safetensors.torch import load_file, save_file
    state = load_file(str(path))
    change(state)
    save_file(state, str(path))


@pytest.mark.parametrize("kind", ["nan", "inf", "int", "bool"])
def test_weights_must_be_finite_floats(model_dir, kind):
    def change(state):
        w = state["wte.weight"]
        if kind == "nan":
            w[3, 5] = float("nan")
        elif kind == "inf":
            w[0, 0] = float("-inf")
        elif kind == "int":
            state["wte.weight"] = w.to(torch.int16)
        else:
            state["wte.weight"] = w > 0
    _rewrite_weights(model_dir / "renderer.safetensors", change)
    expect_error(model_dir, "renderer.safetensors", "wte.weight",
                 "NaN or infinite" if kind in ("nan", "inf") else "floating point")


@pytest.mark.parametrize("change,fragment", [
    (dict(n_heads=0), "n_heads"),
    (dict(n_heads=-4), "n_heads"),
    (dict(d_model=1 << 30), "d_model"),
    (dict(n_layers=1 << 40), "n_layers"),
    (dict(timesteps=0), "timesteps"),
    (dict(n_layers=True), "n_layers"),
    (dict(d_model=2.5), "d_model"),
    (dict(levels=[{"name": "roots", "size": 0, "max_children": 4}]), "level"),
    (dict(levels=[{"name": "roots", "size": 192, "max_children": 1 << 30},
                  {"name": "chars", "size": 65, "max_children": 0}]), "level"),
    (dict(levels=[[192, 128, 4], [128, 65, 16]]), "level"),  # the old triples
])
def test_config_ranges(model_dir, change, fragment):
    _set_config(model_dir, **change)
    expect_error(model_dir, "renderer.json", fragment)


def test_a_huge_manager_config_allocates_nothing(model_dir):
    p = model_dir / "manager.json"
    meta = json.loads(p.read_text())
    meta["config"].update(vocab_size=1 << 24, d_model=1 << 16, n_heads=1 << 10, context=1 << 20)
    p.write_text(json.dumps(meta))
    tok = ckpt.load_tokenizer(model_dir)
    with pytest.raises(CheckpointError, match="manager.safetensors"):  # shapes differ, nothing built
        ckpt.load_manager(model_dir, tok)


@pytest.mark.parametrize("name", ["renderer.json", "tokenizer.json"])
def test_deeply_nested_json(model_dir, name):
    (model_dir / name).write_text("[" * 100_000 + "]" * 100_000)
    expect_error(model_dir, name, "nests")


def test_json_size_limit(model_dir):
    p = model_dir / "renderer.json"
    meta = json.loads(p.read_text())
    meta["padding"] = "x" * (ckpt.MAX_META_BYTES + 1)
    p.write_text(json.dumps(meta))
    expect_error(model_dir, "renderer.json", "limit")


def test_json_with_nan(model_dir):
    p = model_dir / "renderer.json"
    p.write_text(p.read_text().replace('"step": 300', '"step": NaN'))
    expect_error(model_dir, "renderer.json", "NaN")


def _edit_tokenizer(model_dir, edit):
    p = model_dir / "tokenizer.json"
    data = json.loads(p.read_text(encoding="utf-8"))
    edit(data)
    p.write_text(json.dumps(data), encoding="utf-8")


def _chunk_bpe(d):  # a version-2 tokenizer file: levels top first (roots, chunks)
    return d["levels"][1]["bpe"]


def _root_bpe(d):
    return d["levels"][0]["bpe"]


@pytest.mark.parametrize("edit,fragment", [
    # a regex normalizer makes the Rust library panic: it must never get there
    (lambda d: _chunk_bpe(d).update(normalizer={"type": "Replace", "pattern": {"Regex": "(("},
                                                "content": "x"}), "normalizer"),
    (lambda d: _root_bpe(d).update(pre_tokenizer={"type": "Split", "pattern": {"Regex": "["},
                                                  "behavior": "Isolated", "invert": False}),
     "pre_tokenizer"),
    (lambda d: _chunk_bpe(d).update(added_tokens=[{"id": 0, "content": "a"}]), "added tokens"),
    (lambda d: _chunk_bpe(d)["model"].update(dropout=0.5), "dropout"),
    (lambda d: _chunk_bpe(d)["model"].update(type="WordPiece"), "type"),
    (lambda d: _chunk_bpe(d)["model"].update(surprise=1), "surprise"),
    (lambda d: _chunk_bpe(d)["model"]["vocab"].update({"zz": 10 ** 6}), "vocab"),
    (lambda d: _chunk_bpe(d)["model"]["merges"].append(["no", "such"]), "merges"),
    (lambda d: d["levels"][0].update(bpe=[]), "bpe"),
    (lambda d: d["levels"][1].update(max_children=10 ** 9), "max_children"),
    (lambda d: d.update(alphabet=7), "alphabet"),
])
def test_hostile_tokenizer_json(model_dir, edit, fragment):
    _edit_tokenizer(model_dir, edit)
    _drop_tokenizer_hash(model_dir)  # so the tokenizer itself is what is judged
    expect_error(model_dir, "tokenizer.json", fragment)


def test_shipped_tokenizer_passes_the_structure_check():
    from fractal_flood.hierarchy.bpe_json import check_bpe_json
    data = json.loads((ckpt.default_model_dir() / "tokenizer.json").read_text(encoding="utf-8"))
    assert data["version"] == 2 and [lv["name"] for lv in data["levels"]] == ["roots", "chunks"]
    for lv in data["levels"]:
        check_bpe_json(lv["bpe"], lv["name"])


# ---------------------------------------------------------------- files as written


def test_weights_and_json_have_the_same_mode(tmp_path):
    old = os.umask(0o022)
    try:
        ckpt.save_part(tmp_path, "manager", manager())
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"manager.json": 0o644, "manager.safetensors": 0o644}


def test_a_dead_writers_temp_file_is_removed_by_the_next_write(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid is free now (reuse within the test is vanishingly unlikely)
    stale = tmp_path / f".manager.safetensors.tmp{dead.pid}"
    stale.write_bytes(b"half a file")
    live = tmp_path / f".other.json.tmp{os.getpid()}"  # ours: a write in progress, kept
    live.write_bytes(b"x")
    ckpt.save_part(tmp_path, "manager", manager())
    assert not stale.exists() and live.exists()
    live.unlink()
    assert no_temp_files(tmp_path) == []


def test_loading_does_not_import_dynamo():
    """The shape check builds each part on the meta device, where ``nn.init.normal_``'s
    reference implementation would import ``torch._dynamo`` (about 1.2 s of every command's
    start on a CPU): loading the shipped model leaves it unimported, and the meta build's
    shapes are a real build's."""
    code = ("import sys\nfrom fractal_flood.models.checkpoint import load_model_dir\n"
            "load_model_dir(None, 'cpu', None, parts=('renderer', 'manager', 'peer'))\n"
            "print('torch._dynamo' in sys.modules)")
    env = dict(os.environ, PYTHONPATH=str(Path(ckpt.__file__).resolve().parents[2]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
    for cls, cfg in ((CausalLM, CausalLMConfig(vocab_size=256, head_classes=16)),
                     (FractalDiffusionModel, RendererConfig(levels=LEVELS, n_layers=2, d_model=32, n_heads=4))):
        torch.manual_seed(0)
        real = {k: tuple(v.shape) for k, v in cls(cfg).state_dict().items() if not k.startswith("lm_head.")}
        assert ckpt._expected(ckpt._build(cls, cfg)) == real


def _disk_full(*args):
    import errno
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_names_the_file_not_its_temporary_name(tmp_path, monkeypatch):
    import errno
    target = tmp_path / "file.bin"
    target.write_bytes(b"old contents")
    monkeypatch.setattr(os, "fsync", _disk_full)
    with pytest.raises(fileio.WriteError) as e:
        fileio.atomic_write(target, lambda p: Path(p).write_bytes(b"new"))
    assert str(e.value) == f"cannot write {target}: No space left on device"
    assert isinstance(e.value, OSError) and e.value.errno == errno.ENOSPC  # still an OSError to callers
    assert target.read_bytes() == b"old contents"
    assert no_temp_files(tmp_path) == []


def test_a_full_disk_reported_by_safetensors_names_the_file(tmp_path, monkeypatch):
    """safetensors reports a failed write as its own error with the OS error in the text."""
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28) at "
                              f'path "{tmp_path}/.tmpXYZ"')

    monkeypatch.setattr(ckpt, "save_file", full)
    with pytest.raises(fileio.WriteError, match=f"cannot write {tmp_path / 'renderer.safetensors'}: "
                                                "No space left on device$"):
        ckpt.save_part(tmp_path, "renderer", renderer())
    assert no_temp_files(tmp_path) == [] and not (tmp_path / "renderer.json").exists()


def test_other_errors_while_writing_keep_their_traceback(tmp_path):
    def bug(p):
        raise ValueError("a bug, not the disk")

    with pytest.raises(ValueError, match="a bug"):
        fileio.atomic_write(tmp_path / "x", bug)
    assert no_temp_files(tmp_path) == []


def test_check_writable_fails_before_the_work(tmp_path):
    fileio.check_writable(tmp_path / "out.json")
    assert list(tmp_path.iterdir()) == []  # it leaves nothing behind
    with pytest.raises(fileio.WriteError, match=r"^cannot write /proc/x\.json: "):
        fileio.check_writable(Path("/proc/x.json"))


def test_a_full_disk_while_taking_the_lock_leaves_no_lock(tmp_path, monkeypatch):
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, text):
            _disk_full()

    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: Full(real_fdopen(fd, *a, **k)))
    with pytest.raises(fileio.WriteError, match="cannot write .*train.lock: No space left on device"):
        with fileio.DirectoryLock(tmp_path, log=lambda s: None):
            pass
    assert not (tmp_path / fileio.LOCK_FILE).exists()
