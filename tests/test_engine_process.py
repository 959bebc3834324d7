"""The engine in a process of its own (``serve/engine_process.py``) against the engine in
this one: the same texts for the same requests, its blocks streamed, cancellation, the
queue's rule, bad requests refused here at once, and a child that dies failing its requests
instead of leaving them waiting."""

import os
import signal
import threading

import pytest

from fractal_flood.errors import FractalFloodError, UnknownCharacterError
from fractal_flood.generation.engine import QueueFull, Request, generate_solo
from fractal_flood.generation.pipeline import load_pipeline
from fractal_flood.generation.request import GenerationRequest, RendererSettings
from fractal_flood.render.options import DecodeOptions
from fractal_flood.sampling.config import SamplingConfig
from fractal_flood.serve.engine_process import EngineError, EngineProcess, EngineUnavailable

BLOCK = 5
WAIT_S = 120


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return load_pipeline(tiny_model_dir, device="cpu")


def settings(model, **kw):
    return {"model": str(model), "device": "cpu", "dtype": "auto", "decoder": "flood", "threads": 1,
            "max_batch": 3, "block_roots": BLOCK, "max_queue": 8, **kw}


@pytest.fixture
def engine(pipe, tiny_model_dir):
    e = EngineProcess(pipe, settings(tiny_model_dir))
    e.start()
    yield e
    e.stop()


def requests_mix():
    return [Request("ROMEO:\n", roots=12, sampling=SamplingConfig(0.8), seed=1),
            Request("", roots=7, sampling=SamplingConfig(1.0, top_k=20), seed=2),
            Request("First Citizen:\n", max_chars=40, sampling=SamplingConfig(0.9, top_p=0.9), seed=3),
            Request("KING", roots=16, sampling=SamplingConfig(0), seed=4, stop=("e",)),
            Request("a", roots=9, seed=6, decoder="adaptive", options=DecodeOptions(max_tries=2)),
            Request("JULIET:\n", roots=11, sampling=SamplingConfig(1.2), seed=7)]


def test_a_request_round_trips_through_its_json_form():
    r = GenerationRequest("KING:\n", 5, 40, ("x", "yz"), 9, SamplingConfig(0.7, top_k=3, top_p=0.5),
                          RendererSettings("adaptive", DecodeOptions(k=2, temperature=0.5, seed=4)))
    import json
    assert GenerationRequest.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    plain = GenerationRequest()
    assert GenerationRequest.from_dict(json.loads(json.dumps(plain.to_dict()))) == plain


def test_texts_are_the_solo_texts_and_blocks_stream(engine, pipe):
    reqs = requests_mix()
    solo = [generate_solo(pipe, r, BLOCK) for r in reqs]
    streamed, done = {}, threading.Event()
    finished = []

    def on_block(job, block):
        streamed.setdefault(job.id, []).append(block.text)

    def on_done(job):
        finished.append(job.id)
        if len(finished) == len(reqs):
            done.set()

    jobs = [engine.submit(r, on_block, on_done) for r in reqs]  # 3 slots: the rest wait and join
    assert done.wait(WAIT_S)
    assert len(set(s.text for s in solo)) == len(reqs)  # different texts: the check can fail
    for job, ref in zip(jobs, solo):
        c = job.completion
        assert job.done.is_set() and job.error is None
        assert (c.text, c.finish_reason) == (ref.text, ref.finish_reason), job.request
        assert "".join(streamed[job.id]) == c.text
        assert c.blocks == len(streamed[job.id]) and c.chunks > 0 and c.seconds > 0
    assert engine.steps_run > 0 and engine.row_steps >= engine.steps_run and engine.rounds > 0
    assert engine.busy_s > 0 and 0 <= engine.flood_s <= engine.busy_s


def test_bad_requests_are_refused_here_at_once(engine):
    with pytest.raises(UnknownCharacterError):
        engine.submit(Request("caf\u00e9", roots=3))
    with pytest.raises(FractalFloodError, match="roots must be a positive integer"):
        engine.submit(Request("a", roots=0))
    with pytest.raises(FractalFloodError):
        engine.submit(Request("a", roots=3, decoder="nonsense"))
    job = engine.submit(Request("a", roots=3, seed=1))  # and the engine still serves
    assert job.done.wait(WAIT_S) and job.completion.finish_reason == "length"


def test_the_queue_rule_is_the_engines(pipe, tiny_model_dir):
    """Engine.submit refuses when the waiting ones reach max_queue + free slots: here, when
    the submitted and unfinished ones reach max_queue + max_batch."""
    e = EngineProcess(pipe, settings(tiny_model_dir, max_batch=1, max_queue=1))
    e.start()
    try:
        jobs = [e.submit(Request("a", roots=200, seed=s)) for s in range(2)]
        with pytest.raises(QueueFull, match="the queue is full"):
            e.submit(Request("a", roots=3))
        for j in jobs:
            j.cancel()
        assert all(j.done.wait(WAIT_S) for j in jobs)
        assert {j.completion.finish_reason for j in jobs} <= {"cancelled", "length"}
        assert jobs[1].completion.finish_reason == "cancelled"  # it was waiting: cancelled before a root
        assert e.submit(Request("a", roots=3)).done.wait(WAIT_S)  # room again
    finally:
        e.stop()


def test_a_dead_child_fails_its_requests_and_refuses_new_ones(pipe, tiny_model_dir):
    e = EngineProcess(pipe, settings(tiny_model_dir, max_batch=1))
    e.start()
    try:
        job = e.submit(Request("a", roots=4000, seed=1))
        os.kill(e._proc.pid, signal.SIGKILL)
        assert job.done.wait(WAIT_S)
        assert job.completion.finish_reason == "error" and isinstance(job.error, EngineError)
        assert "the engine's process ended" in str(job.error)
        assert not e.alive
        with pytest.raises(EngineUnavailable, match="the engine is not running"):
            e.submit(Request("a", roots=3))
    finally:
        e.stop()


def test_a_child_that_cannot_load_is_one_clear_error(pipe, tmp_path):
    e = EngineProcess(pipe, settings(tmp_path / "no-model"))
    with pytest.raises(EngineUnavailable, match="did not start: it exited while loading"):
        e.start()
    assert not e.alive


def test_the_app_over_the_engine_process(pipe, tiny_model_dir):
    """The app with the engine in its own process: a completion (the solo text), a stream,
    the engine's counters in /metrics; once the child is gone /health and completions
    answer 503."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from fractal_flood.serve.app import create_app

    e = EngineProcess(pipe, settings(tiny_model_dir))
    with TestClient(create_app(pipe, max_batch=3, block_roots=BLOCK, engine=e)) as c:
        assert c.get("/health").json()["status"] == "ok"
        body = {"prompt": "ROMEO:\n", "max_tokens": 12, "seed": 3}
        got = c.post("/v1/completions", json=body).json()
        solo = generate_solo(pipe, Request("ROMEO:\n", roots=12, seed=3), BLOCK)
        assert got["choices"][0]["text"] == solo.text and got["usage"]["completion_tokens"] == 12
        streamed = c.post("/v1/completions", json={**body, "stream": True}).text
        assert streamed.endswith("data: [DONE]\n\n") and '"finish_reason": "length"' in streamed
        metrics = c.get("/metrics").text
        steps = [ln for ln in metrics.splitlines() if ln.startswith("fractal_flood_manager_steps_total")]
        assert steps and float(steps[0].split()[1]) >= 12
        assert c.post("/v1/completions", json={"prompt": "caf\u00e9"}).status_code == 400
        os.kill(e._proc.pid, signal.SIGKILL)
        e._reader.join(WAIT_S)
        health = c.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "engine stopped"
        r = c.post("/v1/completions", json=body)
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable"
