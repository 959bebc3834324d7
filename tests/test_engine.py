"""The batched engine against the plain solo path: every request's text is the text it gets
alone, whatever else runs, whenever it joins; slots, cancellation, the queue, text limits."""

import pytest

from fractal_flood.errors import FractalFloodError, UnknownCharacterError
from fractal_flood.generation.engine import Engine, QueueFull, Request, TextLimit, generate_solo
from fractal_flood.generation.pipeline import load_pipeline
from fractal_flood.render.base import DecodeOptions
from fractal_flood.render.result import split_render
from fractal_flood.sampling.tokens import SamplingConfig

pytestmark = pytest.mark.usefixtures("single_thread")

BLOCK = 5


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return load_pipeline(tiny_model_dir, device="cpu")


def requests_mix(stop_text: str) -> list:
    return [
        Request("ROMEO:\n", roots=12, sampling=SamplingConfig(0.8), seed=1),
        Request("", roots=7, sampling=SamplingConfig(1.0, top_k=20), seed=2),
        Request("First Citizen:\n", max_chars=40, sampling=SamplingConfig(0.9, top_p=0.9), seed=3),
        Request("KING", roots=16, sampling=SamplingConfig(0), seed=4),
        Request("JULIET:\n", roots=20, sampling=SamplingConfig(1.2), seed=5, stop=(stop_text,)),
        Request("a", roots=9, seed=6, decoder="adaptive", options=DecodeOptions(max_tries=2)),
        Request("ROMEO:\n", roots=12, sampling=SamplingConfig(0.8), seed=7),  # same prompt, new seed
    ]


def test_batched_text_equals_solo_text(pipe):
    """Three slots for seven requests: later ones join at block boundaries while others run."""
    # a stop string that really occurs: two characters from the middle of a solo run
    probe = generate_solo(pipe, Request("JULIET:\n", roots=20, sampling=SamplingConfig(1.2), seed=5), BLOCK)
    stop_text = probe.text[len(probe.text) // 2:len(probe.text) // 2 + 2]
    reqs = requests_mix(stop_text)
    solo = [generate_solo(pipe, r, BLOCK) for r in reqs]
    engine = Engine(pipe, max_batch=3, block_roots=BLOCK)
    streamed = {}

    def on_block(job, block):
        streamed.setdefault(id(job), []).append(block.text)

    jobs = [engine.submit(r, on_block) for r in reqs[:2]]
    engine.step()  # two run alone for a round
    jobs += [engine.submit(r, on_block) for r in reqs[2:]]
    while engine.step():
        pass
    assert engine.slots.active == 0 and engine.queued == 0
    for job, ref in zip(jobs, solo):
        got = job.completion
        assert got.text == ref.text, job.request
        assert got.finish_reason == ref.finish_reason
        if got.finish_reason == "stop":  # both drew the same roots, and stopped at the end of
            n = min(len(got.root_ids), len(ref.root_ids))  # the block that held the stop string:
            assert got.root_ids[:n] == ref.root_ids[:n]  # blocks are cut where rounds end
        else:
            assert got.root_ids == ref.root_ids
        assert "".join(streamed[id(job)]) == got.text
    assert solo[4].finish_reason == "stop" and stop_text not in solo[4].text
    assert solo[2].finish_reason == "length" and len(solo[2].text) == 40
    assert solo[0].text != solo[6].text  # seeds matter
    assert len({len(j.completion.root_ids) for j in jobs}) > 2  # lengths really differed


def test_one_request_alone_equals_solo(pipe):
    req = Request("ROMEO:\n", roots=11, sampling=SamplingConfig(0.8), seed=123456789012)
    got = Engine(pipe, max_batch=4, block_roots=BLOCK).run([req])[0]
    ref = generate_solo(pipe, req, BLOCK)
    assert got.text == ref.text and got.root_ids == ref.root_ids and got.blocks == 3
    # and the solo path is the pipeline's own generate
    assert ref.text == pipe.generate("ROMEO:\n", 11, SamplingConfig(0.8), 123456789012, BLOCK).text


def test_cancel_frees_the_slot(pipe):
    engine = Engine(pipe, max_batch=1, block_roots=BLOCK, max_queue=4)
    a = engine.submit(Request("", roots=50, seed=1))
    b = engine.submit(Request("", roots=6, seed=2))
    engine.step()
    assert engine.slots.owner == [a] and engine.queued == 1
    a.cancel()
    while engine.step():
        pass
    assert a.completion.finish_reason == "cancelled" and len(a.completion.root_ids) == BLOCK
    assert b.completion.text == generate_solo(pipe, Request("", roots=6, seed=2), BLOCK).text


def test_full_queue_refuses(pipe):
    engine = Engine(pipe, max_batch=2, block_roots=BLOCK, max_queue=1)
    for seed in range(3):  # two free slots + one waiting place
        engine.submit(Request("", roots=3, seed=seed))
    with pytest.raises(QueueFull, match="full"):
        engine.submit(Request("", roots=3, seed=9))
    engine.step()  # two admitted: room again
    engine.submit(Request("", roots=3, seed=9))


@pytest.mark.parametrize("bad", [dict(roots=0), dict(roots=2.5), dict(max_chars=-1), dict(seed=-1),
                                 dict(seed=2 ** 63), dict(stop=("",)), dict(decoder="nope"),
                                 dict(options=DecodeOptions(k=0))])
def test_bad_requests(pipe, bad):
    engine = Engine(pipe, max_batch=2)
    with pytest.raises(FractalFloodError):
        engine.submit(Request("", **bad))
    assert engine.queued == 0


def test_unknown_character_is_named(pipe):
    with pytest.raises(UnknownCharacterError) as info:
        Engine(pipe).submit(Request("ROMEO: caf\u00e9"))
    assert info.value.position == 10


def test_background_thread(pipe):
    engine = Engine(pipe, max_batch=2, block_roots=BLOCK)
    engine.start()
    try:
        jobs = [engine.submit(Request("", roots=8, seed=s)) for s in range(3)]
        for j in jobs:
            assert j.done.wait(60)
    finally:
        engine.stop()
    for s, j in enumerate(jobs):
        assert j.completion.text == generate_solo(pipe, Request("", roots=8, seed=s), BLOCK).text


def test_pooled_render_splits_back(pipe):
    reqs = [Request("", roots=n, seed=s) for s, n in enumerate((4, 9, 6))]
    pooled = Engine(pipe, max_batch=3, block_roots=BLOCK, pooled_render=True)
    got = pooled.run(reqs)
    # one flood per round for all three, each request drawn with its own seed: the solo text
    for g, r in zip(got, reqs):
        solo = generate_solo(pipe, r, BLOCK)
        assert g.root_ids == solo.root_ids and g.text == solo.text
    reference = Engine(pipe, max_batch=3, block_roots=BLOCK, pooled_render=False)
    assert [c.text for c in reference.run(reqs)] == [g.text for g in got]
    assert pooled.passes < reference.passes  # pooling really shared the passes
    for energies in (False, True):  # a K = 1 flood scores nothing unless energies are asked for
        dec = pipe.decoder_for(0, options=DecodeOptions(energies=energies))
        render = dec.render([7, 3, 11, 5, 2])
        parts = split_render(render, [2, 3])
        assert parts[0]["root_texts"] + parts[1]["root_texts"] == render.root_texts()
        for level in range(len(render.counts)):
            assert parts[0]["counts"][level] + parts[1]["counts"][level] == render.counts[level].tolist()
            if energies:
                assert parts[0]["energies"][level] + parts[1]["energies"][level] == render.energies[level].tolist()
            else:
                assert parts[0]["energies"][level] is None and parts[1]["energies"][level] is None


def test_text_limit_stop_across_blocks():
    lim = TextLimit(stop=("END",))
    assert lim.feed("abcE", False) == "ab"  # "cE" could start END: held back
    assert lim.feed("ND!", False) == "c" and lim.finish_reason == "stop"  # END spans the blocks
    assert lim.result == "abc"
    lim = TextLimit(stop=("END",))
    assert lim.feed("abcE", False) == "ab" and lim.feed("Nxyz", False) == "cENx"  # "yz" held
    lim = TextLimit(stop=("zz",), max_chars=5)
    assert lim.feed("abc", False) == "ab"
    assert lim.feed("defg", False) == "cde" and lim.finish_reason == "length"
    lim = TextLimit()
    assert lim.feed("abc", False) == "abc" and lim.feed("d", True) == "d"
    assert lim.finish_reason == "length"


def test_block_size_never_changes_text(pipe):
    """Item numbers run on across blocks, so the solo text is the same at any block size,
    and the engine may cut a request's roots wherever its rounds end."""
    req = Request("ROMEO:\n", roots=24, sampling=SamplingConfig(0.9), seed=11)
    solo = [generate_solo(pipe, req, b).text for b in (1, 7, 64)]
    assert solo[0] == solo[1] == solo[2]
    for block, join in ((5, 1), (20, 3)):
        assert Engine(pipe, max_batch=2, block_roots=block, join_every=join).run([req])[0].text == solo[0]


def test_join_every_bounds_the_wait_of_a_new_request(pipe):
    engine = Engine(pipe, max_batch=4, block_roots=30, join_every=2)
    a = engine.submit(Request("KING", roots=30, seed=1))
    sizes = {}
    b_holder = []

    orig = engine.slots.generate

    def generate(k):
        out = orig(k)
        if not b_holder:  # the second request arrives after the first manager steps
            b_holder.append(engine.submit(Request("", roots=30, seed=2),
                                          lambda job, block: sizes.setdefault(job.blocks, len(block.root_ids))))
        return out

    engine.slots.generate = generate
    while engine.step():
        pass
    b = b_holder[0]
    assert sizes[1] == 28  # joined after 2 of the round's 30 steps: a 28-root first block
    assert b.completion.text == generate_solo(pipe, Request("", roots=30, seed=2), 30).text
    assert a.completion.text == generate_solo(pipe, Request("KING", roots=30, seed=1), 30).text


def test_a_request_whose_roots_are_drawn_gives_its_slot_to_a_waiting_one_mid_round(pipe):
    """Two slots, a 30-root round: the 4-root request is answered after 4 steps, the
    waiting one takes its slot at once and is answered after 14; every text is its solo."""
    engine = Engine(pipe, max_batch=2, block_roots=30, join_every=2)
    reqs = [Request("KING", roots=30, seed=1), Request("", roots=4, seed=2), Request("a", roots=10, seed=3)]
    answered_at = {}
    jobs = [engine.submit(r, on_done=lambda j: answered_at.setdefault(j.request.seed, engine.slots.steps_run))
            for r in reqs]
    assert engine.step() and engine.rounds == 1
    assert answered_at == {2: 4, 3: 14, 1: 30}  # mid-round, not at the round's end
    assert all(j.completion is not None for j in jobs)
    assert [j.completion.blocks for j in jobs] == [1, 1, 1]
    for job, req in zip(jobs, reqs):
        ref = generate_solo(pipe, req, 30)
        assert job.completion.text == ref.text and job.completion.root_ids == ref.root_ids
    assert engine.slots.active == 0 and engine.slots.steps_run == 30


def test_a_render_that_fails_mid_round_answers_every_request_with_an_error(pipe):
    """The early answer takes a request out of its slot before rendering it: if that render
    fails, the request must still be finished (with "error"), never left waiting."""
    engine = Engine(pipe, max_batch=2, block_roots=30, join_every=2)
    jobs = [engine.submit(Request("KING", roots=30, seed=1)), engine.submit(Request("", roots=4, seed=2))]

    def broken(jobs, blocks):
        raise RuntimeError("render failed")

    engine._render = broken
    with pytest.raises(RuntimeError):
        engine.step()  # the 4-root request's early answer is the first render
    engine._fail_all(RuntimeError("render failed"))
    assert all(j.done.is_set() and j.completion.finish_reason == "error" for j in jobs)
    assert engine.slots.active == 0 and engine.queued == 0


def test_requests_longer_than_the_window_equal_solo(pipe):
    """Requests that slide their window several times (the tiny manager's context is 64
    roots), among others that join and leave: each one's roots and text are its solo run's
    (a slot row's prefills are a stream's, bit for bit)."""
    reqs = [Request("ROMEO:\n", roots=200, sampling=SamplingConfig(0.9), seed=11),
            Request("JULIET:\nO Romeo, ", roots=150, sampling=SamplingConfig(1.0), seed=12),
            Request("", roots=30, sampling=SamplingConfig(0.8), seed=13),
            Request("KING", roots=170, sampling=SamplingConfig(0), seed=14)]
    solo = [generate_solo(pipe, r, BLOCK) for r in reqs]
    got = Engine(pipe, max_batch=3, block_roots=BLOCK).run(reqs)
    for g, ref in zip(got, solo):
        assert g.root_ids == ref.root_ids and g.text == ref.text
