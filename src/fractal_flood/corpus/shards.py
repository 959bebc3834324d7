"""A corpus tokenized once into memory-mapped shards of ids, so that the language models
train on corpora larger than memory.

The cache is a directory of ``.npy`` files (``roots-00000.npy``, ``chunks-00000.npy``, ...:
uint16 ids, uint32 for a vocabulary above 65,535) and ``index.json``, which names them and
records what they were built from: the corpus files' paths, sizes and modification times
and the SHA-256 of ``tokenizer.json``. A later run with the same corpus and tokenizer maps
the shards and reads nothing else; any change rebuilds them. The index is written last
(atomically), so a build that is killed leaves no index and is simply redone. Nothing is
loaded with pickle (``np.load(..., allow_pickle=False)``).

:class:`ShardedIds` is a read-only sequence over the shards: slicing gives a view, and
indexing with an integer array (a batch of windows) gathers only those ids.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from ..errors import FractalFloodError, UnknownCharacterError
from ..fileio import WriteError, atomic_write, file_sha256
from .reader import Corpus

FORMAT = "fractal-flood-shards"
VERSION = 1
INDEX_FILE = "index.json"
LEVELS = ("roots", "chunks")  # the manager's tokens, the AR peer's tokens
SHARD_TOKENS = 1 << 22  # ids per shard file: bounds the memory of a build (8 MiB as uint16)


class ShardedIds:
    """Token ids spread over several 1-D arrays (memory maps), seen as one sequence."""

    def __init__(self, arrays: list[np.ndarray], start: int = 0, stop: int | None = None):
        self._arrays = arrays
        self._offsets = np.cumsum([0] + [len(a) for a in arrays])  # (n_shards + 1,)
        total = int(self._offsets[-1])
        self.start = start
        self.stop = total if stop is None else stop
        if not 0 <= self.start <= self.stop <= total:
            raise ValueError(f"view [{start}, {stop}) is outside the {total} ids")

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, key):
        """A slice (step 1) -> a view; an int -> an int; an integer tensor or array of any
        shape -> a LongTensor of that shape with the ids at those positions."""
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise ValueError("ShardedIds slices must be contiguous (step 1)")
            return ShardedIds(self._arrays, self.start + start, self.start + max(start, stop))
        if isinstance(key, torch.Tensor):
            key = key.cpu().numpy()
        idx = np.asarray(key, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} ids")
        pos = idx + self.start
        shard = np.searchsorted(self._offsets, pos, side="right") - 1  # which file holds each
        out = np.empty(pos.shape, dtype=np.int64)
        for s in np.unique(shard):
            m = shard == s
            out[m] = self._arrays[s][pos[m] - self._offsets[s]]
        return int(out) if idx.ndim == 0 else torch.from_numpy(out)

    def pieces(self, size: int = 1 << 20) -> Iterator[np.ndarray]:
        """The ids in order, as int64 arrays of at most ``size``: bounded memory."""
        for a in range(0, len(self), size):
            yield self[np.arange(a, min(a + size, len(self)))].numpy()

    def to_tensor(self) -> torch.Tensor:
        """All ids in memory (for small corpora and tests)."""
        return self[np.arange(len(self))]


def token_chars(ids, lengths: torch.Tensor) -> int:
    """Characters spelled by ``ids`` (a tensor or :class:`ShardedIds`), given every token's
    length: what ``len(decode(ids))`` would say, without decoding (or holding) the text."""
    if isinstance(ids, torch.Tensor):
        return int(lengths[ids].sum())
    table = lengths.numpy()
    return int(sum(int(table[p].sum()) for p in ids.pieces()))


def cache_dir_for(model_dir: str | Path) -> Path:
    """Beside the model directory (``runs/mine`` -> ``runs/mine.shards``), so the cache is
    never shipped or copied with the model."""
    model_dir = Path(model_dir).resolve()
    return model_dir.with_name(model_dir.name + ".shards")


def load_or_build(corpus: Corpus, tokenizer, tokenizer_file: str | Path, cache_dir: str | Path,
                  progress: bool = True, log: Callable[[str], None] = print,
                  shard_tokens: int = SHARD_TOKENS) -> dict[str, ShardedIds]:
    """The corpus as ``{"roots": ShardedIds, "chunks": ShardedIds}``: mapped from the cache
    when it matches the corpus and the tokenizer, else tokenized into it first."""
    cache_dir = Path(cache_dir)
    key = {"corpus": corpus.fingerprint(), "tokenizer_sha256": file_sha256(tokenizer_file)}
    shards = open_shards(cache_dir, key)
    if shards is not None:
        log(f"shards: reusing {cache_dir} ({len(shards['roots']):,} roots, {len(shards['chunks']):,} chunks)")
        return shards
    build(corpus, tokenizer, key, cache_dir, progress, shard_tokens)
    shards = open_shards(cache_dir, key)
    if shards is None:  # only if the files changed under us while building
        raise FractalFloodError(f"shard cache {cache_dir} could not be read back after building it")
    log(f"shards: tokenized {corpus.spec} into {cache_dir} "
        f"({len(shards['roots']):,} roots, {len(shards['chunks']):,} chunks)")
    return shards


def open_shards(cache_dir: Path, key: dict | None = None) -> dict[str, ShardedIds] | None:
    """Map the cache's shards; ``None`` when it is missing, incomplete, corrupt or built from
    something other than ``key`` (then it is rebuilt, never trusted)."""
    try:
        index = json.loads((Path(cache_dir) / INDEX_FILE).read_text(encoding="utf-8"))
        if index.get("format") != FORMAT or index.get("version") != VERSION:
            return None
        if key is not None and index.get("key") != key:
            return None
        out = {}
        for level in LEVELS:
            meta = index["levels"][level]
            arrays = []
            for shard in meta["shards"]:
                a = np.load(Path(cache_dir) / shard["file"], mmap_mode="r", allow_pickle=False)
                if a.ndim != 1 or a.dtype != np.dtype(meta["dtype"]) or len(a) != shard["tokens"]:
                    return None
                arrays.append(a)
            out[level] = ShardedIds(arrays)
        return out
    except (OSError, ValueError, KeyError, TypeError):
        return None


def build(corpus: Corpus, tokenizer, key: dict, cache_dir: Path, progress: bool = True,
          shard_tokens: int = SHARD_TOKENS) -> None:
    """Tokenize the corpus block by block (whole lines, so the ids equal those of the whole
    text) into shards of at most ``shard_tokens`` ids, then write the index."""
    cache_dir = Path(cache_dir)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        (cache_dir / INDEX_FILE).unlink(missing_ok=True)  # invalid until the new index is written
        _remove_shards(cache_dir)
    except OSError as e:
        raise WriteError(cache_dir, e) from None
    try:
        _build(corpus, tokenizer, key, cache_dir, progress, shard_tokens)
    except BaseException:  # a full disk, a Ctrl-C: no index, and the space the shards took is freed
        _remove_shards(cache_dir, quiet=True)
        raise


def _remove_shards(cache_dir: Path, quiet: bool = False) -> None:
    for old in cache_dir.glob("*.npy"):
        try:
            old.unlink()
        except OSError:
            if not quiet:
                raise


def _build(corpus, tokenizer, key, cache_dir: Path, progress: bool, shard_tokens: int) -> None:
    writers = {
        "roots": _ShardWriter(cache_dir, "roots", tokenizer.num_roots, shard_tokens),
        "chunks": _ShardWriter(cache_dir, "chunks", tokenizer.num_chunks, shard_tokens),
    }
    chars = 0
    bar = tqdm(total=corpus.num_bytes, desc="tokenizing", unit="B", unit_scale=True,
               disable=not progress, dynamic_ncols=True)
    done = 0
    for block, read in corpus.blocks_with_bytes():
        try:
            writers["roots"].add(tokenizer.encode(block))
            writers["chunks"].add(tokenizer.encode_chunks(block))
        except UnknownCharacterError as e:
            raise FractalFloodError(
                f"corpus {corpus.spec}: unknown character {e.char!r} (U+{ord(e.char):04X}) at character "
                f"{chars + e.position}: it is not in the alphabet of the model directory's tokenizer") from None
        chars += len(block)
        bar.update(read - done)
        done = read
    bar.close()
    index = {"format": FORMAT, "version": VERSION, "key": key, "chars": chars,
             "levels": {name: w.finish() for name, w in writers.items()}}
    atomic_write(cache_dir / INDEX_FILE,
                 lambda p: Path(p).write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8"))


class _ShardWriter:
    """Collects one level's ids and writes a shard file whenever ``shard_tokens`` are due."""

    def __init__(self, cache_dir: Path, level: str, vocab: int, shard_tokens: int):
        self.cache_dir, self.level, self.shard_tokens = cache_dir, level, shard_tokens
        self.dtype = np.dtype(np.uint16 if vocab <= np.iinfo(np.uint16).max + 1 else np.uint32)
        self.pending: list[np.ndarray] = []
        self.pending_len = 0
        self.shards: list[dict] = []

    def add(self, ids: list[int]) -> None:
        self.pending.append(np.asarray(ids, dtype=self.dtype))
        self.pending_len += len(ids)
        while self.pending_len >= self.shard_tokens:
            ids = np.concatenate(self.pending)
            self._write(ids[:self.shard_tokens])
            self.pending = [ids[self.shard_tokens:]]
            self.pending_len = len(self.pending[0])

    def finish(self) -> dict:
        if self.pending_len or not self.shards:
            self._write(np.concatenate(self.pending) if self.pending else np.zeros(0, self.dtype))
        self.pending, self.pending_len = [], 0
        return {"dtype": self.dtype.name, "tokens": sum(s["tokens"] for s in self.shards),
                "shards": self.shards}

    def _write(self, ids: np.ndarray) -> None:
        name = f"{self.level}-{len(self.shards):05d}.npy"

        def write(tmp):
            with open(tmp, "wb") as f:  # np.save on a path would append ".npy" to the temp name
                np.save(f, ids, allow_pickle=False)
        atomic_write(self.cache_dir / name, write)
        self.shards.append({"file": name, "tokens": int(len(ids))})
