"""Corpora larger than memory: files, directories and globs read as one streamed text, the
tokenizer trained from streamed lines, and the token shards (exact ids, windows and the
held-out split as in memory, a cache that is reused only while it is valid)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from fractal_flood.corpus.reader import open_corpus
from fractal_flood.corpus.shards import (INDEX_FILE, ShardedIds, cache_dir_for, load_or_build, open_shards,
                                         token_chars)
from fractal_flood.corpus.streams import TokenStream, lm_batch
from fractal_flood.errors import FractalFloodError
from fractal_flood.hierarchy.tokenizer import HierarchicalTokenizer
from fractal_flood.measure.metrics import heldout_loss

pytestmark = pytest.mark.usefixtures("single_thread")

SHARD_TOKENS = 5000  # small shards: the test corpus spans several, and windows cross them


@pytest.fixture
def corpus_dir(tmp_path, small_text):
    """``small_text`` in three files; the middle one ends without a line break, so a line
    continues across the file boundary."""
    d = tmp_path / "books"
    (d / "b").mkdir(parents=True)
    cut1, cut2 = 20_000, 41_240
    assert small_text[cut2 - 1] != "\n"
    (d / "a.txt").write_text(small_text[:cut1], encoding="utf-8")
    (d / "b" / "c.txt").write_text(small_text[cut1:cut2], encoding="utf-8")
    (d / "d.txt").write_text(small_text[cut2:], encoding="utf-8")
    (d / ".hidden.txt").write_text("not part of the corpus \u00e9", encoding="utf-8")
    return d


def _build(corpus, tokenizer, tmp_path, logs=None):
    tok_file = tmp_path / "tokenizer.json"
    if not tok_file.exists():
        tokenizer.save(tok_file)
    return load_or_build(corpus, tokenizer, tok_file, tmp_path / "cache", progress=False,
                         log=(logs.append if logs is not None else lambda s: None), shard_tokens=SHARD_TOKENS)


# ---------------------------------------------------------------- corpus


def test_directory_and_glob_read_as_the_concatenated_text(corpus_dir, small_text):
    by_dir = open_corpus(corpus_dir)
    assert [p.name for p in by_dir.files] == ["a.txt", "c.txt", "d.txt"]  # sorted by path, hidden skipped
    assert by_dir.read_text() == small_text
    by_glob = open_corpus(str(corpus_dir / "**" / "*.txt"))
    assert by_glob.read_text() == small_text
    assert list(by_dir.lines()) == small_text.splitlines(keepends=True)
    blocks = list(by_dir.blocks())
    assert "".join(blocks) == small_text and all(b.endswith("\n") for b in blocks[:-1])


def test_lines_keep_every_kind_of_line_break(tmp_path):
    text = "one\r\ntwo\rthree\nfour\x0bfive\u2028six"  # what str.splitlines splits on
    (tmp_path / "t.txt").write_bytes(text.encode("utf-8"))
    c = open_corpus(tmp_path / "t.txt")
    assert c.read_text() == text
    assert list(c.lines()) == text.splitlines(keepends=True)
    assert list(c.lines(max_chars=5)) == ["one\r\n"]


@pytest.mark.parametrize("spec, words", [("nothing-*.txt", "matches no files"), ("empty-dir", "holds no files")])
def test_bad_corpus_specs_are_clear_errors(tmp_path, spec, words):
    (tmp_path / "empty-dir").mkdir()
    with pytest.raises(FractalFloodError, match=words):
        open_corpus(str(tmp_path / spec))


def test_invalid_utf8_names_the_file_and_byte(tmp_path):
    (tmp_path / "a.txt").write_text("fine\n", encoding="utf-8")
    (tmp_path / "b.txt").write_bytes(b"ok\n" * 1000 + b"caf\xe9\n")
    with pytest.raises(FractalFloodError, match=r"b\.txt .*at byte 3003"):
        open_corpus(tmp_path).read_text()


# ---------------------------------------------------------------- tokenizer from a stream


def test_tokenizer_trained_from_streamed_lines_equals_the_one_from_the_string(corpus_dir, small_text):
    from_text = HierarchicalTokenizer.train(small_text, 128, 192)
    from_stream = HierarchicalTokenizer.train(open_corpus(corpus_dir).lines(), 128, 192)
    assert from_stream == from_text


def test_tokenizer_refuses_a_one_shot_iterator(small_text):
    with pytest.raises(ValueError, match="one-shot"):
        HierarchicalTokenizer.train(iter(small_text.splitlines(keepends=True)), 128, 192)


def test_tokenizer_merges_from_a_sample_still_encode_the_whole_corpus(tmp_path, small_text):
    text = small_text + "Zo\u00eb and Chlo\u00eb\n"  # characters only after the sample
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    c = open_corpus(tmp_path / "t.txt")
    tok = HierarchicalTokenizer.train(c.lines(max_chars=10_000), 128, 192, alphabet=c.alphabet())
    assert "\u00eb" in tok.alphabet
    assert tok.decode(tok.encode(text)) == text


# ---------------------------------------------------------------- shards


def test_shards_round_trip_to_the_tokenizer_ids_exactly(corpus_dir, small_text, tiny_tokenizer, tmp_path):
    shards = _build(open_corpus(corpus_dir), tiny_tokenizer, tmp_path)
    roots, chunks = shards["roots"], shards["chunks"]
    assert len(list((tmp_path / "cache").glob("roots-*.npy"))) > 3  # several files
    assert roots.to_tensor().tolist() == tiny_tokenizer.encode(small_text)
    assert chunks.to_tensor().tolist() == tiny_tokenizer.encode_chunks(small_text)
    assert tiny_tokenizer.decode(roots.to_tensor().tolist()) == small_text
    index = json.loads((tmp_path / "cache" / INDEX_FILE).read_text())
    assert index["chars"] == len(small_text) and index["levels"]["roots"]["dtype"] == "uint16"


def test_windows_and_heldout_split_from_shards_equal_the_in_memory_ones(corpus_dir, small_text, tiny_tokenizer,
                                                                      tmp_path):
    """The memory-mapped path against the plain tensor path."""
    ids = torch.tensor(tiny_tokenizer.encode(small_text))
    sharded = _build(open_corpus(corpus_dir), tiny_tokenizer, tmp_path)["roots"]
    mem, mapped = TokenStream.split(ids), TokenStream.split(sharded)
    assert isinstance(mapped.train, ShardedIds)
    assert torch.equal(mapped.train.to_tensor(), mem.train) and torch.equal(mapped.val.to_tensor(), mem.val)
    for seed in range(3):
        x0, y0 = lm_batch(mem.train, 64, 64, torch.Generator().manual_seed(seed))
        x1, y1 = lm_batch(mapped.train, 64, 64, torch.Generator().manual_seed(seed))
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
    every = torch.arange(len(ids))
    assert torch.equal(sharded[every], ids)  # including windows that cross shard files
    assert sharded[SHARD_TOKENS] == int(ids[SHARD_TOKENS])
    lengths = torch.tensor([len(tiny_tokenizer.root_text(i)) for i in range(tiny_tokenizer.num_roots)])
    assert token_chars(mapped.val, lengths) == len(tiny_tokenizer.decode(mem.val.tolist()))
    from fractal_flood.models.causal_lm import CausalLM
    from fractal_flood.models.config import CausalLMConfig
    torch.manual_seed(0)
    lm = CausalLM(CausalLMConfig(vocab_size=tiny_tokenizer.num_roots, n_layers=1, d_model=32, n_heads=2, context=32))
    assert heldout_loss(lm, mapped.val, "cpu") == pytest.approx(heldout_loss(lm, mem.val, "cpu"), abs=1e-6)
    with pytest.raises(IndexError):
        sharded[torch.tensor([len(ids)])]


def test_shard_cache_is_reused_and_rebuilt_when_the_corpus_or_tokenizer_changes(corpus_dir, tiny_tokenizer,
                                                                              tmp_path, small_text):
    corpus = open_corpus(corpus_dir)
    logs = []
    _build(corpus, tiny_tokenizer, tmp_path, logs)
    index = tmp_path / "cache" / INDEX_FILE
    stamp = index.stat().st_mtime_ns
    _build(corpus, tiny_tokenizer, tmp_path, logs)
    assert "reusing" in logs[-1] and index.stat().st_mtime_ns == stamp

    (corpus_dir / "d.txt").write_text("To be, or not to be\n", encoding="utf-8")  # the corpus changed
    shards = _build(open_corpus(corpus_dir), tiny_tokenizer, tmp_path, logs)
    assert "tokenized" in logs[-1]
    assert tiny_tokenizer.decode(shards["roots"].to_tensor().tolist()).endswith("not to be\n")

    other = HierarchicalTokenizer.train(small_text, 100, 150)  # the tokenizer changed
    other.save(tmp_path / "tokenizer.json")
    shards = _build(open_corpus(corpus_dir), other, tmp_path, logs)
    assert "tokenized" in logs[-1] and int(shards["roots"].to_tensor().max()) < 150


def test_a_damaged_cache_is_rebuilt_not_trusted(corpus_dir, tiny_tokenizer, tmp_path):
    corpus = open_corpus(corpus_dir)
    want = _build(corpus, tiny_tokenizer, tmp_path)["roots"].to_tensor()
    shard = sorted((tmp_path / "cache").glob("roots-*.npy"))[1]
    shard.write_bytes(shard.read_bytes()[:200])  # truncated
    assert open_shards(tmp_path / "cache") is None
    logs = []
    assert torch.equal(_build(corpus, tiny_tokenizer, tmp_path, logs)["roots"].to_tensor(), want)
    assert "tokenized" in logs[-1]
    # an object array would need pickle to load: refused, so rebuilt
    with open(shard, "wb") as f:
        np.save(f, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    assert open_shards(tmp_path / "cache") is None


def test_cache_sits_beside_the_model_directory(tmp_path):
    assert cache_dir_for(tmp_path / "runs" / "mine") == (tmp_path / "runs" / "mine.shards").resolve()
    assert cache_dir_for(str(tmp_path / "runs" / "mine") + os.sep).name == "mine.shards"


def test_training_reads_the_shards_of_a_directory_corpus(corpus_dir, tmp_path):
    from fractal_flood.train.run import TrainOptions, run_training
    out = tmp_path / "model"
    logs = []
    res = run_training(TrainOptions(out_dir=out, preset="tiny", corpus=str(corpus_dir), parts=("manager",),
                                    lm_steps=4, eval_every=4, save_every=4, progress=False, log=logs.append))
    assert res["manager"]["val_loss"] < 6.0
    assert any("tokenized" in line for line in logs)
    assert (tmp_path / "model.shards" / INDEX_FILE).is_file()
    logs.clear()
    run_training(TrainOptions(out_dir=out, preset="tiny", corpus=str(corpus_dir), parts=("manager",),
                              lm_steps=4, eval_every=4, save_every=4, progress=False, log=logs.append,
                              resume=True))  # the directory holds a trained manager now
    assert any("shards: reusing" in line for line in logs)


def test_a_full_disk_while_building_leaves_no_shards_and_names_the_file(corpus_dir, tiny_tokenizer, tmp_path,
                                                                       monkeypatch):
    import errno

    from fractal_flood.fileio import WriteError
    real = os.fsync

    def fsync(fd):
        if "chunks-" in os.readlink(f"/proc/self/fd/{fd}"):  # the roots' first shard is written, then full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(WriteError, match=r"cannot write .*/cache/chunks-00000\.npy: No space left on device"):
        _build(open_corpus(str(corpus_dir)), tiny_tokenizer, tmp_path)
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == []  # no index, no shard, no temp
    shards = _build(open_corpus(str(corpus_dir)), tiny_tokenizer, tmp_path)  # the next run builds it
    assert len(shards["roots"]) > 0
