"""A renderer that predicts each root's number of children (``train --top-lengths``): the top
level's canvases are packed like the others. Flood == sequential, packed == padded reference,
fewer positions than a padded top, checkpoints with and without it, evaluation and serving."""

import pytest
import torch

from fractal_flood.generation.engine import Engine, Request, generate_solo
from fractal_flood.generation.pipeline import load_pipeline
from fractal_flood.measure.evaluate import evaluate
from fractal_flood.measure.metrics import render_fidelity
from fractal_flood.models import checkpoint as ckpt
from fractal_flood.models.config import RendererConfig
from fractal_flood.models.renderer import FractalDiffusionModel
from fractal_flood.render.base import DecodeOptions
from fractal_flood.render.decoders import make_decoder

pytestmark = pytest.mark.usefixtures("single_thread")

STEPS = 600


@pytest.fixture(scope="module")
def top_dir(small_corpus_file, tmp_path_factory):
    from fractal_flood.train.run import TrainOptions, run_training

    out = tmp_path_factory.mktemp("top_lengths")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        run_training(TrainOptions(out_dir=out, preset="tiny", corpus=str(small_corpus_file),
                                  parts=("renderer", "manager"), steps=STEPS, lm_steps=20, eval_every=STEPS,
                                  save_every=STEPS, progress=False, log=lambda s: None, top_lengths=True))
    return out


@pytest.fixture(scope="module")
def model(top_dir):
    tok = ckpt.load_tokenizer(top_dir)
    renderer, _ = ckpt.load_renderer(top_dir, tok)
    return renderer, tok


@pytest.fixture(scope="module")
def roots(model, small_text):
    return model[1].encode(small_text[40000:41500])


def test_the_checkpoint_keeps_the_head_and_old_configs_load_without_it(model):
    renderer, _ = model
    assert renderer.has_top_lengths and renderer.config.top_lengths and renderer.packed(0)
    old = {k: v for k, v in renderer.config.to_dict().items() if k != "top_lengths"}
    plain = FractalDiffusionModel(RendererConfig.from_dict(old))
    assert not plain.has_top_lengths and not plain.packed(0)
    assert set(renderer.state_dict()) - set(plain.state_dict()) == {
        k for k in renderer.state_dict() if k.startswith("top_length_head.")}


@pytest.mark.parametrize("k", [1, 3])
def test_flood_equals_sequential_and_the_padded_reference(model, roots, k):
    renderer, tok = model
    opts = dict(k=k, temperature=1.0, seed=5)
    packed = make_decoder("flood", renderer, tok.alphabet, DecodeOptions(**opts)).render(roots)
    padded = make_decoder("flood", renderer, tok.alphabet, DecodeOptions(**opts, packed=False)).render(roots)
    assert packed.text == padded.text and torch.equal(packed.tokens, padded.tokens)
    for a, b in zip(packed.counts, padded.counts):
        assert torch.equal(a, b)
    assert packed.levels[0].positions < 0.6 * padded.levels[0].positions  # the top level is packed now
    if k == 1:
        seq = make_decoder("sequential", renderer, tok.alphabet, DecodeOptions(max_tries=1, temperature=1.0,
                                                                               seed=5)).render(roots)
        assert seq.text == packed.text and torch.equal(seq.tokens, packed.tokens)
        assert seq.levels[0].positions == 2 * packed.levels[0].positions  # a draw and a score per root


def test_it_learns_the_lengths_and_renders_the_table(model, roots):
    renderer, tok = model
    ids = torch.tensor(roots)
    predicted = renderer.top_lengths(ids)
    true = tok.expansion_table(0)[1][ids]
    assert float((predicted == true).float().mean()) > 0.95  # 600 tiny steps
    flood = make_decoder("flood", renderer, tok.alphabet, DecodeOptions(k=1)).render(roots)
    assert torch.equal(flood.counts[0], predicted)  # the top level keeps exactly the predicted children
    fid, _ = render_fidelity(tok, roots, flood.root_texts())
    assert fid > 0.9, fid


def test_evaluate_and_the_engine(top_dir, small_corpus_file):
    r = evaluate(top_dir, corpus=str(small_corpus_file), device="cpu", max_roots=150)
    assert 0.0 <= r["levels"][0]["fidelity"] <= 1.0 and r["render"]["roots"] == 150
    pipe = load_pipeline(top_dir, device="cpu")
    reqs = [Request("ROMEO:\n", roots=9, seed=1), Request("", roots=5, seed=2), Request("KING", roots=12, seed=3)]
    got = Engine(pipe, max_batch=2, block_roots=4).run(reqs)
    for c, req in zip(got, reqs):
        assert c.text == generate_solo(pipe, req, 4).text


def test_resuming_with_the_other_choice_says_which_flag(top_dir, small_corpus_file, capsys):
    from cli_run import run_main

    rc, out, err = run_main(["train", "--preset", "tiny", "--corpus", small_corpus_file, "--out", top_dir,
                             "--parts", "renderer", "--steps", str(STEPS + 10), "--no-progress", "--resume"], capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "trained with --top-lengths, pass it again" in lines[0]
