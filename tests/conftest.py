"""Shared fixtures: the shipped corpus and tokenizers trained on it once per session."""

from __future__ import annotations

import pytest

from fractal_flood.corpus import load_corpus
from fractal_flood.tokenizer import HierarchicalTokenizer

SMALL_CHARS = 60_000


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``cuda`` on a machine without a CUDA GPU."""
    marked = [item for item in items if item.get_closest_marker("cuda") is not None]
    if not marked:
        return
    import torch  # only when some collected test needs it

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in marked:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def corpus_text() -> str:
    """The default corpus shipped inside the package (TinyShakespeare)."""
    return load_corpus()


@pytest.fixture(scope="session")
def small_text(corpus_text: str) -> str:
    """The first ~60,000 characters of the default corpus: enough for tiny models."""
    return corpus_text[:SMALL_CHARS]


@pytest.fixture(scope="session")
def tiny_tokenizer(small_text: str) -> HierarchicalTokenizer:
    """128 chunks, 192 roots: trains in well under a second."""
    return HierarchicalTokenizer.train(small_text, num_chunks=128, num_roots=192)


@pytest.fixture(scope="session")
def default_tokenizer(corpus_text: str) -> HierarchicalTokenizer:
    """Default sizes (1024 chunks, 2048 roots) on the full corpus: about 2 s."""
    return HierarchicalTokenizer.train(corpus_text)
