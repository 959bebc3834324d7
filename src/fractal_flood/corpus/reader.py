"""The text a model is trained on: the shipped default corpus, or any UTF-8 file, directory of
files or glob of files, read as one text (the files concatenated in sorted order).

A corpus can be larger than memory: :meth:`Corpus.blocks` streams it as pieces of whole
lines and :meth:`Corpus.lines` as lines, both exactly as ``text.splitlines(keepends=True)``
would cut the concatenated text, so a tokenizer that works line by line sees the same words
either way. :func:`load_corpus` reads a (small) corpus whole.
"""

from __future__ import annotations

import codecs
import glob
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterator

from ..errors import FractalFloodError
from ..fileio import why_missing

DEFAULT_CORPUS_NAME = "tinyshakespeare.txt"
READ_BYTES = 1 << 20  # raw bytes per read; a block is at least one whole line
GLOB_CHARS = "*?["


def default_corpus_path() -> Path:
    """Path of the TinyShakespeare copy shipped inside the package."""
    return Path(str(resources.files("fractal_flood") / "assets" / DEFAULT_CORPUS_NAME))


@dataclass(frozen=True)
class Corpus:
    """The files of one corpus, in reading order."""

    spec: str  # what the user gave: a file, a directory or a glob
    files: tuple[Path, ...]

    def fingerprint(self) -> list[dict]:
        """Paths, sizes and modification times: a cache built from this corpus is still
        valid while these are unchanged."""
        out = []
        for f in self.files:
            st = f.stat()
            out.append({"path": str(f.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns})
        return out

    @property
    def num_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    def blocks(self) -> Iterator[str]:
        """The text in pieces that end at a line break (except the last), about
        ``READ_BYTES`` long; a single longer line is one piece."""
        for text, _ in self.blocks_with_bytes():
            yield text

    def blocks_with_bytes(self) -> Iterator[tuple[str, int]]:
        """:meth:`blocks`, each with the count of bytes read so far (for a progress bar)."""
        carry, done, any_text = "", 0, False
        for path in self.files:
            for text, n in _decode_file(path):
                done += n
                text = carry + text
                cut = text.rfind("\n") + 1  # '\n' always ends a line, also as part of "\r\n"
                carry = text[cut:]
                if cut:
                    any_text = True
                    yield text[:cut], done
        if carry:
            any_text = True
            yield carry, done
        if not any_text:
            what = "corpus file is empty" if len(self.files) == 1 else "corpus is empty"
            raise FractalFloodError(f"{what}: {self.spec}")

    def lines(self, max_chars: int | None = None) -> "CorpusLines":
        """A re-iterable of the corpus's lines (keeping their line breaks), stopping after
        the line that reaches ``max_chars`` characters when given."""
        return CorpusLines(self, max_chars)

    def alphabet(self) -> str:
        """Every character of the corpus, sorted (one streamed pass)."""
        chars: set[str] = set()
        for block in self.blocks():
            chars.update(block)
        return "".join(sorted(chars))

    def read_text(self) -> str:
        return "".join(self.blocks())


@dataclass(frozen=True)
class CorpusLines:
    """Iterating it again reads the files again, so a trainer can make several passes."""

    corpus: Corpus
    max_chars: int | None = None

    def __iter__(self) -> Iterator[str]:
        seen = 0
        for block in self.corpus.blocks():
            for line in block.splitlines(keepends=True):
                yield line
                seen += len(line)
                if self.max_chars is not None and seen >= self.max_chars:
                    return


def open_corpus(spec: str | Path | None = None) -> Corpus:
    """A file, a directory (every file below it, hidden ones excepted, in sorted path
    order) or a glob (``data/*.txt``, ``books/**/*.txt``); ``None`` is the shipped default."""
    if spec is None:
        return Corpus(str(default_corpus_path()), (default_corpus_path(),))
    spec = str(spec)
    path = Path(spec)
    if path.is_file():
        return Corpus(spec, (path,))
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise FractalFloodError(f"corpus directory holds no files: {spec}")
        return Corpus(spec, tuple(files))
    if any(c in spec for c in GLOB_CHARS):
        files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        if not files:
            raise FractalFloodError(f"corpus glob matches no files: {spec}")
        return Corpus(spec, tuple(files))
    raise FractalFloodError(why_missing(spec, "corpus file"))


def load_corpus(path: str | Path | None = None) -> str:
    """Read a whole UTF-8 corpus (file, directory or glob); ``None`` means the shipped default."""
    return open_corpus(path).read_text()


def _decode_file(path: Path) -> Iterator[tuple[str, int]]:
    """UTF-8 text of one file in pieces, each with the raw bytes it consumed. Line breaks are
    kept as they are (no newline translation), so the text is the file's exactly."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    try:
        with open(path, "rb") as f:
            while True:
                raw = f.read(READ_BYTES)
                pending = len(decoder.getstate()[0])
                try:
                    text = decoder.decode(raw, final=not raw)
                except UnicodeDecodeError as e:
                    raise FractalFloodError(f"corpus file is not valid UTF-8: {path} "
                                            f"({e.reason} at byte {offset - pending + e.start})") from None
                if not raw:
                    return
                offset += len(raw)
                yield text, len(raw)
    except FileNotFoundError:
        raise FractalFloodError(f"corpus file not found: {path}") from None
    except IsADirectoryError:
        raise FractalFloodError(f"corpus path is a directory, not a file: {path}") from None
    except OSError as e:  # unreadable, a device, ...
        raise FractalFloodError(f"cannot read corpus file {path}: {e.strerror or e}") from None
