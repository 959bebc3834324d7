"""The token hierarchy: characters -> any number of BPE levels, exact in both directions.

Every level above the characters is a byte-pair encoding trained with Hugging Face
``tokenizers`` (Rust, seconds on a million characters) over the level below it: the bottom
one merges characters, each one above merges tokens of the level below, written as one
private-use code point each, so the same BPE trainer (and its ``max_token_length``) bounds
how many children a token has. Levels are listed top first, as in :mod:`levels`; the
default is roots (2,048, at most 4 chunks) over chunks (1,024, at most 16 characters) over
characters.

Two levels keep their names at any depth, for the manager and the AR peer: *roots* are the
top level (``encode``, ``decode``, ``expand``, ``root_text``), *chunks* the level spelled
directly in characters (``encode_chunks``, ``decode_chunks``, ``spell``). ``encode_level``,
``decode_level``, ``children`` and ``token_text`` reach every level.

Lines are the BPE "words": no token crosses a newline, and every token of a line is kept,
so ``decode(encode(text)) == text`` for any text over the alphabet. A line longer than
``WORD_CHARS`` characters is cut into words of at most that many (after a space where
there is one, ``bpe_words``), so training and encoding stay linear in the text's length
even on a corpus with no line breaks at all.
"""

from __future__ import annotations

import json
import os
import time
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
from tokenizers import Tokenizer, models, trainers

from ..errors import LevelSpecError, TokenizerFileError, UnknownCharacterError
from ..fileio import read_json
from .bpe_json import check_bpe_json
from .level_specs import BOTTOM_NAME, check_name, check_specs, default_specs, format_specs
from .levels import Level

FORMAT_NAME = "fractal-flood-tokenizer"
# 2: a list of levels of any depth. 1 (still read): exactly roots over chunks.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
# Token i of a level is the code point PUA_BASE + i in the words of the level above it
# (supplementary private use area A: 65,534 code points). Each level is its own BPE over
# the one below, so the budget is per level: every level but the top may have that many.
PUA_BASE = 0xF0000
PUA_SIZE = 65534
MAX_FILE_BYTES = 64 << 20  # the default tokenizer is ~180 kB
# The longest BPE word: a BPE trainer's and encoder's work per word grows faster than its
# length, so one 1 MB line would take minutes; no token is this long (characters per chunk
# times chunks per root stays far below it). Lines of the shipped corpus are shorter.
WORD_CHARS = 256


def _cut(line: str) -> Iterator[str]:
    """One line -> its words: the line itself, or pieces of at most ``WORD_CHARS``
    characters, each ending after the last space of its second half where there is one."""
    start, n = 0, len(line)
    while n - start > WORD_CHARS:
        end = start + WORD_CHARS
        space = line.rfind(" ", start + WORD_CHARS // 2, end)
        end = space + 1 if space >= 0 else end
        yield line[start:end]
        start = end
    yield line[start:]


def bpe_words(lines: Iterable[str]) -> Iterator[str]:
    """Lines (line breaks kept) -> the BPE words: every line, long ones cut (``_cut``);
    ``"".join(bpe_words(lines)) == "".join(lines)``."""
    for line in lines:
        if len(line) <= WORD_CHARS:
            yield line
        else:
            yield from _cut(line)


class _Words:
    """The BPE words of a re-iterable of lines, itself re-iterable (read once per level)."""

    def __init__(self, lines: Iterable[str]):
        self.lines = lines

    def __iter__(self) -> Iterator[str]:
        return bpe_words(self.lines)


def _pua_word(ids: Sequence[int]) -> str:
    return "".join(chr(PUA_BASE + i) for i in ids)


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


def _encoded_lines(stack: list, lines: Iterable[str], batch: int = 4096) -> Iterator[str]:
    """Each line encoded through the BPE levels of ``stack`` (bottom first), every token as one
    private-use character: the words of the next level up. Streams ``batch`` lines at a time."""
    it = iter(lines)
    while piece := list(islice(it, batch)):
        for bpe in stack:
            piece = [_pua_word(e.ids) for e in bpe.encode_batch(piece)]
        yield from piece


class HierarchicalTokenizer:
    """Characters -> BPE levels, top first; exact in both directions."""

    def __init__(self, alphabet: str, names: Sequence[str], bpes: Sequence[Tokenizer],
                 max_children: Sequence[int]):
        if not len(names) == len(bpes) == len(max_children) >= 1:
            raise TokenizerFileError("a tokenizer needs one name, BPE model and bound per level, "
                                     "and at least one level")
        if not isinstance(alphabet, str) or not alphabet or len(set(alphabet)) != len(alphabet):
            raise TokenizerFileError("alphabet is empty or has repeated characters")
        for n in names:
            check_name(n)
        if len(set(names)) != len(names):
            raise TokenizerFileError(f"level names repeat: {', '.join(names)}")
        self._alphabet = alphabet
        self._char_index = {c: i for i, c in enumerate(alphabet)}
        self._names = list(names)
        self._bpes = list(bpes)
        self._max = [int(k) for k in max_children]
        d = len(self._bpes)
        # per level: each token's ids at the level below, and its text
        self._children: list[list[list[int]]] = [[] for _ in range(d)]
        self._text: list[list[str]] = [[] for _ in range(d)]
        below = len(alphabet)
        for i in reversed(range(d)):
            tokens = self._vocab_strings(i)
            if i == d - 1:
                children = [[self._char_index.get(c, -1) for c in s] for s in tokens]
            else:
                children = [[ord(c) - PUA_BASE for c in s] for s in tokens]
            self._check_level(i, children, below)
            self._children[i] = children
            self._text[i] = tokens if i == d - 1 else [
                "".join(self._text[i + 1][c] for c in r) for r in children]
            below = len(children)
        self._tables: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _vocab_strings(self, i: int) -> list[str]:
        vocab = self._bpes[i].get_vocab()
        out: list = [None] * len(vocab)
        for s, j in vocab.items():
            if not 0 <= j < len(out) or out[j] is not None:
                raise TokenizerFileError(f"level {self._names[i]!r}: BPE ids are not 0..{len(out) - 1}")
            out[j] = s
        return out

    def _check_level(self, i: int, children: list[list[int]], below: int) -> None:
        what = "a character outside the alphabet" if i == len(self._bpes) - 1 else \
            f"an unknown {self._names[i + 1]!r} token"
        for j, r in enumerate(children):
            if not r or len(r) > self._max[i] or any(not 0 <= c < below for c in r):
                raise TokenizerFileError(f"level {self._names[i]!r}: token {j} is empty, has more than "
                                         f"{self._max[i]} children or names {what}")

    # ------------------------------------------------------------------ training
    @classmethod
    def train(cls, text: str | Iterable[str], num_chunks: int = 1024, num_roots: int = 2048,
              max_chunk_chars: int = 16, max_root_chunks: int = 4, *,
              levels=None, alphabet: str = "", progress=None) -> "HierarchicalTokenizer":
        """Learn the hierarchy from ``text``: a string, or its lines (line breaks kept) as an
        iterable that can be iterated more than once, e.g. :meth:`Corpus.lines`, which streams
        them from disk (read once for the characters and once per BPE level). The alphabet
        (the characters level) is the set of the text's characters plus any in ``alphabet``,
        so merges learned on a sample of a corpus can still encode all of it.

        ``levels``: the BPE levels above the characters, top first, as specs (``Level``,
        ``{name, size, max_children}`` dicts or ``(name, size, max_children)`` tuples, see
        ``level_specs``); ``size`` is the most tokens the level may learn. When given it
        replaces the four size arguments, which are the shorthand for
        ``[("roots", num_roots, max_root_chunks), ("chunks", num_chunks, max_chunk_chars)]``.
        Raises ``LevelSpecError`` (a ValueError) for specs that do not fit the text.
        ``progress``: called with one line as each level starts and ends (training a level
        reads the whole text: seconds to minutes on a large corpus).
        """
        specs = check_specs(levels) if levels is not None else \
            default_specs(num_chunks, num_roots, max_chunk_chars, max_root_chunks)
        if isinstance(text, str):
            lines = list(bpe_words(text.splitlines(keepends=True)))
        else:
            if iter(text) is text:
                raise ValueError("train() reads the lines more than once: pass a str, a list or a "
                                 "re-iterable such as Corpus.lines(), not a one-shot iterator")
            lines = _Words(text)
        chars: set[str] = set()
        for line in lines:
            chars.update(line)
        if not chars:
            raise ValueError("cannot train a tokenizer on empty text")
        chars.update(alphabet)
        for lv in specs[1:]:  # the top level's ids are never written as code points
            if lv.size > PUA_SIZE:
                raise LevelSpecError(f"level {lv.name!r}: size {lv.size} exceeds {PUA_SIZE}, the most a "
                                     "level below the top may have")
        alphabet = "".join(sorted(chars))
        if specs[-1].size < len(alphabet):  # the levels above are no smaller (check_specs)
            raise LevelSpecError(f"level {specs[-1].name!r}: size {specs[-1].size} is smaller than the "
                                 f"alphabet ({len(alphabet)} characters)")
        symbols = list(alphabet)
        bpes: list = [None] * len(specs)
        below: list = []  # the BPE levels trained so far, bottom first
        for i in reversed(range(len(specs))):
            lv = specs[i]
            words = _encoded_lines(below, lines) if below else iter(lines)
            step = f"tokenizer level {lv.name!r} ({len(specs) - i} of {len(specs)})"
            if progress is not None:
                progress(f"{step}: learning up to {lv.size:,} tokens of at most {lv.max_children} ...")
            t0 = time.perf_counter()
            bpe = bpes[i] = _train_bpe(words, lv.size, lv.max_children, symbols)
            if progress is not None:
                progress(f"{step}: {bpe.get_vocab_size():,} tokens in {time.perf_counter() - t0:.1f}s")
            below.append(bpe)
            symbols = [chr(PUA_BASE + j) for j in range(bpe.get_vocab_size())]
        return cls(alphabet, [lv.name for lv in specs], bpes, [lv.max_children for lv in specs])

    # ------------------------------------------------------------------ sizes
    @property
    def alphabet(self) -> str:
        return self._alphabet

    @property
    def depth(self) -> int:
        """Expanding levels: every level but the characters."""
        return len(self._bpes)

    @property
    def levels(self) -> list[Level]:
        """The hierarchy, top (roots) to bottom (characters): see ``levels.Level``."""
        return [Level(n, len(c), k) for n, c, k in zip(self._names, self._children, self._max)] + [
            Level(BOTTOM_NAME, self.num_chars, 0)]

    @property
    def num_chars(self) -> int:
        return len(self._alphabet)

    @property
    def num_roots(self) -> int:
        return len(self._children[0])

    @property
    def num_chunks(self) -> int:
        return len(self._children[-1])

    @property
    def max_root_chunks(self) -> int:
        """Most children of a root (tokens of level 1: chunks in the two-level default)."""
        return self._max[0]

    @property
    def max_chunk_chars(self) -> int:
        return self._max[-1]

    def built_from(self, specs) -> bool:
        """Whether ``train(..., levels=specs)`` could have made this tokenizer: the same names
        and bounds, and no level larger than asked (a BPE learns fewer on a short text)."""
        specs = check_specs(specs)
        have = self.levels[:-1]
        return len(specs) == len(have) and all(
            (a.name, a.max_children) == (b.name, b.max_children) and a.size <= b.size
            for a, b in zip(have, specs))

    def level_index(self, level) -> int:
        """A level by index (0 = top) or by name -> its index."""
        names = [lv.name for lv in self.levels]
        if isinstance(level, str):
            if level not in names:
                raise ValueError(f"unknown level {level!r} (levels: {', '.join(names)})")
            return names.index(level)
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level < len(names):
            raise ValueError(f"level {level!r} is out of range [0, {len(names)})")
        return level

    # ------------------------------------------------------------------ encode / decode
    def check_text(self, text: str) -> None:
        """Raise :class:`UnknownCharacterError` at the first character outside the alphabet."""
        unknown = set(text).difference(self._char_index)
        if unknown:
            pos = next(i for i, c in enumerate(text) if c in unknown)
            raise UnknownCharacterError(text[pos], pos)

    def _bpe_ids(self, text: str, top: int) -> list[list[int]]:
        """The ids of every BPE level from ``top`` down to the chunks: ``out[i - top]``."""
        self.check_text(text)
        per_line = [e.ids for e in self._bpes[-1].encode_batch(list(bpe_words(text.splitlines(keepends=True))))]
        out = [per_line]
        for i in range(self.depth - 2, top - 1, -1):
            per_line = [e.ids for e in self._bpes[i].encode_batch([_pua_word(r) for r in per_line])]
            out.append(per_line)
        return [[t for line in lv for t in line] for lv in reversed(out)]

    def encode_level(self, text: str, level) -> list[int]:
        """Text -> ids at ``level`` (an index, 0 = roots, or a name)."""
        i = self.level_index(level)
        return self.char_ids(text) if i == self.depth else self._bpe_ids(text, i)[0]

    def encode_levels(self, text: str) -> list[list[int]]:
        """Text -> its ids at every level, top first (characters last), in one pass."""
        return self._bpe_ids(text, 0) + [self.char_ids(text)]

    def encode(self, text: str) -> list[int]:
        """Text -> root ids (the top level: what the manager writes)."""
        return self.encode_level(text, 0)

    def encode_chunks(self, text: str) -> list[int]:
        """Text -> chunk ids (the level spelled in characters)."""
        return self.encode_level(text, self.depth - 1)

    def char_ids(self, text: str) -> list[int]:
        """Text -> character ids (the bottom level)."""
        self.check_text(text)
        return [self._char_index[c] for c in text]

    def decode_level(self, ids: Iterable[int], level) -> str:
        """Ids at ``level`` -> text; the exact inverse of :meth:`encode_level`."""
        i = self.level_index(level)
        table = self._alphabet if i == self.depth else self._text[i]
        what = self.levels[i].name
        out = []
        for t in ids:
            t = int(t)
            self._check_id(t, len(table), what)
            out.append(table[t])
        return "".join(out)

    def decode(self, root_ids: Iterable[int]) -> str:
        """Root ids -> text; the exact inverse of :meth:`encode`."""
        return self.decode_level(root_ids, 0)

    def decode_chunks(self, chunk_ids: Iterable[int]) -> str:
        return self.decode_level(chunk_ids, self.depth - 1)

    def chars_to_text(self, char_ids: Iterable[int]) -> str:
        return self.decode_level(char_ids, self.depth)

    def children(self, level, token: int) -> list[int]:
        """A token of an expanding ``level`` -> its ids at the level below (a copy)."""
        i = self._expanding(level)
        self._check_id(token, len(self._children[i]), self._names[i])
        return list(self._children[i][token])

    def token_text(self, level, token: int) -> str:
        i = self._expanding(level)
        self._check_id(token, len(self._text[i]), self._names[i])
        return self._text[i][token]

    def expand(self, root_id: int) -> list[int]:
        """Root id -> its children (level-1 ids: chunks in the two-level default)."""
        return self.children(0, root_id)

    def root_text(self, root_id: int) -> str:
        return self.token_text(0, root_id)

    def spell(self, chunk_id: int) -> str:
        """Chunk id -> its characters."""
        return self.token_text(self.depth - 1, chunk_id)

    def _expanding(self, level) -> int:
        i = self.level_index(level)
        if i >= self.depth:
            raise ValueError(f"level {level!r} ({self.levels[i].name!r}) does not expand "
                             f"(expanding levels: 0..{self.depth - 1})")
        return i

    @staticmethod
    def _check_id(i: int, n: int, what: str) -> None:
        if not 0 <= i < n:
            raise ValueError(f"{what!r} id {i} is out of range [0, {n})")

    # ------------------------------------------------------------------ tensors
    def expansion_table(self, level: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(targets, lengths)`` for the expansion of level ``level`` into level ``level + 1``:
        targets is ``(levels[level].size, levels[level].max_children)`` int64, padded with the
        child level's pad id; lengths is ``(levels[level].size,)``."""
        level = self._expanding(level)
        if level not in self._tables:
            parent, child = self.levels[level], self.levels[level + 1]
            rows = self._children[level]
            table = torch.full((parent.size, parent.max_children), child.pad_id, dtype=torch.long)
            lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
            for i, r in enumerate(rows):
                table[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            self._tables[level] = (table, lengths)
        return self._tables[level]

    # ------------------------------------------------------------------ statistics
    def stats(self, text: str) -> dict:
        """Hierarchy statistics of ``text``: per level ``<name>.tokens``,
        ``<name>.chars_per_token``, ``<name>.children_per_token`` (tokens of the level below per
        token) and ``<name>.longest`` (most children of any token in the vocabulary);
        ``chars_per_manager_step`` (characters per root). The two-level names (``roots``,
        ``chunks``, ``chars_per_chunk``, ...) read roots as the top and chunks as the level
        spelled in characters, at any depth."""
        ids = self.encode_levels(text)
        counts = [len(x) for x in ids]
        n_chars, n_roots, n_chunks = len(text), counts[0], counts[-2]
        st = {"chars": n_chars, "alphabet_size": self.num_chars, "depth": self.depth,
              "levels": format_specs(self.levels)}
        for i, lv in enumerate(self.levels[:-1]):
            st[f"{lv.name}.tokens"] = counts[i]
            st[f"{lv.name}.chars_per_token"] = n_chars / max(counts[i], 1)
            st[f"{lv.name}.children_per_token"] = counts[i + 1] / max(counts[i], 1)
            st[f"{lv.name}.longest"] = max(len(r) for r in self._children[i])
        st["chars_per_manager_step"] = n_chars / max(n_roots, 1)
        st.update({
            "chunks": n_chunks,
            "roots": n_roots,
            "chunk_vocab": self.num_chunks,
            "root_vocab": self.num_roots,
            "chars_per_chunk": n_chars / max(n_chunks, 1),
            "chunks_per_root": n_chunks / max(n_roots, 1),
            "chars_per_root": n_chars / max(n_roots, 1),
            "max_chunk_chars": max(len(s) for s in self._text[-1]),
            "max_root_chunks": max(len(r) for r in self._children[0]),
        })
        return st

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        """The file's content (version 2): per level, top first, its name, bound, every
        token's children (the chunks' as their text, so the file reads in an editor) and the
        BPE model."""
        d = self.depth
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "alphabet": self._alphabet,
            "levels": [{
                "name": self._names[i],
                "max_children": self._max[i],
                "children": list(self._text[i]) if i == d - 1 else [list(r) for r in self._children[i]],
                "bpe": json.loads(self._bpes[i].to_str()),
            } for i in range(d)],
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
        """Read version 2 (:meth:`to_dict`) or version 1 (roots over chunks). Anything
        malformed raises :class:`TokenizerFileError`."""
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise TokenizerFileError("not a Fractal Flood tokenizer (missing or wrong 'format')")
        version = data.get("version")
        if type(version) is not int or version not in READABLE_VERSIONS:
            raise TokenizerFileError(f"unsupported tokenizer version {version!r} "
                                     f"(this version reads {', '.join(map(str, READABLE_VERSIONS))})")
        try:
            fields = _fields_v1(data) if version == 1 else _fields_v2(data)
            alphabet, names, bpes, bounds, tables = fields
            tok = cls(alphabet, names, [Tokenizer.from_str(json.dumps(b)) for b in bpes], bounds)
        except TokenizerFileError:
            raise
        except Exception as e:  # a KeyError, a malformed BPE model, ...
            raise TokenizerFileError(f"corrupt tokenizer data ({type(e).__name__}: {e})") from None
        if tok._stored_tables() != tables:
            raise TokenizerFileError("the stored token tables disagree with the BPE models")
        return tok

    def _stored_tables(self) -> list:
        return [lv["children"] for lv in self.to_dict()["levels"]]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HierarchicalTokenizer) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        inner = ", ".join(f"{lv.name}={lv.size} (<={lv.max_children})" for lv in self.levels[:-1])
        return f"HierarchicalTokenizer({inner}, {BOTTOM_NAME}={self.num_chars})"


_V2_KEYS = {"format", "version", "alphabet", "levels"}
_V2_LEVEL_KEYS = {"name", "max_children", "children", "bpe"}


MAX_EXPANSION = 1024  # the most children one token may have


def _check_alphabet(alphabet) -> None:
    if not isinstance(alphabet, str) or not 0 < len(alphabet) <= PUA_SIZE:
        raise TokenizerFileError(f"'alphabet' is not a string of 1 to {PUA_SIZE} characters")


def _check_bound(b, what: str) -> None:
    if type(b) is not int or not 1 <= b <= MAX_EXPANSION:
        raise TokenizerFileError(f"{what} is {b!r}; expected an integer in 1 .. {MAX_EXPANSION}")


def _fields_v1(data: dict):
    """Version 1: roots over chunks, each with its own keys. Every field is checked before
    anything is built from it; the BPE JSON only in the shape our own writer produces."""
    alphabet = data.get("alphabet")
    _check_alphabet(alphabet)
    bounds = [data.get("max_root_chunks"), data.get("max_chunk_chars")]
    for key, b in zip(("max_root_chunks", "max_chunk_chars"), bounds):
        _check_bound(b, f"'{key}'")
    if not isinstance(data.get("chunks"), list) or not isinstance(data.get("roots"), list):
        raise TokenizerFileError("'chunks' and 'roots' must be lists")
    check_bpe_json(data.get("chunk_bpe"), "chunk_bpe")
    check_bpe_json(data.get("root_bpe"), "root_bpe")
    return (alphabet, ["roots", "chunks"], [data["root_bpe"], data["chunk_bpe"]], bounds,
            [data["roots"], data["chunks"]])


def _fields_v2(data: dict):
    if set(data) != _V2_KEYS:
        raise TokenizerFileError(f"expected the keys {sorted(_V2_KEYS)}, got {sorted(data)}")
    _check_alphabet(data["alphabet"])
    levels = data["levels"]
    if not isinstance(levels, list) or not levels:
        raise TokenizerFileError("'levels' must be a non-empty list")
    for i, lv in enumerate(levels):
        if not isinstance(lv, dict) or set(lv) != _V2_LEVEL_KEYS:
            raise TokenizerFileError(f"each level must have exactly the keys {sorted(_V2_LEVEL_KEYS)}")
        _check_bound(lv["max_children"], f"level {lv['name']!r}: max_children")
        if not isinstance(lv["children"], list):
            raise TokenizerFileError(f"level {lv['name']!r}: 'children' must be a list")
        check_bpe_json(lv["bpe"], f"levels[{i}].bpe")
    return (data["alphabet"], [lv["name"] for lv in levels], [lv["bpe"] for lv in levels],
            [lv["max_children"] for lv in levels], [lv["children"] for lv in levels])
