"""The token hierarchy: exact round trips, bounds, errors, persistence and statistics."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from fractal_flood.errors import FractalFloodError, LevelSpecError, TokenizerFileError, UnknownCharacterError
from fractal_flood.hierarchy.level_specs import default_specs, format_specs, parse_specs
from fractal_flood.hierarchy.levels import Level, check_hierarchy
from fractal_flood.hierarchy.tokenizer import PUA_SIZE, HierarchicalTokenizer
from fractal_flood.models import checkpoint as ckpt

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

# Deeper hierarchies on the small corpus: 3 and 4 expanding levels (4 and 5 vocabularies
# with the characters). The tiny tokenizer is the 2-level one.
THREE_LEVELS = [("roots", 256, 3), ("words", 192, 3), ("chunks", 128, 8)]
FOUR_LEVELS = [("roots", 320, 2), ("phrases", 256, 2), ("words", 192, 3), ("chunks", 128, 8)]

TOKENIZERS = ["tiny_tokenizer", "default_tokenizer", "three_level_tokenizer", "four_level_tokenizer"]
SMALL_TOKENIZERS = ["tiny_tokenizer", "three_level_tokenizer", "four_level_tokenizer"]


@pytest.fixture(scope="session")
def three_level_tokenizer(small_text) -> HierarchicalTokenizer:
    return HierarchicalTokenizer.train(small_text, levels=THREE_LEVELS)


@pytest.fixture(scope="session")
def four_level_tokenizer(small_text) -> HierarchicalTokenizer:
    return HierarchicalTokenizer.train(small_text, levels=FOUR_LEVELS)


@pytest.fixture(params=TOKENIZERS)
def tok(request) -> HierarchicalTokenizer:
    return request.getfixturevalue(request.param)


@pytest.fixture(params=SMALL_TOKENIZERS)
def small_tok(request) -> HierarchicalTokenizer:
    """The tokenizers trained on ``small_text``, one per depth 2, 3, 4."""
    return request.getfixturevalue(request.param)


def expand_down(tok: HierarchicalTokenizer, ids: list[int], level: int, to: int) -> list[int]:
    """Ids at ``level`` -> the ids at level ``to`` below it, through the children tables."""
    for i in range(level, to):
        ids = [c for t in ids for c in tok.children(i, t)]
    return ids


def roots_as_chunks(tok: HierarchicalTokenizer, root_ids: list[int]) -> list[int]:
    return expand_down(tok, root_ids, 0, tok.depth - 1)


# ---------------------------------------------------------------------- round trips
@pytest.fixture(params=[("default_tokenizer", "corpus_text"), ("tiny_tokenizer", "small_text"),
                        ("three_level_tokenizer", "small_text"), ("four_level_tokenizer", "small_text")],
                ids=["default-full-corpus", "tiny-its-training-text", "3-levels", "4-levels"])
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


def test_every_level_round_trips_and_groups_the_level_below(small_tok, small_text):
    tok = small_tok
    ids = tok.encode_levels(small_text)
    assert len(ids) == len(tok.levels) == tok.depth + 1
    for i, lv in enumerate(tok.levels):
        assert ids[i] == tok.encode_level(small_text, i) == tok.encode_level(small_text, lv.name)
        assert tok.decode_level(ids[i], i) == small_text
        assert all(0 <= t < lv.size for t in ids[i])
        if i < tok.depth:  # a level is BPE merges over the sequence of the level below
            assert expand_down(tok, ids[i], i, i + 1) == ids[i + 1]
    assert ids[0] == tok.encode(small_text) and ids[-2] == tok.encode_chunks(small_text)
    assert ids[-1] == tok.char_ids(small_text)
    # each level up is coarser: fewer tokens for the same text
    assert all(len(a) < len(b) for a, b in zip(ids, ids[1:]))


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
        ids = tok.encode_levels(text)
        for i in range(tok.depth):
            assert tok.decode_level(ids[i], i) == text
            assert expand_down(tok, ids[i], i, i + 1) == ids[i + 1]

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

    @settings(max_examples=40, deadline=None)
    @given(text=small_texts, data=st.data())
    def test_train_three_levels_on_any_small_text(text, data):
        tok = HierarchicalTokenizer.train(text, levels=[("top", 640, 2), ("mid", 512, 3), ("low", 256, 4)])
        assert [lv.name for lv in tok.levels] == ["top", "mid", "low", "chars"]
        other = data.draw(texts_over(tok.alphabet), label="other")
        for t in (text, other):
            ids = tok.encode_levels(t)
            for i, lv in enumerate(tok.levels[:-1]):
                assert tok.decode_level(ids[i], i) == t
                assert all(1 <= len(tok.children(i, j)) <= lv.max_children for j in range(lv.size))
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
    below = tok.levels[1]
    for r in range(tok.num_roots):
        children = tok.expand(r)
        assert 1 <= len(children) <= tok.max_root_chunks
        assert all(0 <= c < below.size for c in children)
        text = "".join(tok.token_text(1, c) for c in children) if tok.depth > 1 else tok.chars_to_text(children)
        assert tok.root_text(r) == text == tok.decode([r]) == tok.decode_level(children, 1)
        seen.add(tuple(children))
    assert len(seen) == tok.num_roots  # no two root ids expand to the same children


def test_every_level_is_bounded_and_unique(small_tok):
    tok = small_tok
    for i, (lv, below) in enumerate(zip(tok.levels, tok.levels[1:])):
        rows = [tok.children(i, t) for t in range(lv.size)]
        assert all(1 <= len(r) <= lv.max_children for r in rows)
        assert all(0 <= c < below.size for r in rows for c in r)
        assert len(set(map(tuple, rows))) == lv.size  # no two tokens expand alike
        texts = [tok.token_text(i, t) for t in range(lv.size)]
        assert len(set(texts)) == lv.size  # nor spell alike
        # every token of the level below is a token of its own here (BPE keeps its alphabet)
        assert {(c,) for c in range(below.size)} <= set(map(tuple, rows))


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
    levels = tok.levels
    assert check_hierarchy(levels) == levels  # a valid hierarchy: the renderer's input
    assert len(levels) == tok.depth + 1 >= 3
    assert (levels[0].size, levels[0].max_children) == (tok.num_roots, tok.max_root_chunks)
    assert (levels[-2].size, levels[-2].max_children) == (tok.num_chunks, tok.max_chunk_chars)
    assert levels[-1] == Level("chars", tok.num_chars, 0)
    assert tok.num_chars == len(tok.alphabet) == len(set(tok.alphabet))
    for i, (parent, child) in enumerate(zip(levels, levels[1:])):  # the levels chain
        table, lengths = tok.expansion_table(i)
        assert table.shape == (parent.size, parent.max_children) and lengths.shape == (parent.size,)
        assert int(table.max()) == child.pad_id == child.size  # pads are one past the real ids
        assert parent.size >= child.size  # a BPE vocabulary holds the one below
        assert tok.level_index(parent.name) == i


def test_expansion_tables(tok):
    """Each row expands to exactly the tokens of the next level whose decoded text is the
    parent's text, padded with the child level's pad id."""
    for level in range(tok.depth):
        parent, child = tok.levels[level], tok.levels[level + 1]
        table, lengths = tok.expansion_table(level)
        assert table.dtype == torch.long and lengths.dtype == torch.long
        mask = torch.arange(parent.max_children)[None, :] < lengths[:, None]
        assert bool((table[~mask] == child.pad_id).all())
        assert bool((table[mask] < child.size).all()) and bool((table[mask] >= 0).all())
        assert bool((lengths >= 1).all()) and int(lengths.max()) <= parent.max_children
        rows, lens = table.tolist(), lengths.tolist()
        for i in range(parent.size):
            real = rows[i][: lens[i]]
            assert real == tok.children(level, i)
            assert tok.decode_level(real, level + 1) == tok.token_text(level, i) == tok.decode_level([i], level)
            if level == tok.depth - 1:
                assert real == tok.char_ids(tok.spell(i))


def test_expansion_table_rejects_unknown_level(tiny_tokenizer, four_level_tokenizer):
    for tok in (tiny_tokenizer, four_level_tokenizer):
        for level in (tok.depth, -1, 7, "chars", "nope"):
            with pytest.raises(ValueError, match="level"):
                tok.expansion_table(level)
        assert tok.expansion_table("roots")[0] is tok.expansion_table(0)[0]


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


# ---------------------------------------------------------------------- level lists
def test_shorthand_is_the_default_level_list(small_text):
    text = small_text[:20000]
    short = HierarchicalTokenizer.train(text, num_chunks=100, num_roots=150, max_chunk_chars=6, max_root_chunks=3)
    specs = [("roots", 150, 3), ("chunks", 100, 6)]
    assert default_specs(100, 150, 6, 3) == [Level(*s) for s in specs]
    for levels in (specs, [Level(*s) for s in specs],
                   [dict(name=n, size=k, max_children=m) for n, k, m in specs],
                   parse_specs("roots:150:3,chunks:100:6")):
        assert HierarchicalTokenizer.train(text, levels=levels) == short
    # the level list replaces the size arguments
    assert HierarchicalTokenizer.train(text, 300, 400, levels=specs) == short


def test_built_from(tiny_tokenizer, four_level_tokenizer):
    assert tiny_tokenizer.built_from([("roots", 192, 4), ("chunks", 128, 16)])
    assert tiny_tokenizer.built_from(default_specs())  # a BPE may learn fewer than asked
    assert not tiny_tokenizer.built_from([("roots", 192, 3), ("chunks", 128, 16)])
    assert not tiny_tokenizer.built_from([("roots", 100, 4), ("chunks", 100, 16)])
    assert not tiny_tokenizer.built_from([("top", 192, 4), ("chunks", 128, 16)])
    assert not tiny_tokenizer.built_from(FOUR_LEVELS)
    assert four_level_tokenizer.built_from(FOUR_LEVELS)


def test_one_level_above_the_characters(small_text):
    tok = HierarchicalTokenizer.train(small_text, levels=[("words", 200, 6)])
    assert [lv.name for lv in tok.levels] == ["words", "chars"] and tok.depth == 1
    assert tok.num_roots == tok.num_chunks == 200  # the top is also the level spelled in characters
    assert tok.decode(tok.encode(small_text)) == small_text
    assert tok.encode(small_text) == tok.encode_chunks(small_text)
    table, lengths = tok.expansion_table(0)
    assert table.shape == (200, 6) and int(lengths.max()) <= 6
    st = tok.stats(small_text)
    assert st["chars_per_manager_step"] == st["words.chars_per_token"] == st["chars_per_chunk"]


@pytest.mark.parametrize("levels,match", [
    ([], "at least one level"),
    ("roots:2048:4", "list"),
    ([("roots", 2048, 0)], "max_children"),
    ([("roots", 0, 4)], "size"),
    ([("roots", 2048, True)], "max_children"),
    ([("roots", 20.5, 4)], "size"),
    ([("roots", 40, 4)], "smaller than the alphabet"),
    ([("roots", 300, 4), ("chunks", 500, 8)], "sizes grow toward the top"),
    ([("roots", 300, 4), ("roots", 200, 8)], "differ"),
    ([("chars", 300, 4)], "implied characters"),
    ([("2roots", 300, 4)], "name"),
    ([("roots", 300, 4, 1)], "name, size, max_children"),
    ([{"name": "roots", "size": 300}], "name, size, max_children"),
    ([("roots", PUA_SIZE + 10, 4), ("chunks", PUA_SIZE + 1, 8)], "exceeds"),
])
def test_bad_level_lists_raise_one_clear_error(small_text, levels, match):
    with pytest.raises(LevelSpecError, match=match) as info:
        HierarchicalTokenizer.train(small_text[:5000], levels=levels)
    assert isinstance(info.value, ValueError) and isinstance(info.value, FractalFloodError)
    assert "\n" not in str(info.value)


def test_parse_and_format_level_specs():
    specs = parse_specs(" roots:2048:4, chunks:1024:16 ")
    assert specs == [Level("roots", 2048, 4), Level("chunks", 1024, 16)] == default_specs()
    assert format_specs(specs) == "roots:2048:4,chunks:1024:16"
    assert format_specs(specs + [Level("chars", 65, 0)]) == "roots:2048:4,chunks:1024:16"
    assert parse_specs(format_specs(specs)) == specs


@pytest.mark.parametrize("text,match", [
    ("", "at least one level"),
    (" , ", "at least one level"),
    ("roots:2048", "name:size:max_children"),
    ("roots:2048:4:1", "name:size:max_children"),
    ("roots::4", "name:size:max_children"),
    ("roots:2048:4,", "name:size:max_children"),
    ("roots:many:4", "integers"),
    ("roots:2048:0", "max_children must be >= 1"),
    ("roots:-5:4", "size must be >= 1"),
    ("roots:100:4,chunks:200:8", "grow toward the top"),
    ("a b:100:4", "name"),
])
def test_parse_rejects_bad_specs(text, match):
    with pytest.raises(LevelSpecError, match=match):
        parse_specs(text)


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


def test_saved_file_is_readable_json(small_tok, tmp_path):
    tok = small_tok
    path = tmp_path / "tok.json"
    tok.save(path)
    raw = path.read_text(encoding="utf-8")
    assert raw.count("\n") > 100  # indented, one entry a line: readable in an editor
    data = json.loads(raw)
    assert data["format"] == "fractal-flood-tokenizer" and data["version"] == 2
    assert data["alphabet"] == tok.alphabet
    assert [(lv["name"], lv["max_children"]) for lv in data["levels"]] == \
        [(lv.name, lv.max_children) for lv in tok.levels[:-1]]
    # the level spelled in characters stores its spellings, the others their children's ids
    assert data["levels"][-1]["children"] == [tok.spell(c) for c in range(tok.num_chunks)]
    for i, lv in enumerate(data["levels"][:-1]):
        assert lv["children"] == [tok.children(i, t) for t in range(tok.levels[i].size)]


def as_version_1(tok: HierarchicalTokenizer) -> dict:
    """A two-level tokenizer in the version 1 layout (what files written before version 2,
    such as the first shipped tokenizer, hold)."""
    roots, chunks = tok.to_dict()["levels"]
    return {"format": "fractal-flood-tokenizer", "version": 1, "alphabet": tok.alphabet,
            "max_chunk_chars": chunks["max_children"], "max_root_chunks": roots["max_children"],
            "chunks": chunks["children"], "roots": roots["children"],
            "chunk_bpe": chunks["bpe"], "root_bpe": roots["bpe"]}


def test_version_1_files_load(tiny_tokenizer, tmp_path, small_text):
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(as_version_1(tiny_tokenizer), ensure_ascii=False), encoding="utf-8")
    loaded = HierarchicalTokenizer.load(path)
    assert loaded == tiny_tokenizer and loaded.levels == tiny_tokenizer.levels
    assert loaded.encode(small_text) == tiny_tokenizer.encode(small_text)
    loaded.save(path)  # saving writes version 2
    assert json.loads(path.read_text(encoding="utf-8"))["version"] == 2
    assert HierarchicalTokenizer.load(path) == tiny_tokenizer


def test_shipped_tokenizer_loads_round_trips_and_retrains(corpus_text, default_tokenizer, tmp_path):
    path = ckpt.default_model_dir() / ckpt.TOKENIZER_FILE
    version = json.loads(path.read_text(encoding="utf-8"))["version"]
    shipped = HierarchicalTokenizer.load(path)
    tail = corpus_text[-20000:]
    for i in range(shipped.depth + 1):
        assert shipped.decode_level(shipped.encode_level(tail, i), i) == tail
    shipped.save(tmp_path / "again.json")
    assert HierarchicalTokenizer.load(tmp_path / "again.json") == shipped
    # training with the shipped levels on the shipped corpus gives the shipped tokenizer
    specs = shipped.levels[:-1]
    if version == 1 or specs == default_specs():
        # a version 1 file is the two-level default: train()'s shorthand must still make it
        assert specs == default_specs()
        assert default_tokenizer == shipped
    else:
        assert HierarchicalTokenizer.train(corpus_text, levels=specs) == shipped


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


def _swap_two_chunks(chunks):
    chunks[3], chunks[4] = chunks[4], chunks[3]


def _set(key, value):
    return lambda d: d.__setitem__(key, value)


def _level(i, change):
    return lambda d: change(d["levels"][i])


def _swap_bpes(d):
    d["levels"][0]["bpe"], d["levels"][1]["bpe"] = d["levels"][1]["bpe"], d["levels"][0]["bpe"]


FILE_DAMAGE = {  # any version
    "truncated": _truncate,
    "empty": lambda p: p.write_text("", encoding="utf-8"),
    "not_utf8": lambda p: p.write_bytes(b"\xff\xfe\x00garbage"),
    "json_list": lambda p: p.write_text("[1, 2, 3]", encoding="utf-8"),
    "wrong_format": _edit(_set("format", "some-other-tokenizer")),
    "wrong_version": _edit(_set("version", 99)),
    "version_true": _edit(_set("version", True)),
    "version_string": _edit(_set("version", "2")),
    "missing_alphabet": _edit(lambda d: d.pop("alphabet")),
    "alphabet_a_list": _edit(lambda d: d.__setitem__("alphabet", list(d["alphabet"]))),
    "alphabet_repeats": _edit(lambda d: d.__setitem__("alphabet", d["alphabet"] + d["alphabet"][0])),
    "alphabet_short": _edit(lambda d: d.__setitem__("alphabet", d["alphabet"][1:])),
}

CORRUPTIONS_V2 = {
    **FILE_DAMAGE,
    "missing_levels": _edit(lambda d: d.pop("levels")),
    "levels_empty": _edit(_set("levels", [])),
    "levels_not_a_list": _edit(lambda d: d.__setitem__("levels", {"0": d["levels"][0]})),
    "extra_key": _edit(_set("comment", "hello")),
    "as_version_1": _edit(_set("version", 1)),
    "level_missing_bpe": _edit(_level(0, lambda lv: lv.pop("bpe"))),
    "level_extra_key": _edit(_level(-1, lambda lv: lv.__setitem__("size", 3))),
    "level_not_a_dict": _edit(lambda d: d["levels"].__setitem__(0, "roots")),
    "name_chars": _edit(_level(0, _set("name", "chars"))),
    "name_not_a_string": _edit(_level(0, _set("name", 7))),
    "names_repeat": _edit(lambda d: d["levels"][1].__setitem__("name", d["levels"][0]["name"])),
    "bound_zero": _edit(_level(0, _set("max_children", 0))),
    "bound_bool": _edit(_level(0, _set("max_children", True))),
    "bound_a_string": _edit(_level(-1, _set("max_children", "16"))),
    "bound_below_chunks": _edit(_level(-1, _set("max_children", 1))),
    "bound_below_top": _edit(_level(0, _set("max_children", 1))),
    "tampered_chunks": _edit(_level(-1, lambda lv: _swap_two_chunks(lv["children"]))),
    "tampered_chunk_text": _edit(_level(-1, lambda lv: lv["children"].__setitem__(5, "zzz"))),
    "tampered_top": _edit(_level(0, lambda lv: lv["children"].__setitem__(0, [1, 2]))),
    "tampered_level_1": _edit(_level(1, lambda lv: lv["children"].__setitem__(-1, lv["children"][-2]))),
    "chunks_dropped": _edit(_level(-1, lambda lv: lv["children"].pop())),
    "levels_reversed": _edit(lambda d: d["levels"].reverse()),
    "bottom_level_dropped": _edit(lambda d: d["levels"].pop()),
    "bpes_swapped": _edit(_swap_bpes),
    "bpe_not_a_model": _edit(_level(-1, _set("bpe", {"model": "nonsense"}))),
    "bpe_a_list": _edit(_level(0, _set("bpe", [1, 2]))),
}

CORRUPTIONS_V1 = {
    **FILE_DAMAGE,
    "as_version_2": _edit(_set("version", 2)),
    "missing_chunk_bpe": _edit(lambda d: d.pop("chunk_bpe")),
    "missing_root_bpe": _edit(lambda d: d.pop("root_bpe")),
    "missing_chunks": _edit(lambda d: d.pop("chunks")),
    "missing_max_chunk_chars": _edit(lambda d: d.pop("max_chunk_chars")),
    "tampered_chunks": _edit(lambda d: _swap_two_chunks(d["chunks"])),
    "tampered_chunk_text": _edit(lambda d: d["chunks"].__setitem__(5, "zzz")),
    "tampered_roots": _edit(lambda d: d["roots"].__setitem__(0, [1, 2])),
    "chunk_bpe_not_a_model": _edit(_set("chunk_bpe", {"model": "nonsense"})),
    "bound_below_chunks": _edit(_set("max_chunk_chars", 1)),
    "bound_a_string": _edit(_set("max_root_chunks", "4")),
    "bpes_swapped": _edit(lambda d: d.update(chunk_bpe=d["root_bpe"], root_bpe=d["chunk_bpe"])),
}


def _assert_load_fails_naming(path: Path) -> None:
    with pytest.raises(TokenizerFileError) as info:
        HierarchicalTokenizer.load(path)
    msg = str(info.value)
    assert str(path) in msg and "\n" not in msg  # one line, naming the file
    assert isinstance(info.value, FractalFloodError)


@pytest.mark.parametrize("name", sorted(CORRUPTIONS_V2))
@pytest.mark.parametrize("fixture", ["tiny_tokenizer", "four_level_tokenizer"])
def test_corrupt_file_raises_naming_the_file(request, fixture, tmp_path, name):
    path = tmp_path / f"{name}.json"
    request.getfixturevalue(fixture).save(path)
    HierarchicalTokenizer.load(path)  # intact, it loads
    CORRUPTIONS_V2[name](path)
    _assert_load_fails_naming(path)


@pytest.mark.parametrize("name", sorted(CORRUPTIONS_V1))
def test_corrupt_version_1_file_raises_naming_the_file(tiny_tokenizer, tmp_path, name):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(as_version_1(tiny_tokenizer)), encoding="utf-8")
    HierarchicalTokenizer.load(path)
    CORRUPTIONS_V1[name](path)
    _assert_load_fails_naming(path)


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
    assert s["chars_per_manager_step"] == s["chars_per_root"] == s["roots.chars_per_token"]
    assert s["depth"] == 2 and s["levels"] == "roots:2048:4,chunks:1024:16"


def test_stats_report_every_level(small_tok, small_text):
    tok = small_tok
    s = tok.stats(small_text)
    ids = tok.encode_levels(small_text)
    assert s["depth"] == tok.depth and parse_specs(s["levels"]) == tok.levels[:-1]
    for i, lv in enumerate(tok.levels[:-1]):
        assert s[f"{lv.name}.tokens"] == len(ids[i])
        assert s[f"{lv.name}.chars_per_token"] == pytest.approx(len(small_text) / len(ids[i]))
        assert s[f"{lv.name}.children_per_token"] == pytest.approx(len(ids[i + 1]) / len(ids[i]))
        assert 1 <= s[f"{lv.name}.longest"] <= lv.max_children
    assert s["chars_per_manager_step"] == pytest.approx(len(small_text) / len(ids[0]))
    # coarser levels carry more characters per token
    per_token = [s[f"{lv.name}.chars_per_token"] for lv in tok.levels[:-1]]
    assert per_token == sorted(per_token, reverse=True)
    assert (s["roots"], s["chunks"], s["chars"]) == (len(ids[0]), len(ids[-2]), len(small_text))


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


def test_repr_names_sizes(tiny_tokenizer, four_level_tokenizer):
    r = repr(tiny_tokenizer)
    assert "chunks=128 " in r and "roots=192 " in r
    r = repr(four_level_tokenizer)
    assert all(f"{lv.name}={lv.size}" in r for lv in four_level_tokenizer.levels)
