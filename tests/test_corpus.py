"""The corpus: the shipped default and clear errors for a bad file."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

import fractal_flood
from fractal_flood.corpus.reader import default_corpus_path, load_corpus
from fractal_flood.errors import FractalFloodError

TINY_SHAKESPEARE_CHARS = 1_115_394


def test_default_corpus_is_shipped_in_the_package():
    path = default_corpus_path()
    assert path.is_file()
    package_dir = Path(fractal_flood.__file__).resolve().parent
    assert package_dir in path.resolve().parents  # not the shared/ folder a fresh machine lacks
    assert resources.files("fractal_flood").joinpath("assets", path.name).is_file()


def test_default_corpus_size(corpus_text):
    assert len(corpus_text) == TINY_SHAKESPEARE_CHARS
    assert corpus_text.startswith("First Citizen:")
    assert len(set(corpus_text)) == 65


def test_load_corpus_none_is_the_default(corpus_text):
    assert load_corpus(None) == corpus_text
    assert load_corpus(str(default_corpus_path())) == corpus_text


def test_load_any_utf8_file(tmp_path):
    path = tmp_path / "mine.txt"
    text = "Straße und Fuß\nnaïve café\n"
    path.write_text(text, encoding="utf-8")
    assert load_corpus(path) == text
    assert load_corpus(str(path)) == text


def _missing(tmp_path: Path) -> Path:
    return tmp_path / "no-such-corpus.txt"


def _directory(tmp_path: Path) -> Path:
    path = tmp_path / "a-folder"
    path.mkdir()
    return path


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    return path


def _not_utf8(tmp_path: Path) -> Path:
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\u00e9 au lait\n".encode("latin-1"))
    return path


@pytest.mark.parametrize("make, words", [
    (_missing, "not found"),
    (_directory, "directory"),
    (_empty, "empty"),
    (_not_utf8, "UTF-8"),
], ids=["missing", "directory", "empty", "invalid-utf8"])
def test_bad_corpus_raises_a_clear_error(tmp_path, make, words):
    path = make(tmp_path)
    with pytest.raises(FractalFloodError) as info:
        load_corpus(path)
    message = str(info.value)
    assert words in message
    assert str(path) in message
