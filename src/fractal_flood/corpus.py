"""The text a model is trained on: the shipped default corpus or any UTF-8 file."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .errors import FractalFloodError

DEFAULT_CORPUS_NAME = "tinyshakespeare.txt"


def default_corpus_path() -> Path:
    """Path of the TinyShakespeare copy shipped inside the package."""
    return Path(str(resources.files("fractal_flood") / "data" / DEFAULT_CORPUS_NAME))


def load_corpus(path: str | Path | None = None) -> str:
    """Read a UTF-8 corpus; ``None`` means the shipped default."""
    path = default_corpus_path() if path is None else Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FractalFloodError(f"corpus file not found: {path}") from None
    except IsADirectoryError:
        raise FractalFloodError(f"corpus path is a directory, not a file: {path}") from None
    except UnicodeDecodeError as e:
        raise FractalFloodError(f"corpus file is not valid UTF-8: {path} ({e.reason} at byte {e.start})") from None
    if not text:
        raise FractalFloodError(f"corpus file is empty: {path}")
    return text
