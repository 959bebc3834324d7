"""Decoders: the Flash Flood (best-of-K, adaptive, memory-bounded batches) against the
sequential reference loop, with a tiny trained renderer; render fidelity of the shipped model.

Every decoder draws item i's try d from the same counter-based noise, so the fast paths must
give exactly the sequential decoder's text, not just similar text.
"""

import math

import pytest
import torch

from fractal_flood.corpus import load_corpus
from fractal_flood.decoding import (DecodeOptions, FlashFloodDecoder, SequentialDecoder,
                                    make_decoder)

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
    return FlashFloodDecoder(model, tok.alphabet, DecodeOptions(**kw), adaptive=True)


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
    """expand_level_parallel's choice is the argmin over the K single draws of each item."""
    dec = flood(tiny_renderer, tiny_trained_tokenizer, k=4, temperature=1.0, seed=5)
    cond = torch.tensor(roots)
    best, e_best = dec.expand_level_parallel(cond, 0)
    singles = []
    for d in range(4):
        cand, e = dec.expander.draw_and_score(0, cond, torch.arange(len(roots)), torch.full_like(cond, d))
        singles.append((cand, e))
    energies = torch.stack([e for _, e in singles], 1)  # (N, K)
    torch.testing.assert_close(e_best, energies.min(1).values, atol=1e-5, rtol=0)
    pick = energies.argmin(1)
    for i in range(len(roots)):
        assert torch.equal(best[i], singles[pick[i]][0][i])
    # more candidates never raise the chosen energy (K=4 includes K=1's draw)
    _, e_one = dec.expand_level_parallel(cond, 0, k=1)
    assert (e_best <= e_one + 1e-5).all()


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
    # the small batches really were small: more passes (and, for best-of-K, more batches)
    assert small.passes > big.passes
    if mode != "adaptive":
        assert small.levels[0].rounds > big.levels[0].rounds


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
    dec2 = flood(tiny_renderer, tok, temperature=1.0, seed=2)
    level0, _ = dec2.expand_level_parallel(torch.tensor(roots), 0)
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
    assert l0.passes == l1.passes == 2  # one denoising pass + one energy pass per level
    assert res.passes == 4
    # memory-bounded: per_batch = max_batch // k items per pass pair
    res = flood(tiny_renderer, tiny_trained_tokenizer, k=k, max_batch=6).render(roots)
    per = max(1, 6 // k)
    assert res.levels[0].passes == 2 * math.ceil(N / per)
    assert res.levels[1].passes == 2 * math.ceil(res.num_chunks / per)
    assert res.draws == (N + res.num_chunks) * k


def test_sequential_and_adaptive_stats(tiny_renderer, tiny_trained_tokenizer, roots):
    kw = dict(threshold=0.3, max_tries=4, temperature=1.0, seed=7)
    s = sequential(tiny_renderer, tiny_trained_tokenizer, **kw).render(roots)
    a = adaptive(tiny_renderer, tiny_trained_tokenizer, **kw).render(roots)
    for ls, la in zip(s.levels, a.levels):
        assert ls.passes == 2 * ls.draws  # one item, one try: two passes
        assert ls.items <= ls.draws <= 4 * ls.items
        assert la.passes == 2 * la.rounds  # one batch per round here
        assert la.rounds <= 4
        assert ls.accepted <= ls.items
    d = s.stats()
    assert d["draws"] == s.draws == sum(x["draws"] for x in d["levels"])
    assert d["passes"] == s.passes


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("bad", [dict(k=0), dict(k=-2), dict(k=1.5), dict(max_tries=0),
                                 dict(threshold=float("nan")), dict(temperature=-0.1),
                                 dict(max_batch=0)])
@pytest.mark.parametrize("name", ["flood", "adaptive", "sequential"])
def test_bad_options_raise_value_error(tiny_renderer, tiny_trained_tokenizer, bad, name):
    with pytest.raises(ValueError):
        make_decoder(name, tiny_renderer, tiny_trained_tokenizer.alphabet, DecodeOptions(**bad))


def test_expand_level_parallel_rejects_k0(tiny_renderer, tiny_trained_tokenizer):
    with pytest.raises(ValueError):
        flood(tiny_renderer, tiny_trained_tokenizer).expand_level_parallel(torch.tensor([1, 2]), 0, k=0)


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
    """Flood (argmax, K=1) on the held-out tail of the corpus: >= 99% of roots exactly as the
    tokenizer decodes them (docs/DESIGN.md's render fidelity)."""
    tok = shipped_tokenizer
    text = load_corpus()[-2000:]
    ids = tok.encode(text)
    res = FlashFloodDecoder(shipped_renderer, tok.alphabet).render(ids)
    got = res.root_texts()
    assert len(got) == len(ids)
    exact = sum(g == tok.root_text(r) for g, r in zip(got, ids)) / len(ids)
    assert exact >= 0.99, exact
    assert res.num_chunks == sum(len(tok.expand(r)) for r in ids)  # pads learned at level 0
    if exact == 1.0:
        assert res.text == text
