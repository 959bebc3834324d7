"""One request type through every door: the command line, the Python API and the HTTP
server build a ``GenerationRequest`` with the same defaults, so the same prompt and seed
give the same text through all three (the shipped model)."""

import inspect
import json

import pytest

from fractal_flood import GenerationRequest, RendererSettings, SamplingConfig, load_pipeline
from fractal_flood.cli.main import build_parser
from fractal_flood.errors import FractalFloodError
from fractal_flood.generation import request as rq
from fractal_flood.generation.engine import Engine, Request, generate_solo
from fractal_flood.generation.pipeline import TextPipeline
from fractal_flood.render.options import DecodeOptions
from fractal_flood.sampling import tokens

from cli_run import run_main

pytestmark = pytest.mark.usefixtures("single_thread")
PROMPT, SEED, ROOTS = "ROMEO:\n", 11, 24


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline(device="cpu")


def _generate_defaults():
    return build_parser().parse_args(["generate"])


def _generate_parser():
    sub = next(a for a in build_parser()._actions if a.dest == "command" or hasattr(a, "choices")
               and isinstance(a.choices, dict))
    return sub.choices["generate"]


def test_same_prompt_and_seed_same_text_through_every_door(pipe, capsys):
    api = pipe.generate(PROMPT, roots=ROOTS, seed=SEED).text
    rc, out, _ = run_main(["generate", "--device", "cpu", "--prompt", PROMPT, "--seed", SEED, "--roots", ROOTS,
                           "--json"], capsys)
    assert rc == 0
    assert json.loads(out)["text"] == api
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from fractal_flood.serve.app import create_app
    with TestClient(create_app(pipe)) as client:
        r = client.post("/v1/completions", json={"prompt": PROMPT, "seed": SEED, "max_tokens": ROOTS})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == api
    assert len(api) > 20


def test_the_doors_share_the_defaults(pipe):
    args = _generate_defaults()
    assert args.temperature == rq.DEFAULT_MANAGER_TEMPERATURE == rq.DEFAULT_MANAGER.temperature
    assert args.block == rq.DEFAULT_BLOCK_ROOTS
    assert args.roots is None  # -> GenerationRequest.root_budget: DEFAULT_ROOTS
    assert (args.k, args.threshold, args.max_tries, args.render_temperature) == \
        (DecodeOptions.k, DecodeOptions.threshold, DecodeOptions.max_tries, DecodeOptions.temperature)
    serve_args = build_parser().parse_args(["serve"])
    assert serve_args.block == rq.DEFAULT_SERVE_BLOCK_ROOTS
    assert GenerationRequest().manager is rq.DEFAULT_MANAGER and Request().manager is rq.DEFAULT_MANAGER
    assert GenerationRequest().root_budget == rq.DEFAULT_ROOTS
    for fn in (TextPipeline.generate, TextPipeline.run, TextPipeline.stream, generate_solo):
        assert inspect.signature(fn).parameters["block_roots"].default == rq.DEFAULT_BLOCK_ROOTS
    assert inspect.signature(Engine.__init__).parameters["block_roots"].default == rq.DEFAULT_SERVE_BLOCK_ROOTS
    assert inspect.signature(TextPipeline.stream).parameters["roots"].default == rq.DEFAULT_ROOTS
    schema = pytest.importorskip("fractal_flood.serve.openai_schema")
    fields = schema.CompletionRequest.model_fields
    assert fields["temperature"].default == rq.DEFAULT_MANAGER_TEMPERATURE
    assert any(getattr(m, "le", None) == rq.MAX_SEED for m in fields["seed"].metadata)
    assert schema.DEFAULT_MAX_TOKENS == rq.DEFAULT_ROOTS
    parsed = schema.from_completion(schema.CompletionRequest(prompt="a", seed=1), schema.Limits(),
                                    pipe.tokenizer.alphabet)
    assert parsed.request == GenerationRequest("a", roots=rq.DEFAULT_ROOTS, seed=1)
    assert app_block_default() == rq.DEFAULT_SERVE_BLOCK_ROOTS


def app_block_default():
    app = pytest.importorskip("fractal_flood.serve.app")
    return inspect.signature(app.create_app).parameters["block_roots"].default


def test_one_seed_range():
    assert tokens.SEED_LIMIT == rq.SEED_LIMIT == rq.MAX_SEED + 1 == 2 ** 63
    seed_type = next(a.type for a in _generate_parser()._actions if a.dest == "seed")
    assert (seed_type.lo, seed_type.hi) == (0, rq.MAX_SEED)
    ok = GenerationRequest(seed=rq.MAX_SEED).validated()
    assert ok.seed == rq.MAX_SEED
    for bad in (-1, rq.SEED_LIMIT, 1.5, True, "3"):
        with pytest.raises(FractalFloodError, match="seed"):
            GenerationRequest(seed=bad).validated()
    assert 0 <= rq.draw_seed() < 2 ** rq.DRAWN_SEED_BITS


@pytest.mark.parametrize("bad, name", [(dict(roots=0), "roots"), (dict(max_chars=float("nan")), "max_chars"),
                                       (dict(roots=True), "roots"), (dict(stop=("",)), "stop"),
                                       (dict(renderer=RendererSettings(options=DecodeOptions(k=0))), "k")])
def test_checked_in_one_place(bad, name):
    with pytest.raises(FractalFloodError, match=name):
        GenerationRequest(**bad).validated()


@pytest.mark.parametrize("kw, name", [(dict(temperature="hot"), "temperature"),
                                      (dict(temperature=True), "temperature"),
                                      (dict(top_p=float("nan")), "top_p"), (dict(top_k=0), "top_k")])
def test_manager_sampling_checks_its_values(kw, name):
    with pytest.raises(ValueError, match=name):
        SamplingConfig(**kw)


def test_the_one_seed_drives_the_renderer(pipe):
    req = GenerationRequest("KING", roots=6, seed=5,
                            renderer=RendererSettings(options=DecodeOptions(seed=99, temperature=1.0)))
    same = GenerationRequest("KING", roots=6, seed=5,
                             renderer=RendererSettings(options=DecodeOptions(temperature=1.0)))
    assert pipe.run(req).text == pipe.run(same).text
    assert generate_solo(pipe, req).text == pipe.run(req).text
