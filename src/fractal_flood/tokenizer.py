"""The three-level token hierarchy: characters -> chunks -> roots.

Level names follow the decoders: level 0 expands a *root* into chunks, level 1 expands a
*chunk* into characters. Both vocabularies are byte-pair encodings trained with Hugging Face
``tokenizers`` (Rust, seconds on a million characters): chunks are BPE merges over
characters, at most ``max_chunk_chars`` long; roots are BPE merges over chunks, at most
``max_root_chunks`` long. For the root level every chunk id is written as one private-use
code point, so the same BPE trainer (and its ``max_token_length``) bounds roots in chunks.

Lines are the BPE "words": no token crosses a newline, and every token of a line is kept,
so ``decode(encode(text)) == text`` for any text over the alphabet.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
from tokenizers import Tokenizer, models, trainers

from .bpe_json import check_bpe_json
from .errors import TokenizerFileError, UnknownCharacterError
from .json_io import read_json

FORMAT_NAME = "fractal-flood-tokenizer"
FORMAT_VERSION = 1
# Chunk id i is the code point PUA_BASE + i at the root level (supplementary private use
# area A: 65,534 code points, so up to that many chunks).
PUA_BASE = 0xF0000
PUA_SIZE = 65534
MAX_FILE_BYTES = 64 << 20  # the default tokenizer is ~180 kB


def _chunk_char(chunk_id: int) -> str:
    return chr(PUA_BASE + chunk_id)


def _train_bpe(words: Iterable[str], vocab_size: int, max_len: int, alphabet: Sequence[str]) -> Tokenizer:
    if max_len == 1:
        # the trainer's max_token_length does not stop the first merges: a bound of 1 means
        # no merges at all, so ask for no more tokens than the alphabet
        vocab_size = len(alphabet)
    tok = Tokenizer(models.BPE())
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        max_token_length=max_len,
        initial_alphabet=list(alphabet),
        limit_alphabet=len(alphabet),
        min_frequency=0,
        show_progress=False,
    )
    tok.train_from_iterator(words, trainer)
    return tok


def _chunk_lines(chunk_bpe: Tokenizer, lines: Iterable[str], batch: int = 4096) -> Iterator[str]:
    """Each line as its chunk ids, one private-use character per chunk: the root level's words."""
    it = iter(lines)
    while piece := list(islice(it, batch)):
        for enc in chunk_bpe.encode_batch(piece):
            yield "".join(map(_chunk_char, enc.ids))


@dataclass(frozen=True)
class LevelSpec:
    """One expansion step of the hierarchy: a condition token -> up to ``max_len`` targets."""

    index: int  # 0 = root -> chunks, 1 = chunk -> chars, ...
    name: str
    num_conditions: int  # size of the parent vocabulary
    num_targets: int  # size of the child vocabulary; the pad target is id num_targets
    max_len: int

    @property
    def pad_id(self) -> int:
        return self.num_targets


class HierarchicalTokenizer:
    """Characters -> chunks -> roots, exact in both directions."""

    def __init__(self, alphabet: str, chunk_bpe: Tokenizer, root_bpe: Tokenizer,
                 max_chunk_chars: int, max_root_chunks: int):
        self._alphabet = alphabet
        self._char_index = {c: i for i, c in enumerate(alphabet)}
        self._chunk_bpe = chunk_bpe
        self._root_bpe = root_bpe
        self.max_chunk_chars = max_chunk_chars
        self.max_root_chunks = max_root_chunks

        chunk_vocab = chunk_bpe.get_vocab()
        self._chunks: list[str] = [""] * len(chunk_vocab)
        for s, i in chunk_vocab.items():
            self._chunks[i] = s
        root_vocab = root_bpe.get_vocab()
        self._roots: list[list[int]] = [[] for _ in range(len(root_vocab))]
        for s, i in root_vocab.items():
            self._roots[i] = [ord(c) - PUA_BASE for c in s]
        self._root_text = ["".join(self._chunks[c] for c in r) for r in self._roots]
        self._check_consistent()
        self._tables: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------ training
    @classmethod
    def train(cls, text: str | Iterable[str], num_chunks: int = 1024, num_roots: int = 2048,
              max_chunk_chars: int = 16, max_root_chunks: int = 4,
              alphabet: str = "") -> "HierarchicalTokenizer":
        """Learn both BPE levels from ``text``: a string, or its lines (line breaks kept) as
        an iterable that can be iterated more than once, e.g. :meth:`Corpus.lines`, which
        streams them from disk (read three times: characters, chunk merges, root merges).
        The alphabet is the set of the text's characters plus any in ``alphabet``, so merges
        learned on a sample of a corpus can still encode all of it."""
        if isinstance(text, str):
            lines = text.splitlines(keepends=True)
        else:
            if iter(text) is text:
                raise ValueError("train() reads the lines more than once: pass a str, a list or a "
                                 "re-iterable such as Corpus.lines(), not a one-shot iterator")
            lines = text
        chars: set[str] = set()
        for line in lines:
            chars.update(line)
        if not chars:
            raise ValueError("cannot train a tokenizer on empty text")
        chars.update(alphabet)
        if max_chunk_chars < 1 or max_root_chunks < 1:
            raise ValueError("max_chunk_chars and max_root_chunks must be >= 1")
        alphabet = "".join(sorted(chars))
        if num_chunks < len(alphabet):
            raise ValueError(f"num_chunks={num_chunks} is smaller than the alphabet ({len(alphabet)} characters)")
        if num_chunks > PUA_SIZE:
            raise ValueError(f"num_chunks={num_chunks} exceeds the supported maximum {PUA_SIZE}")
        chunk_bpe = _train_bpe(iter(lines), num_chunks, max_chunk_chars, alphabet)
        n_chunks = chunk_bpe.get_vocab_size()
        if num_roots < n_chunks:
            raise ValueError(f"num_roots={num_roots} is smaller than the chunk vocabulary ({n_chunks})")
        root_bpe = _train_bpe(_chunk_lines(chunk_bpe, lines), num_roots, max_root_chunks,
                              [_chunk_char(i) for i in range(n_chunks)])
        return cls(alphabet, chunk_bpe, root_bpe, max_chunk_chars, max_root_chunks)

    # ------------------------------------------------------------------ sizes
    @property
    def alphabet(self) -> str:
        return self._alphabet

    @property
    def num_chars(self) -> int:
        return len(self._alphabet)

    @property
    def num_chunks(self) -> int:
        return len(self._chunks)

    @property
    def num_roots(self) -> int:
        return len(self._roots)

    @property
    def levels(self) -> list[LevelSpec]:
        """The expansion steps, top (roots) to bottom (characters)."""
        return [
            LevelSpec(0, "root->chunks", self.num_roots, self.num_chunks, self.max_root_chunks),
            LevelSpec(1, "chunk->chars", self.num_chunks, self.num_chars, self.max_chunk_chars),
        ]

    # ------------------------------------------------------------------ encode / decode
    def check_text(self, text: str) -> None:
        """Raise :class:`UnknownCharacterError` at the first character outside the alphabet."""
        unknown = set(text).difference(self._char_index)
        if unknown:
            pos = next(i for i, c in enumerate(text) if c in unknown)
            raise UnknownCharacterError(text[pos], pos)

    def encode_chunks(self, text: str) -> list[int]:
        """Text -> chunk ids (level-1 tokens)."""
        self.check_text(text)
        lines = text.splitlines(keepends=True)
        return [i for enc in self._chunk_bpe.encode_batch(lines) for i in enc.ids]

    def encode(self, text: str) -> list[int]:
        """Text -> root ids (level-0 tokens)."""
        self.check_text(text)
        lines = text.splitlines(keepends=True)
        chunk_lines = ["".join(map(_chunk_char, e.ids)) for e in self._chunk_bpe.encode_batch(lines)]
        return [i for enc in self._root_bpe.encode_batch(chunk_lines) for i in enc.ids]

    def expand(self, root_id: int) -> list[int]:
        """Root id -> its chunk ids."""
        self._check_id(root_id, self.num_roots, "root")
        return list(self._roots[root_id])

    def spell(self, chunk_id: int) -> str:
        """Chunk id -> its characters."""
        self._check_id(chunk_id, self.num_chunks, "chunk")
        return self._chunks[chunk_id]

    def root_text(self, root_id: int) -> str:
        self._check_id(root_id, self.num_roots, "root")
        return self._root_text[root_id]

    def decode(self, root_ids: Iterable[int]) -> str:
        """Root ids -> text; the exact inverse of :meth:`encode`."""
        out = []
        for r in root_ids:
            r = int(r)
            self._check_id(r, self.num_roots, "root")
            out.append(self._root_text[r])
        return "".join(out)

    def decode_chunks(self, chunk_ids: Iterable[int]) -> str:
        out = []
        for c in chunk_ids:
            c = int(c)
            self._check_id(c, self.num_chunks, "chunk")
            out.append(self._chunks[c])
        return "".join(out)

    def char_ids(self, text: str) -> list[int]:
        """Text -> character ids (level-2 tokens)."""
        self.check_text(text)
        return [self._char_index[c] for c in text]

    def chars_to_text(self, char_ids: Iterable[int]) -> str:
        out = []
        for i in char_ids:
            i = int(i)
            self._check_id(i, self.num_chars, "character")
            out.append(self._alphabet[i])
        return "".join(out)

    @staticmethod
    def _check_id(i: int, n: int, what: str) -> None:
        if not 0 <= i < n:
            raise ValueError(f"{what} id {i} is out of range [0, {n})")

    # ------------------------------------------------------------------ tensors
    def expansion_table(self, level: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(targets, lengths)`` for one level: targets is ``(num_conditions, max_len)``
        int64, padded with the level's pad id; lengths is ``(num_conditions,)``."""
        if not 0 <= level < len(self.levels):
            raise ValueError(f"level {level} does not exist (levels: 0..{len(self.levels) - 1})")
        if level not in self._tables:
            spec = self.levels[level]
            if level == 0:
                rows = self._roots
            else:
                rows = [[self._char_index[c] for c in s] for s in self._chunks]
            table = torch.full((spec.num_conditions, spec.max_len), spec.pad_id, dtype=torch.long)
            lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
            for i, r in enumerate(rows):
                table[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            self._tables[level] = (table, lengths)
        return self._tables[level]

    # ------------------------------------------------------------------ statistics
    def stats(self, text: str) -> dict:
        """Hierarchy statistics of ``text`` (chars per chunk, chunks per root, ...)."""
        n_chars = len(text)
        n_chunks = len(self.encode_chunks(text))
        n_roots = len(self.encode(text))
        return {
            "chars": n_chars,
            "chunks": n_chunks,
            "roots": n_roots,
            "alphabet_size": self.num_chars,
            "chunk_vocab": self.num_chunks,
            "root_vocab": self.num_roots,
            "chars_per_chunk": n_chars / max(n_chunks, 1),
            "chunks_per_root": n_chunks / max(n_roots, 1),
            "chars_per_root": n_chars / max(n_roots, 1),
            "max_chunk_chars": max(len(s) for s in self._chunks),
            "max_root_chunks": max(len(r) for r in self._roots),
        }

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "alphabet": self._alphabet,
            "max_chunk_chars": self.max_chunk_chars,
            "max_root_chunks": self.max_root_chunks,
            "chunks": self._chunks,
            "roots": self._roots,
            "chunk_bpe": json.loads(self._chunk_bpe.to_str()),
            "root_bpe": json.loads(self._root_bpe.to_str()),
        }

    def save(self, path: str | Path) -> None:
        """Write one human-readable JSON file, atomically (temporary file, then rename)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")  # the name checkpoint cleans up
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(self.to_dict(), f, ensure_ascii=False, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: str | Path) -> "HierarchicalTokenizer":
        path = Path(path)
        data = read_json(path, "tokenizer file", MAX_FILE_BYTES, TokenizerFileError)
        try:
            return cls.from_dict(data)
        except TokenizerFileError as e:
            raise TokenizerFileError(f"tokenizer file {path}: {e}") from None

    @classmethod
    def from_dict(cls, data: dict) -> "HierarchicalTokenizer":
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise TokenizerFileError("not a Fractal Flood tokenizer (missing or wrong 'format')")
        if data.get("version") != FORMAT_VERSION:
            raise TokenizerFileError(f"unsupported tokenizer version {data.get('version')!r} (expected {FORMAT_VERSION})")
        _check_fields(data)
        check_bpe_json(data.get("chunk_bpe"), "chunk_bpe")
        check_bpe_json(data.get("root_bpe"), "root_bpe")
        try:
            chunk_bpe = Tokenizer.from_str(json.dumps(data["chunk_bpe"]))
            root_bpe = Tokenizer.from_str(json.dumps(data["root_bpe"]))
            tok = cls(str(data["alphabet"]), chunk_bpe, root_bpe,
                      int(data["max_chunk_chars"]), int(data["max_root_chunks"]))
        except TokenizerFileError:
            raise
        except Exception as e:  # a KeyError, a malformed BPE model, ...
            raise TokenizerFileError(f"corrupt tokenizer data ({type(e).__name__}: {e})") from None
        if tok._chunks != data.get("chunks") or tok._roots != data.get("roots"):
            raise TokenizerFileError("the 'chunks'/'roots' tables disagree with the BPE models")
        return tok

    def _check_consistent(self) -> None:
        if len(set(self._alphabet)) != len(self._alphabet) or not self._alphabet:
            raise TokenizerFileError("alphabet is empty or has repeated characters")
        for i, s in enumerate(self._chunks):
            if not s or len(s) > self.max_chunk_chars or any(c not in self._char_index for c in s):
                raise TokenizerFileError(f"chunk {i} ({s!r}) is empty, too long or outside the alphabet")
        for i, r in enumerate(self._roots):
            if not r or len(r) > self.max_root_chunks or any(not 0 <= c < len(self._chunks) for c in r):
                raise TokenizerFileError(f"root {i} is empty, too long or names an unknown chunk")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HierarchicalTokenizer) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return (f"HierarchicalTokenizer(chars={self.num_chars}, chunks={self.num_chunks}, "
                f"roots={self.num_roots}, max_chunk_chars={self.max_chunk_chars}, "
                f"max_root_chunks={self.max_root_chunks})")


MAX_EXPANSION = 1024  # longest chunk in characters, longest root in chunks


def _check_fields(data: dict) -> None:
    """The plain fields of a tokenizer file, before anything is built from them."""
    alphabet = data.get("alphabet")
    if not isinstance(alphabet, str) or not 0 < len(alphabet) <= PUA_SIZE:
        raise TokenizerFileError(f"'alphabet' is not a string of 1 to {PUA_SIZE} characters")
    for key in ("max_chunk_chars", "max_root_chunks"):
        v = data.get(key)
        if type(v) is not int or not 1 <= v <= MAX_EXPANSION:
            raise TokenizerFileError(f"'{key}' is {v!r}; expected an integer in 1 .. {MAX_EXPANSION}")
    if not isinstance(data.get("chunks"), list) or not isinstance(data.get("roots"), list):
        raise TokenizerFileError("'chunks' and 'roots' must be lists")
