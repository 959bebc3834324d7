"""TextPipeline with the shipped model: text over the alphabet, reproducible by seed,
streaming equal to generate(), clear errors for bad prompts and sizes."""

import pytest
import torch

from fractal_flood.errors import FractalFloodError, UnknownCharacterError
from fractal_flood.generation.pipeline import load_pipeline
from fractal_flood.sampling.tokens import SamplingConfig

pytestmark = pytest.mark.usefixtures("single_thread")

ROOTS = 24


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline(device="cpu")


def test_loads_the_shipped_model(pipe):
    assert pipe.device.type == "cpu" and pipe.dtype == torch.float32
    assert pipe.decoder_name == "flood"
    assert pipe.manager.config.vocab_size == pipe.tokenizer.num_roots
    assert pipe.renderer.config.levels == [lv.to_dict() for lv in pipe.tokenizer.levels]


def test_generate_text_over_the_alphabet(pipe):
    res = pipe.generate("ROMEO:\n", roots=ROOTS, seed=0)
    assert isinstance(res.text, str) and len(res.text) >= ROOTS  # a root is >= 1 char
    assert set(res.text) <= set(pipe.tokenizer.alphabet)
    assert len(res.root_ids) == ROOTS and res.manager_steps == ROOTS
    assert all(0 <= r < pipe.tokenizer.num_roots for r in res.root_ids)
    assert res.prompt == "ROMEO:\n" and not res.text.startswith("ROMEO:\n")  # prompt not repeated
    # the shipped renderer spells (nearly) every planned root as the tokenizer would
    rendered = [t for r in res.renders for t in r.root_texts()]
    truth = [pipe.tokenizer.root_text(r) for r in res.root_ids]
    assert sum(a == b for a, b in zip(rendered, truth)) >= 0.9 * ROOTS
    d = res.to_dict()
    assert d["roots"] == ROOTS and d["chars"] == len(res.text) and d["text"] == res.text
    # a K = 1 flood runs no energy pass, so it reports no energies
    assert d["energies"] == {"level0": [], "level1": []}
    assert all(lv["accepted"] is None and lv["mean_energy"] is None for lv in d["levels"])
    assert res.seconds > 0


def test_energies_when_asked_for():
    from fractal_flood.render.base import DecodeOptions
    pipe = load_pipeline(device="cpu", options=DecodeOptions(energies=True))
    res = pipe.generate("ROMEO:\n", roots=ROOTS, seed=0)
    d = res.to_dict()
    assert len(d["energies"]["level0"]) == ROOTS
    assert len(d["energies"]["level1"]) == res.num_chunks
    assert all(lv["accepted"] is not None for lv in d["levels"])
    plain = load_pipeline(device="cpu").generate("ROMEO:\n", roots=ROOTS, seed=0)
    assert plain.text == res.text  # scoring changes nothing of what is chosen


def test_same_seed_same_text(pipe):
    a = pipe.generate("", roots=ROOTS, seed=3)
    b = pipe.generate("", roots=ROOTS, seed=3)
    assert a.text == b.text and a.root_ids == b.root_ids


def test_same_seed_same_text_across_pipelines(pipe):
    other = load_pipeline(device="cpu")
    a = pipe.generate("KING:", roots=ROOTS, seed=5)
    b = other.generate("KING:", roots=ROOTS, seed=5)
    assert a.text == b.text


def test_different_seeds_differ(pipe):
    texts = {pipe.generate("", roots=ROOTS, seed=s).text for s in (0, 1, 2)}
    assert len(texts) == 3


def test_greedy_manager_is_seed_independent(pipe):
    greedy = SamplingConfig(temperature=0)
    a = pipe.generate("JULIET:", roots=12, sampling=greedy, seed=0)
    b = pipe.generate("JULIET:", roots=12, sampling=greedy, seed=1)
    assert a.root_ids == b.root_ids and a.text == b.text


def test_the_prompt_conditions_the_plan(pipe):
    greedy = SamplingConfig(temperature=0)
    a = pipe.generate("First Citizen:\n", roots=12, sampling=greedy)
    b = pipe.generate("Be merry, be merry, my wife", roots=12, sampling=greedy)
    assert a.root_ids != b.root_ids


@pytest.mark.parametrize("block", [1, 5, 8, 24, 100])
def test_stream_blocks_concatenate_to_generate(pipe, block):
    ref = pipe.generate("ROMEO:", roots=ROOTS, seed=9, block_roots=block)
    blocks = list(pipe.stream("ROMEO:", roots=ROOTS, seed=9, block_roots=block))
    assert len(blocks) == -(-ROOTS // block)
    assert [len(ids) for ids, _ in blocks] == [min(block, ROOTS - s) for s in range(0, ROOTS, block)]
    assert "".join(r.text for _, r in blocks) == ref.text
    assert [i for ids, _ in blocks for i in ids] == ref.root_ids
    # and the block size does not change what is generated
    assert ref.text == pipe.generate("ROMEO:", roots=ROOTS, seed=9, block_roots=64).text


def test_on_block_callback_sees_every_block(pipe):
    seen = []
    res = pipe.generate("", roots=10, seed=1, block_roots=4, on_block=seen.append)
    assert len(seen) == 3 and "".join(seen) == res.text


def test_unknown_character_in_prompt(pipe):
    with pytest.raises(UnknownCharacterError) as info:
        pipe.generate("ROMEO: caf\u00e9", roots=4)
    assert info.value.char == "\u00e9" and info.value.position == 10
    assert "\u00e9" in str(info.value) and "10" in str(info.value)
    with pytest.raises(UnknownCharacterError):
        list(pipe.stream("\u2603", roots=4))


@pytest.mark.parametrize("roots", [0, -3, 2.5])
def test_bad_root_count(pipe, roots):
    with pytest.raises(FractalFloodError):
        pipe.generate("", roots=roots)


@pytest.mark.parametrize("decoder", ["adaptive", "sequential"])
def test_other_decoders_agree_with_flood_on_the_shipped_model(decoder):
    """argmax renderer, one try each: every decoder renders the same plan to the same text."""
    from fractal_flood.render.base import DecodeOptions

    opts = DecodeOptions(max_tries=1)
    flood = load_pipeline(device="cpu", options=opts).generate("", roots=12, seed=2)
    other = load_pipeline(device="cpu", decoder=decoder, options=opts).generate("", roots=12, seed=2)
    assert other.root_ids == flood.root_ids and other.text == flood.text


def test_unknown_decoder_name():
    with pytest.raises(ValueError, match="unknown decoder"):
        load_pipeline(device="cpu", decoder="beam")


def test_trained_tiny_model_generates(tiny_model_dir):
    """A model directory fresh from run_training is a working pipeline."""
    tiny = load_pipeline(tiny_model_dir, device="cpu")
    res = tiny.generate("", roots=10, seed=0)
    assert len(res.root_ids) == 10 and set(res.text) <= set(tiny.tokenizer.alphabet)
