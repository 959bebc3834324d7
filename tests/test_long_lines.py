"""A corpus without line breaks: BPE words stay bounded, so tokenizer training and encoding
stay linear in the text's length, and the round trip stays exact."""

import random
import time

import pytest

from fractal_flood.hierarchy.tokenizer import WORD_CHARS, HierarchicalTokenizer, bpe_words


def one_line(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    words = ["the", "king", "and", "queen", "of", "a", "thy", "lord", "be", "not", "so"]
    out, size = [], 0
    while size < n:
        w = rng.choice(words) + rng.choice([" ", " ", " ", ", ", ". "])
        out.append(w)
        size += len(w)
    return "".join(out)[:n]


def test_words_are_bounded_and_join_back():
    line = one_line(10_000) + "\n"
    words = list(bpe_words([line, "short\n", "x" * 1000]))
    assert "".join(words) == line + "short\n" + "x" * 1000
    assert max(len(w) for w in words) <= WORD_CHARS
    assert "short\n" in words  # a short line is one word, as before
    assert all(w.endswith(" ") for w in words[:5])  # cut after a space where there is one
    assert [len(w) for w in bpe_words(["x" * 1000])] == [256, 256, 256, 232]  # none: a hard cut


@pytest.mark.slow
def test_a_three_megabyte_line_trains_and_round_trips_in_linear_time():
    small, big = one_line(300_000, 1), one_line(3_000_000, 2)
    times = []
    for text in (small, big):
        t0 = time.perf_counter()
        tok = HierarchicalTokenizer.train(text, num_chunks=256, num_roots=512)
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        times.append(time.perf_counter() - t0)
    # 10x the text: linear is ~10x the time; the unbounded word took > 20x from 100 KB to 300 KB
    assert times[1] < 25 * times[0] + 5, times


def test_progress_names_each_level():
    seen = []
    HierarchicalTokenizer.train("to be or not to be\n" * 50, num_chunks=80, num_roots=100, progress=seen.append)
    assert len(seen) == 4 and "'chunks' (1 of 2)" in seen[0] and "'roots' (2 of 2)" in seen[2]
    assert seen[1].endswith("s") and "tokens in" in seen[1]
