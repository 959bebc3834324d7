"""Decoders: the Flash Flood (best-of-K, adaptive, memory-bounded batches) against the
sequential reference loop, with a tiny trained renderer; render fidelity of the shipped model.

Every decoder draws item i's try d from the same counter-based noise, so the fast paths must
give exactly the sequential decoder's text, not just similar text.
"""

import math

import pytest
import torch

from fractal_flood.corpus.reader import load_corpus
from fractal_flood.render.base import DecodeOptions
from fractal_flood.render.canvas import draw, score
from fractal_flood.render.choose import best_of_k
from fractal_flood.render.decoders import make_decoder
from fractal_flood.render.flood import AdaptiveFloodDecoder, FlashFloodDecoder
from fractal_flood.render.sequential import SequentialDecoder

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def roots(tiny_trained_tokenizer, small_text):
    """~100 roots of real text, plus a few rare ids from the end of the vocabulary."""
    ids = tiny_trained_tokenizer.encode(small_text[5000:5300])
    n = tiny_trained_tokenizer.num_roots
    return ids + [n - 1, n - 2, 0, n // 2]


def flood(model, tok, **kw):
    return FlashFloodDecoder(model, tok.alphabet, DecodeOptions(**kw))


def adaptive(model, tok, **kw):
    return AdaptiveFloodDecoder(model, tok.alphabet, DecodeOptions(**kw))


def sequential(model, tok, **kw):
    return SequentialDecoder(model, tok.alphabet, DecodeOptions(**kw))


def same_render(a, b, energy_tol=1e-4):
    """Same text, same per-item structure, same chosen energies (batching changes float
    rounding only)."""
    assert a.text == b.text
    assert torch.equal(a.tokens, b.tokens)
    assert len(a.counts) == len(b.counts)
    for ca, cb in zip(a.counts, b.counts):
        assert torch.equal(ca, cb)
    for ea, eb in zip(a.energies, b.energies):
        if ea is not None and eb is not None:  # a K = 1 flood scores nothing unless asked
            torch.testing.assert_close(ea.float(), eb.float(), atol=energy_tol, rtol=0)


# ---------------------------------------------------------------- flood == sequential


def test_flood_k1_equals_sequential_one_try(tiny_renderer, tiny_trained_tokenizer, roots):
    tok = tiny_renderer, tiny_trained_tokenizer
    f = flood(*tok, k=1).render(roots)
    s = sequential(*tok, max_tries=1).render(roots)
    same_render(f, s)
    assert f.num_roots == s.num_roots == len(roots)
    assert len(f.text) > len(roots)  # it rendered something


@pytest.mark.parametrize("threshold,max_tries,temperature", [
    (0.5, 10, 0.0),  # the plan's defaults
    (0.3, 4, 1.0),
    (0.15, 3, 0.7),
    (-math.inf, 3, 1.5),  # nothing accepted: every try, then the best
    (math.inf, 5, 1.0),  # everything accepted on the first try
])
def test_adaptive_equals_sequential(tiny_renderer, tiny_trained_tokenizer, roots, threshold, max_tries,
                                    temperature):
    kw = dict(threshold=threshold, max_tries=max_tries, temperature=temperature, seed=7)
    a = adaptive(tiny_renderer, tiny_trained_tokenizer, **kw).render(roots)
    s = sequential(tiny_renderer, tiny_trained_tokenizer, **kw).render(roots)
    same_render(a, s)
    # same rejection semantics: same number of draws and acceptances per level
    for la, ls in zip(a.levels, s.levels):
        assert la.items == ls.items
        assert la.draws == ls.draws
        assert la.accepted == ls.accepted


def test_adaptive_settings_exercise_rejection(tiny_renderer, tiny_trained_tokenizer, roots):
    """The thresholds above must leave some items accepted and some rejected at first, or
    the equality tests would not test the re-flooding of rejects."""
    a = adaptive(tiny_renderer, tiny_trained_tokenizer, threshold=0.3, max_tries=4,
                 temperature=1.0, seed=7).render(roots)
    for st in a.levels:
        assert st.rounds >= 2  # some item was re-flooded
        assert st.items < st.draws < st.items * 4
        assert 0 < st.accepted


@pytest.mark.parametrize("k,temperature", [(3, 0.0), (4, 1.0)])
def test_best_of_k_equals_sequential_without_threshold(tiny_renderer, tiny_trained_tokenizer, roots,
                                                       k, temperature):
    f = flood(tiny_renderer, tiny_trained_tokenizer, k=k, temperature=temperature, seed=3).render(roots)
    s = sequential(tiny_renderer, tiny_trained_tokenizer, threshold=-math.inf, max_tries=k,
                   temperature=temperature, seed=3).render(roots)
    same_render(f, s)


def test_best_of_k_picks_the_lowest_energy(tiny_renderer, tiny_trained_tokenizer, roots):
    """best_of_k's choice is the argmin over the K single draws of each item."""
    m = tiny_renderer
    cond = torch.tensor(roots)
    items = torch.arange(len(roots))
    ch = best_of_k(m, 0, cond, items, None, 4, seed=5, temperature=1.0, need_energy=True)
    singles = []
    for d in range(4):
        cand = draw(m, 0, cond, items, torch.full_like(cond, d), None, 5, 1.0)
        singles.append((cand, score(m, 0, cond, cand.tokens, None)))
    energies = torch.stack([e for _, e in singles], 1)  # (N, K)
    torch.testing.assert_close(ch.energy, energies.min(1).values, atol=1e-5, rtol=0)
    pick = energies.argmin(1)
    for i in range(len(roots)):
        assert torch.equal(ch.tokens[i], singles[pick[i]][0].tokens[i])
        assert torch.equal(ch.child_lengths[i], singles[pick[i]][0].child_lengths[i])
    # more candidates never raise the chosen energy (K=4 includes K=1's draw)
    one = best_of_k(m, 0, cond, items, None, 1, seed=5, temperature=1.0, need_energy=True)
    assert (ch.energy <= one.energy + 1e-5).all()


# ---------------------------------------------------------------- packed == padded reference


@pytest.mark.parametrize("mode", ["flood-k1", "flood-k3", "adaptive", "flood-k1-energies"])
def test_packed_flood_equals_padded_reference(tiny_renderer, tiny_trained_tokenizer, roots, mode):
    """Canvases sized to the lengths (one pass per length) render exactly what the padded,
    masked reference renders from the same draws, with far fewer FLOPs."""
    kw = dict(temperature=1.0, seed=13)
    if mode == "adaptive":
        make = lambda **o: adaptive(tiny_renderer, tiny_trained_tokenizer, threshold=0.3, max_tries=4, **kw, **o)
    else:
        k = 3 if mode == "flood-k3" else 1
        make = lambda **o: flood(tiny_renderer, tiny_trained_tokenizer, k=k,
                                 energies=mode.endswith("energies"), **kw, **o)
    packed, padded = make().render(roots), make(packed=False).render(roots)
    same_render(packed, padded)
    assert packed.levels[0].flops == padded.levels[0].flops  # the top level is never packed
    assert packed.levels[1].flops < 0.6 * padded.levels[1].flops
    assert packed.levels[1].positions < padded.levels[1].positions


def test_k1_flood_runs_no_energy_pass(tiny_renderer, tiny_trained_tokenizer, roots):
    """Nothing reads the energy of a K = 1 flood: one denoising pass per level and length,
    no scoring pass, and the same text as when the energies are asked for."""
    plain = flood(tiny_renderer, tiny_trained_tokenizer).render(roots)
    scored = flood(tiny_renderer, tiny_trained_tokenizer, energies=True).render(roots)
    same_render(plain, scored)
    assert all(e is None for e in plain.energies)
    assert all(e is not None and len(e) == st.items for e, st in zip(scored.energies, scored.levels))
    assert plain.levels[0].passes == 1
    lengths = {int(n) for n in plain.counts[1]}  # one pass per distinct chunk length
    assert plain.levels[1].passes == len(lengths)
    for a, b in zip(plain.levels, scored.levels):
        assert b.passes == 2 * a.passes and b.flops > a.flops
        assert a.as_dict()["accepted"] is None and b.as_dict()["accepted"] is not None


# ---------------------------------------------------------------- bounded memory


@pytest.mark.parametrize("max_batch", [3, 7])
@pytest.mark.parametrize("mode", ["flood-k1", "flood-k3", "adaptive"])
def test_bounded_batches_render_the_same(tiny_renderer, tiny_trained_tokenizer, roots, max_batch, mode):
    kw = dict(temperature=1.0, seed=11)
    if mode == "adaptive":
        make = lambda **o: adaptive(tiny_renderer, tiny_trained_tokenizer, threshold=0.3, max_tries=4,
                                    **kw, **o)
    else:
        k = 1 if mode == "flood-k1" else 3
        make = lambda **o: flood(tiny_renderer, tiny_trained_tokenizer, k=k, **kw, **o)
    big = make().render(roots)
    small = make(max_batch=max_batch).render(roots)
    same_render(big, small)
    # the small batches really were small: more passes
    assert small.passes > big.passes


# ---------------------------------------------------------------- pooled requests


def test_tensor_seeds_draw_what_int_seeds_draw():
    from fractal_flood.sampling import draws
    seeds = [0, 7, 2**31 + 3, 2**40 + 9, 2**63 - 1]
    item = torch.arange(5)
    draw_id = torch.tensor([0, 2, 1, 0, 3])
    for stream in (draws.NOISE_STREAM, draws.GUMBEL_STREAM):
        pooled = draws.hash_counters(torch.tensor(seeds), stream, 1, item, draw_id, (3, 4))
        for i, seed in enumerate(seeds):
            alone = draws.hash_counters(seed, stream, 1, item[i:i + 1], draw_id[i:i + 1], (3, 4))
            assert torch.equal(pooled[i:i + 1], alone)


@pytest.mark.parametrize("mode", ["flood-k1", "flood-k1-t0", "flood-k3", "adaptive", "energies"])
def test_pooled_render_equals_each_block_alone(tiny_renderer, tiny_trained_tokenizer, roots, mode):
    """The engine's pooled flood: several requests' blocks in one flood, each with its own
    seed, give each block exactly its solo render (text, structure, energies)."""
    kw = {"flood-k1": dict(temperature=1.0), "flood-k1-t0": dict(temperature=0.0),
          "flood-k3": dict(k=3, temperature=0.8), "adaptive": dict(threshold=0.3, max_tries=3, temperature=1.0),
          "energies": dict(temperature=1.0, energies=True)}[mode]
    make = (lambda seed: adaptive(tiny_renderer, tiny_trained_tokenizer, seed=seed, **kw)) if mode == "adaptive" \
        else (lambda seed: flood(tiny_renderer, tiny_trained_tokenizer, seed=seed, **kw))
    blocks = [roots[:7], roots[7:8], roots[8:30], roots[-6:]]
    seeds = [5, 2**40 + 1, 5, 123]  # two blocks share a seed: numbered within their own block
    from fractal_flood.render.result import split_render
    pooled = make(999).render_pooled(blocks, seeds)
    parts = split_render(pooled, [len(b) for b in blocks])
    for block, seed, part in zip(blocks, seeds, parts):
        alone = make(seed).render(block)
        assert part["root_texts"] == alone.root_texts()
        assert part["counts"] == [c.tolist() for c in alone.counts]
        for got, want in zip(part["energies"], alone.energies):
            assert (got is None) == (want is None)
            if want is not None:
                torch.testing.assert_close(torch.tensor(got), want.float(), atol=1e-4, rtol=0)
    if mode != "flood-k1-t0":  # at temperature the seed matters: pooling did not just reuse one
        assert parts[2]["root_texts"] != make(123).render(blocks[2]).root_texts()


@pytest.mark.parametrize("name,kw", [("flood", dict(temperature=1.0)), ("flood", dict(k=3, temperature=0.8)),
                                     ("adaptive", dict(threshold=0.3, max_tries=3, temperature=1.0)),
                                     ("sequential", dict(threshold=0.3, max_tries=2, temperature=1.0))])
def test_blocks_render_the_text_of_the_whole(tiny_renderer, tiny_trained_tokenizer, roots, name, kw):
    """Item numbers run on across blocks (offsets), so cutting a request's roots into blocks,
    anywhere, never changes its text: the engine may cut wherever it likes."""
    from fractal_flood.render.result import advance
    dec = make_decoder(name, tiny_renderer, tiny_trained_tokenizer.alphabet, DecodeOptions(seed=4, **kw))
    some = roots[:40]
    whole = dec.render(some)
    for cuts in ([13], [1, 2, 30]):
        texts, offsets, start = [], [0] * tiny_renderer.num_levels, 0
        for end in cuts + [len(some)]:
            part = dec.render(some[start:end], offsets)
            texts += part.root_texts()
            offsets, start = advance(offsets, part.counts), end
        assert texts == whole.root_texts()
        assert offsets == [len(c) for c in whole.counts]
    # numbering really matters: a block rendered from 0 instead of its offsets differs
    tail = dec.render(some[13:]).root_texts()
    assert tail != whole.root_texts()[13:]


def test_pooled_render_checks_its_sizes(tiny_renderer, tiny_trained_tokenizer, roots):
    dec = flood(tiny_renderer, tiny_trained_tokenizer)
    with pytest.raises(ValueError, match="sizes"):
        from fractal_flood.render.flood import render
        render(dec.model, dec.alphabet, torch.tensor(roots[:4]), dec.choose, 0.5, [1, 2], [1, 2])


# ---------------------------------------------------------------- seeds


@pytest.mark.parametrize("name", ["flood", "adaptive", "sequential"])
def test_same_seed_same_text(tiny_renderer, tiny_trained_tokenizer, roots, name):
    opts = DecodeOptions(k=2, temperature=1.0, max_tries=3, threshold=0.3, seed=21)
    a = make_decoder(name, tiny_renderer, tiny_trained_tokenizer.alphabet, opts).render(roots[:15])
    b = make_decoder(name, tiny_renderer, tiny_trained_tokenizer.alphabet, opts).render(roots[:15])
    same_render(a, b, energy_tol=0)


def test_different_seeds_differ_at_temperature(tiny_renderer, tiny_trained_tokenizer, roots):
    texts = {flood(tiny_renderer, tiny_trained_tokenizer, temperature=1.0, seed=s).render(roots).text
             for s in range(3)}
    assert len(texts) == 3


# ---------------------------------------------------------------- pads and structure


def test_pads_never_reach_the_next_level(tiny_renderer, tiny_trained_tokenizer, roots):
    tok = tiny_trained_tokenizer
    short = [r for r in roots if len(tok.expand(r)) < tok.max_root_chunks]
    assert short, "need roots shorter than max_root_chunks"
    assert any(len(tok.spell(c)) < tok.max_chunk_chars for r in short for c in tok.expand(r))
    dec = flood(tiny_renderer, tok, temperature=1.0, seed=2)
    res = dec.render(roots)
    # what level 0 chose, redone by hand: its non-pad ids are exactly the level-1 items
    level0 = best_of_k(tiny_renderer, 0, torch.tensor(roots), torch.arange(len(roots)), None, 1, seed=2,
                       temperature=1.0, need_energy=False).tokens
    real = level0 != tiny_renderer.pad_id(0)
    assert res.levels[1].items == int(real.sum()) == res.num_chunks == int(res.counts[0].sum())
    assert torch.equal(res.counts[0], real.sum(1))
    assert (res.counts[0] <= tok.max_root_chunks).all()
    assert (res.counts[1] <= tok.max_chunk_chars).all()
    assert len(res.counts[1]) == res.num_chunks
    # no pad id and nothing outside the alphabet in the output
    assert res.tokens.numel() == int(res.counts[1].sum()) == len(res.text)
    assert res.tokens.min() >= 0 and res.tokens.max() < tok.num_chars
    assert set(res.text) <= set(tok.alphabet)


def test_render_of_a_correct_model_pads_short_roots_correctly(shipped_renderer, shipped_tokenizer):
    """With the shipped model, short roots and short chunks render to exactly their text,
    with no pad characters: the length of each root's text is its true length."""
    tok = shipped_tokenizer
    ids = tok.encode("To be, or not to be: that is the question.\nI\n")
    assert any(len(tok.expand(r)) < tok.max_root_chunks for r in ids)
    res = FlashFloodDecoder(shipped_renderer, tok.alphabet).render(ids)
    assert res.root_texts() == [tok.root_text(r) for r in ids]
    assert res.num_chunks == sum(len(tok.expand(r)) for r in ids)


@pytest.mark.parametrize("name", ["flood", "adaptive", "sequential"])
def test_root_texts_concatenate_to_text(tiny_renderer, tiny_trained_tokenizer, roots, name):
    opts = DecodeOptions(temperature=1.0, seed=4, max_tries=2)
    res = make_decoder(name, tiny_renderer, tiny_trained_tokenizer.alphabet, opts).render(roots)
    parts = res.root_texts()
    assert len(parts) == len(roots) == res.num_roots
    assert "".join(parts) == res.text
    st = res.stats()
    assert st["roots"] == len(roots) and st["chars"] == len(res.text) and st["chunks"] == res.num_chunks


def test_empty_render(tiny_renderer, tiny_trained_tokenizer):
    for dec in (flood(tiny_renderer, tiny_trained_tokenizer),
                adaptive(tiny_renderer, tiny_trained_tokenizer),
                sequential(tiny_renderer, tiny_trained_tokenizer)):
        res = dec.render([])
        assert res.text == "" and res.num_roots == 0 and res.root_texts() == []


# ---------------------------------------------------------------- work counts


@pytest.mark.parametrize("k", [1, 3])
def test_flood_stats(tiny_renderer, tiny_trained_tokenizer, roots, k):
    N = len(roots)
    res = flood(tiny_renderer, tiny_trained_tokenizer, k=k).render(roots)
    l0, l1 = res.levels
    M = res.num_chunks
    assert (l0.items, l1.items) == (N, M)
    assert (l0.draws, l1.draws) == (N * k, M * k)
    assert res.draws == (N + M) * k
    per_draw = 1 if k == 1 else 2  # denoise, and an energy pass where best-of-K needs one
    # the chunk lengths level 0 predicted, redone by hand
    top = best_of_k(tiny_renderer, 0, torch.tensor(roots), torch.arange(N), None, k, seed=0,
                    temperature=0.0, need_energy=k > 1)
    lengths = top.child_lengths[top.tokens != tiny_renderer.pad_id(0)]
    assert len(lengths) == M
    assert l0.passes == per_draw
    assert l1.passes == per_draw * len(set(lengths.tolist()))  # one pass per chunk length
    assert l0.positions == N * k * (1 + tiny_renderer.max_lens[0]) * per_draw
    assert l1.positions == k * int((1 + lengths).sum()) * per_draw  # exactly the real slots
    assert res.flops == l0.flops + l1.flops > 0
    # memory-bounded: at most max_batch sequences per pass
    res = flood(tiny_renderer, tiny_trained_tokenizer, k=k, max_batch=6).render(roots)
    assert res.levels[0].passes == per_draw * math.ceil(N * k / 6)
    assert res.levels[1].passes >= per_draw * math.ceil(res.num_chunks * k / 6)
    assert res.draws == (N + res.num_chunks) * k


def test_sequential_and_adaptive_stats(tiny_renderer, tiny_trained_tokenizer, roots):
    kw = dict(threshold=0.3, max_tries=4, temperature=1.0, seed=7)
    s = sequential(tiny_renderer, tiny_trained_tokenizer, **kw).render(roots)
    a = adaptive(tiny_renderer, tiny_trained_tokenizer, **kw).render(roots)
    for ls, la in zip(s.levels, a.levels):
        assert ls.passes == 2 * ls.draws  # one item, one try: two passes
        assert ls.items <= ls.draws <= 4 * ls.items
        assert la.passes >= 2 * la.rounds  # per round: a denoise and a score pass per length
        assert la.rounds <= 4
        assert ls.accepted <= ls.items
    assert a.levels[0].passes == 2 * a.levels[0].rounds  # the top level is one canvas size
    d = s.stats()
    assert d["draws"] == s.draws == sum(x["draws"] for x in d["levels"])
    assert d["passes"] == s.passes


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("bad", [dict(k=0), dict(k=-2), dict(k=1.5), dict(max_tries=0),
                                 dict(threshold=float("nan")), dict(temperature=-0.1),
                                 dict(temperature=float("nan")), dict(temperature=float("inf")),
                                 dict(max_batch=0)])
@pytest.mark.parametrize("name", ["flood", "adaptive", "sequential"])
def test_bad_options_raise_value_error(tiny_renderer, tiny_trained_tokenizer, bad, name):
    with pytest.raises(ValueError):
        make_decoder(name, tiny_renderer, tiny_trained_tokenizer.alphabet, DecodeOptions(**bad))


@pytest.mark.parametrize("name", ["flood", "adaptive", "sequential"])
def test_out_of_range_roots_raise_value_error(tiny_renderer, tiny_trained_tokenizer, name):
    dec = make_decoder(name, tiny_renderer, tiny_trained_tokenizer.alphabet)
    n = tiny_trained_tokenizer.num_roots
    for bad in ([0, n], [-1], [3, n + 100, 2]):
        with pytest.raises(ValueError, match="root ids"):
            dec.render(bad)
    assert dec.render([0, n - 1]).num_roots == 2


def test_unknown_decoder_name(tiny_renderer, tiny_trained_tokenizer):
    with pytest.raises(ValueError, match="unknown decoder"):
        make_decoder("beam", tiny_renderer, tiny_trained_tokenizer.alphabet)


# ---------------------------------------------------------------- the shipped model


def test_shipped_model_render_fidelity(shipped_renderer, shipped_tokenizer):
    """Flood (argmax, K=1) on the held-out tail of the corpus: >= 99.9% of roots exactly as
    the tokenizer decodes them (docs/DESIGN.md's render fidelity)."""
    tok = shipped_tokenizer
    text = load_corpus()[-2000:]
    ids = tok.encode(text)
    res = FlashFloodDecoder(shipped_renderer, tok.alphabet).render(ids)
    got = res.root_texts()
    assert len(got) == len(ids)
    exact = sum(g == tok.root_text(r) for g, r in zip(got, ids)) / len(ids)
    assert exact >= 0.999, exact
    assert res.num_chunks == sum(len(tok.expand(r)) for r in ids)  # pads learned at level 0
    if exact == 1.0:
        assert res.text == text
