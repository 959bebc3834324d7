"""The token hierarchy: exact round trips, bounds, errors, persistence and statistics."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from fractal_flood.errors import FractalFloodError, TokenizerFileError, UnknownCharacterError
from fractal_flood.tokenizer import HierarchicalTokenizer

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # the GPU machine has pytest but not hypothesis
    given = None

# Figures docs/DESIGN.md gives for the default corpus at the default sizes.
DESIGN_CHARS_PER_CHUNK = 2.60
DESIGN_CHUNKS_PER_ROOT = 1.20
DESIGN_CHARS_PER_ROOT = 3.12
DESIGN_ROOTS = 357_000
DESIGN_ALPHABET = 65

UNICODE_TEXT = "Straße, naïve café.\nFuß und Spaß: ÉTÉ à l'île!\n\nçà et là, ß ß é\n"

TOKENIZERS = ["tiny_tokenizer", "default_tokenizer"]


@pytest.fixture(params=TOKENIZERS)
def tok(request) -> HierarchicalTokenizer:
    return request.getfixturevalue(request.param)


def roots_as_chunks(tok: HierarchicalTokenizer, root_ids: list[int]) -> list[int]:
    return [c for r in root_ids for c in tok.expand(r)]


# ---------------------------------------------------------------------- round trips
@pytest.fixture(params=[("default_tokenizer", "corpus_text"), ("tiny_tokenizer", "small_text")],
                ids=["default-full-corpus", "tiny-its-training-text"])
def tok_and_text(request) -> tuple[HierarchicalTokenizer, str]:
    # The tiny tokenizer never saw the whole alphabet, so it gets the text it was trained on.
    name, text = request.param
    return request.getfixturevalue(name), request.getfixturevalue(text)


def test_round_trip_corpus(tok_and_text):
    tok, text = tok_and_text
    roots = tok.encode(text)
    assert tok.decode(roots) == text
    assert all(0 <= r < tok.num_roots for r in roots)


def test_chunk_round_trip_corpus(tok_and_text):
    tok, text = tok_and_text
    chunks = tok.encode_chunks(text)
    assert tok.decode_chunks(chunks) == text
    assert all(0 <= c < tok.num_chunks for c in chunks)


def test_roots_group_the_chunk_sequence(default_tokenizer, small_text):
    # Roots are BPE merges over the chunk sequence: expanding them gives the chunks back.
    tok = default_tokenizer
    assert roots_as_chunks(tok, tok.encode(small_text)) == tok.encode_chunks(small_text)


def test_decode_accepts_tensors_and_char_ids_round_trip(tiny_tokenizer, small_text):
    tok = tiny_tokenizer
    text = small_text[:2000]
    assert tok.decode(torch.tensor(tok.encode(text))) == text
    assert tok.decode_chunks(torch.tensor(tok.encode_chunks(text))) == text
    assert tok.chars_to_text(tok.char_ids(text)) == text


def test_empty_text(tok):
    assert tok.encode("") == []
    assert tok.encode_chunks("") == []
    assert tok.char_ids("") == []
    assert tok.decode([]) == ""
    assert tok.decode_chunks([]) == ""


@pytest.mark.parametrize("text", ["\n", "\n\n\n\n", "a" * 500, "  \n \n", "e" * 17 + "\n" + "e" * 33])
def test_round_trip_edge_cases(tok, text):
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode_chunks(tok.encode_chunks(text)) == text


if given is not None:
    PROPERTY = settings(max_examples=150, deadline=None,
                        suppress_health_check=[HealthCheck.too_slow,
                                               # only session fixtures are looked up
                                               HealthCheck.function_scoped_fixture])

    def texts_over(alphabet: str):
        """Random text, runs of one repeated character, and lines of either."""
        char = st.sampled_from(alphabet)
        runs = st.builds(lambda c, n: c * n, char, st.integers(0, 80))
        free = st.text(alphabet=char, max_size=300)
        piece = st.one_of(free, runs)
        joined = st.lists(piece, max_size=8).map("".join)
        if "\n" not in alphabet:
            return st.one_of(free, runs, joined)
        lines = st.lists(piece, max_size=8).map("\n".join)
        return st.one_of(free, runs, lines, joined)

    @pytest.mark.parametrize("fixture", TOKENIZERS)
    @PROPERTY
    @given(data=st.data())
    def test_round_trip_random_text(request, fixture, data):
        tok = request.getfixturevalue(fixture)
        text = data.draw(texts_over(tok.alphabet), label="text")
        roots = tok.encode(text)
        assert tok.decode(roots) == text
        chunks = tok.encode_chunks(text)
        assert tok.decode_chunks(chunks) == text
        assert roots_as_chunks(tok, roots) == chunks

    @PROPERTY
    @given(data=st.data())
    def test_unknown_character_position_random(tiny_tokenizer, data):
        tok = tiny_tokenizer
        unknown = data.draw(st.sampled_from("Q&$3XZé\t\r€"), label="unknown")
        assert unknown not in tok.alphabet
        before = data.draw(texts_over(tok.alphabet), label="before")
        after = data.draw(st.text(alphabet=st.sampled_from(tok.alphabet + unknown)), label="after")
        with pytest.raises(UnknownCharacterError) as info:
            tok.encode(before + unknown + after)
        assert info.value.char == unknown
        assert info.value.position == len(before)

    # Any small text of ordinary characters (lone surrogates cannot be UTF-8 encoded).
    small_texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)),
                          min_size=1, max_size=200)

    @settings(max_examples=60, deadline=None)
    @given(text=small_texts, data=st.data())
    def test_train_on_any_small_text(text, data):
        tok = HierarchicalTokenizer.train(text, num_chunks=256, num_roots=512,
                                          max_chunk_chars=5, max_root_chunks=3)
        assert set(tok.alphabet) == set(text)
        assert tok.decode(tok.encode(text)) == text
        other = data.draw(texts_over(tok.alphabet), label="other")
        assert tok.decode(tok.encode(other)) == other
        assert all(1 <= len(tok.spell(c)) <= 5 for c in range(tok.num_chunks))
        assert all(1 <= len(tok.expand(r)) <= 3 for r in range(tok.num_roots))
else:
    @pytest.mark.skip(reason="hypothesis is not installed")
    def test_property_tests_need_hypothesis():
        pass


# ---------------------------------------------------------------------- the vocabularies
def test_chunk_spellings_are_bounded_and_consistent(tok):
    seen = set()
    for c in range(tok.num_chunks):
        s = tok.spell(c)
        assert 1 <= len(s) <= tok.max_chunk_chars
        assert set(s) <= set(tok.alphabet)
        assert tok.decode_chunks([c]) == s
        seen.add(s)
    assert len(seen) == tok.num_chunks  # no two chunk ids spell the same text
    # every character of the alphabet is a chunk of its own
    assert set(tok.alphabet) <= seen


def test_root_expansions_are_bounded_and_consistent(tok):
    seen = set()
    for r in range(tok.num_roots):
        chunks = tok.expand(r)
        assert 1 <= len(chunks) <= tok.max_root_chunks
        assert all(0 <= c < tok.num_chunks for c in chunks)
        text = "".join(tok.spell(c) for c in chunks)
        assert tok.root_text(r) == text == tok.decode([r]) == tok.decode_chunks(chunks)
        seen.add(tuple(chunks))
    assert len(seen) == tok.num_roots  # no two root ids expand to the same chunks


def test_expand_returns_a_copy(tiny_tokenizer):
    tok = tiny_tokenizer
    tok.expand(0).append(12345)
    assert 12345 not in tok.expand(0)


def test_custom_bounds_are_respected(small_text):
    tok = HierarchicalTokenizer.train(small_text, num_chunks=200, num_roots=400,
                                      max_chunk_chars=3, max_root_chunks=2)
    assert tok.max_chunk_chars == 3 and tok.max_root_chunks == 2
    assert max(len(tok.spell(c)) for c in range(tok.num_chunks)) <= 3
    assert max(len(tok.expand(r)) for r in range(tok.num_roots)) <= 2
    assert tok.decode(tok.encode(small_text)) == small_text


def test_one_chunk_per_root(small_text):
    # as many roots as chunks: no root merges are asked for
    tok = HierarchicalTokenizer.train(small_text, num_chunks=150, num_roots=150, max_root_chunks=1)
    assert tok.num_roots == tok.num_chunks
    assert tok.encode(small_text[:5000]) != []
    assert tok.decode(tok.encode(small_text)) == small_text


@pytest.mark.parametrize("bound", ["max_chunk_chars", "max_root_chunks"])
def test_bound_of_one_is_respected(bound):
    text = "hello world, hello moon\n" * 3
    tok = HierarchicalTokenizer.train(text, **{bound: 1})
    assert max(len(tok.spell(c)) for c in range(tok.num_chunks)) <= tok.max_chunk_chars
    assert max(len(tok.expand(r)) for r in range(tok.num_roots)) <= tok.max_root_chunks
    assert tok.decode(tok.encode(text)) == text


def test_levels_match_sizes(tok):
    l0, l1 = tok.levels
    assert (l0.index, l1.index) == (0, 1)
    assert (l0.num_conditions, l0.num_targets, l0.max_len) == (tok.num_roots, tok.num_chunks, tok.max_root_chunks)
    assert (l1.num_conditions, l1.num_targets, l1.max_len) == (tok.num_chunks, tok.num_chars, tok.max_chunk_chars)
    assert l0.num_targets == l1.num_conditions  # the levels chain
    # the pad is one id past the real targets, so it never collides with one
    assert l0.pad_id == tok.num_chunks and l1.pad_id == tok.num_chars
    assert tok.num_chars == len(tok.alphabet) == len(set(tok.alphabet))


@pytest.mark.parametrize("level", [0, 1])
def test_expansion_table(tok, level):
    spec = tok.levels[level]
    table, lengths = tok.expansion_table(level)
    assert table.shape == (spec.num_conditions, spec.max_len) and table.dtype == torch.long
    assert lengths.shape == (spec.num_conditions,) and lengths.dtype == torch.long
    mask = torch.arange(spec.max_len)[None, :] < lengths[:, None]
    assert bool((table[~mask] == spec.pad_id).all())
    assert bool((table[mask] < spec.num_targets).all()) and bool((table[mask] >= 0).all())
    rows, lens = table.tolist(), lengths.tolist()
    for i in range(spec.num_conditions):
        real = rows[i][: lens[i]]
        if level == 0:
            assert real == tok.expand(i)
        else:
            assert real == tok.char_ids(tok.spell(i))
            assert tok.chars_to_text(real) == tok.spell(i)


def test_expansion_table_rejects_unknown_level(tiny_tokenizer):
    for level in (2, -1, 7):
        with pytest.raises(ValueError, match="level"):
            tiny_tokenizer.expansion_table(level)


# ---------------------------------------------------------------------- errors
def test_unknown_character_names_char_and_position(tiny_tokenizer):
    tok = tiny_tokenizer
    assert "é" not in tok.alphabet and "Q" not in tok.alphabet
    text = "to be\nor ébé Qu"
    for method in (tok.encode, tok.encode_chunks, tok.char_ids, tok.check_text):
        with pytest.raises(UnknownCharacterError) as info:
            method(text)
        err = info.value
        assert isinstance(err, ValueError) and isinstance(err, FractalFloodError)
        assert (err.char, err.position) == ("é", 9)
        assert "'é'" in str(err) and "position 9" in str(err) and "U+00E9" in str(err)


def test_train_on_empty_text_raises():
    with pytest.raises(ValueError, match="empty"):
        HierarchicalTokenizer.train("")


@pytest.mark.parametrize("kwargs", [
    dict(num_chunks=10),  # smaller than the alphabet
    dict(num_chunks=128, num_roots=64),  # fewer roots than chunks
    dict(max_chunk_chars=0),
    dict(max_root_chunks=0),
])
def test_train_rejects_bad_sizes(small_text, kwargs):
    with pytest.raises(ValueError):
        HierarchicalTokenizer.train(small_text[:5000], **kwargs)


def test_out_of_range_ids_raise(tiny_tokenizer):
    tok = tiny_tokenizer
    calls = [
        lambda: tok.decode([tok.num_roots]),
        lambda: tok.decode([0, -1]),
        lambda: tok.decode_chunks([tok.num_chunks]),
        lambda: tok.decode_chunks([-1]),
        lambda: tok.expand(tok.num_roots),
        lambda: tok.expand(-1),
        lambda: tok.root_text(tok.num_roots),
        lambda: tok.spell(tok.num_chunks),
        lambda: tok.spell(-1),
        lambda: tok.chars_to_text([tok.num_chars]),
        lambda: tok.decode(torch.tensor([tok.num_roots])),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="out of range"):
            call()


# ---------------------------------------------------------------------- persistence
def test_save_load_round_trip(tok, tmp_path, small_text):
    path = tmp_path / "tok.json"
    tok.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["tok.json"]  # no temporary file left
    loaded = HierarchicalTokenizer.load(path)
    assert loaded == tok
    assert loaded.levels == tok.levels
    assert loaded.encode(small_text) == tok.encode(small_text)
    assert loaded.encode_chunks(small_text) == tok.encode_chunks(small_text)
    assert HierarchicalTokenizer.load(str(path)) == tok


def test_saved_file_is_readable_json(tiny_tokenizer, tmp_path):
    tok = tiny_tokenizer
    path = tmp_path / "tok.json"
    tok.save(path)
    raw = path.read_text(encoding="utf-8")
    assert raw.count("\n") > 100  # indented, one entry a line: readable in an editor
    data = json.loads(raw)
    assert data["format"] == "fractal-flood-tokenizer"
    assert data["alphabet"] == tok.alphabet
    assert data["chunks"] == [tok.spell(c) for c in range(tok.num_chunks)]
    assert data["roots"] == [tok.expand(r) for r in range(tok.num_roots)]


def test_unicode_tokenizer_saves_and_loads(tmp_path):
    tok = HierarchicalTokenizer.train(UNICODE_TEXT, num_chunks=64, num_roots=96)
    path = tmp_path / "uni.json"
    tok.save(path)
    assert '"ß"' in path.read_text(encoding="utf-8")  # stored as text, not \\u escapes
    loaded = HierarchicalTokenizer.load(path)
    assert loaded == tok
    assert loaded.decode(loaded.encode(UNICODE_TEXT)) == UNICODE_TEXT


def _truncate(path: Path) -> None:
    raw = path.read_text(encoding="utf-8")
    path.write_text(raw[: len(raw) // 2], encoding="utf-8")


def _edit(change):
    def corrupt(path: Path) -> None:
        data = json.loads(path.read_text(encoding="utf-8"))
        change(data)
        path.write_text(json.dumps(data), encoding="utf-8")
    return corrupt


def _swap_two_chunks(d):
    d["chunks"][3], d["chunks"][4] = d["chunks"][4], d["chunks"][3]


def _set(key, value):
    return lambda d: d.__setitem__(key, value)


CORRUPTIONS = {
    "truncated": _truncate,
    "empty": lambda p: p.write_text("", encoding="utf-8"),
    "not_utf8": lambda p: p.write_bytes(b"\xff\xfe\x00garbage"),
    "json_list": lambda p: p.write_text("[1, 2, 3]", encoding="utf-8"),
    "wrong_format": _edit(_set("format", "some-other-tokenizer")),
    "wrong_version": _edit(_set("version", 99)),
    "missing_chunk_bpe": _edit(lambda d: d.pop("chunk_bpe")),
    "missing_root_bpe": _edit(lambda d: d.pop("root_bpe")),
    "missing_alphabet": _edit(lambda d: d.pop("alphabet")),
    "missing_chunks": _edit(lambda d: d.pop("chunks")),
    "missing_max_chunk_chars": _edit(lambda d: d.pop("max_chunk_chars")),
    "tampered_chunks": _edit(_swap_two_chunks),
    "tampered_chunk_text": _edit(lambda d: d["chunks"].__setitem__(5, "zzz")),
    "tampered_roots": _edit(lambda d: d["roots"].__setitem__(0, [1, 2])),
    "chunk_bpe_not_a_model": _edit(_set("chunk_bpe", {"model": "nonsense"})),
    "bound_below_chunks": _edit(_set("max_chunk_chars", 1)),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corrupt_file_raises_naming_the_file(tiny_tokenizer, tmp_path, name):
    path = tmp_path / f"{name}.json"
    tiny_tokenizer.save(path)
    CORRUPTIONS[name](path)
    with pytest.raises(TokenizerFileError) as info:
        HierarchicalTokenizer.load(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, FractalFloodError)


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_unreadable_path_raises_naming_the_file(tmp_path, kind):
    path = tmp_path / "nothing-here.json"
    if kind == "directory":
        path.mkdir()
    with pytest.raises(TokenizerFileError) as info:
        HierarchicalTokenizer.load(path)
    assert str(path) in str(info.value)


# ---------------------------------------------------------------------- the default corpus
def test_default_corpus_statistics_match_design(default_tokenizer, corpus_text):
    s = default_tokenizer.stats(corpus_text)
    assert s["chars"] == len(corpus_text) == 1_115_394
    assert s["alphabet_size"] == DESIGN_ALPHABET
    assert s["chunk_vocab"] == 1024 and s["root_vocab"] == 2048
    assert s["chars_per_chunk"] == pytest.approx(DESIGN_CHARS_PER_CHUNK, abs=0.08)
    assert s["chunks_per_root"] == pytest.approx(DESIGN_CHUNKS_PER_ROOT, abs=0.05)
    assert s["chars_per_root"] == pytest.approx(DESIGN_CHARS_PER_ROOT, abs=0.1)
    assert s["roots"] == pytest.approx(DESIGN_ROOTS, rel=0.03)
    assert s["max_chunk_chars"] <= 16 and s["max_root_chunks"] <= 4


def test_training_on_full_corpus_is_fast_and_deterministic(corpus_text, default_tokenizer):
    start = time.perf_counter()
    tok = HierarchicalTokenizer.train(corpus_text)
    seconds = time.perf_counter() - start
    assert seconds < 30, f"training on the full corpus took {seconds:.1f} s (limit 30 s)"
    assert tok == default_tokenizer  # same text, same sizes -> the same tokenizer


# ---------------------------------------------------------------------- other text
def test_small_unicode_text(tmp_path):
    tok = HierarchicalTokenizer.train(UNICODE_TEXT, num_chunks=64, num_roots=96)
    assert {"é", "ß", "ï", "É", "\n"} <= set(tok.alphabet)
    assert tok.decode(tok.encode(UNICODE_TEXT)) == UNICODE_TEXT
    assert tok.decode_chunks(tok.encode_chunks(UNICODE_TEXT)) == UNICODE_TEXT
    fresh = "ßé\n\nçà Fuß"
    assert tok.decode(tok.encode(fresh)) == fresh
    with pytest.raises(UnknownCharacterError) as info:
        tok.encode("Spaß Q")
    assert (info.value.char, info.value.position) == ("Q", 5)


def test_repr_names_sizes(tiny_tokenizer):
    r = repr(tiny_tokenizer)
    assert "chunks=128" in r and "roots=192" in r
