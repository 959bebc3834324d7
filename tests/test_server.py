"""The HTTP API in process (FastAPI TestClient, tiny model): OpenAI shapes, streaming,
chat in the corpus's dialogue format, metrics, and bad requests that never hurt the server."""

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from fractal_flood.generation.engine import Request, generate_solo  # noqa: E402
from fractal_flood.serve.openai_schema import Limits  # noqa: E402
from fractal_flood.generation.pipeline import load_pipeline  # noqa: E402
from fractal_flood.sampling.tokens import SamplingConfig  # noqa: E402
from fractal_flood.serve.app import create_app  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")
BLOCK = 6


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return load_pipeline(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def client(pipe):
    app = create_app(pipe, max_batch=4, max_queue=8, block_roots=BLOCK, limits=Limits(max_prompt_chars=500))
    with TestClient(app) as c:
        yield c


def sse_events(text: str) -> list:
    lines = [ln[len("data: "):] for ln in text.split("\n\n") if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(ln) for ln in lines[:-1]]


def test_completion_equals_the_solo_run(client, pipe):
    body = {"model": "fractal-flood", "prompt": "ROMEO:\n", "max_tokens": 15, "temperature": 0.8,
            "top_p": 0.95, "seed": 42}
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["object"] == "text_completion" and d["model"] == "fractal-flood"
    choice = d["choices"][0]
    ref = generate_solo(pipe, Request("ROMEO:\n", roots=15, sampling=SamplingConfig(0.8, None, 0.95), seed=42),
                        BLOCK)
    assert choice["text"] == ref.text and choice["finish_reason"] == "length"
    assert d["usage"]["completion_tokens"] == 15
    assert d["usage"]["prompt_tokens"] == len(pipe.tokenizer.encode("ROMEO:\n"))
    assert d["fractal_flood"]["seed"] == 42 and d["fractal_flood"]["chars"] == len(ref.text)


def test_stream_equals_plain(client):
    body = {"prompt": "KING", "max_tokens": 20, "seed": 5, "temperature": 1.0}
    plain = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
    r = client.post("/v1/completions", json={**body, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert len(events) >= 3  # several blocks of 6 roots, then the final event
    assert "".join(e["choices"][0]["text"] for e in events) == plain
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    assert all(e["choices"][0]["finish_reason"] is None for e in events[:-1])


def test_random_seed_is_reported_and_repeats(client):
    a = client.post("/v1/completions", json={"prompt": "", "max_tokens": 8}).json()
    seed = a["fractal_flood"]["seed"]
    b = client.post("/v1/completions", json={"prompt": "", "max_tokens": 8, "seed": seed}).json()
    assert a["choices"][0]["text"] == b["choices"][0]["text"]


def test_stop_and_max_chars(client):
    r = client.post("/v1/completions", json={"prompt": "", "max_chars": 30, "seed": 1}).json()
    assert len(r["choices"][0]["text"]) == 30 and r["choices"][0]["finish_reason"] == "length"
    full = client.post("/v1/completions", json={"prompt": "", "max_tokens": 40, "seed": 2}).json()
    text = full["choices"][0]["text"]
    stop = text[10:12]
    cut = client.post("/v1/completions", json={"prompt": "", "max_tokens": 40, "seed": 2, "stop": [stop]}).json()
    assert cut["choices"][0]["finish_reason"] == "stop"
    assert cut["choices"][0]["text"] == text[:text.find(stop)]


def test_chat_speaks_the_next_turn(client, pipe):
    body = {"messages": [{"role": "user", "content": "Speak, speak."}], "max_tokens": 60, "seed": 3,
            "temperature": 0.8}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    d = r.json()
    msg = d["choices"][0]["message"]
    assert d["object"] == "chat.completion" and msg["role"] == "assistant"
    assert "\n\n" not in msg["content"]  # a turn ends at a blank line
    prompt = "First Citizen:\nSpeak, speak.\n\nSecond Citizen:\n"
    ref = generate_solo(pipe, Request(prompt, roots=60, sampling=SamplingConfig(0.8), seed=3, stop=("\n\n",)),
                        BLOCK)
    assert msg["content"] == ref.text
    events = sse_events(client.post("/v1/chat/completions", json={**body, "stream": True}).text)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == msg["content"]
    assert events[-1]["object"] == "chat.completion.chunk"


def test_models_health_metrics(client):
    m = client.get("/v1/models").json()
    assert m["object"] == "list" and m["data"][0]["id"] == "fractal-flood"
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["slots"] == 4
    client.post("/v1/completions", json={"prompt": "", "max_tokens": 3})
    text = client.get("/metrics").text
    assert 'fractal_flood_requests_total{endpoint="/v1/completions",status="200"}' in text
    assert "fractal_flood_completion_tokens_total" in text and "fractal_flood_queue_length 0" in text
    assert 'fractal_flood_request_seconds_bucket{le="+Inf"}' in text
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if not line.startswith("#")}
    steps, rows = values["fractal_flood_manager_steps_total"], values["fractal_flood_manager_row_steps_total"]
    assert steps >= 3 and steps <= rows <= 4 * steps  # every step had 1 to 4 (the slots) rows
    assert values["fractal_flood_engine_rounds_total"] >= 1 and values["fractal_flood_engine_busy_seconds_total"] > 0
    assert 0 < values["fractal_flood_engine_flood_seconds_total"] < values["fractal_flood_engine_busy_seconds_total"]


BAD = [
    ({"prompt": "ROMEO: caf\u00e9"}, 400, "prompt", "unknown_character", "position 10"),
    ({"prompt": "x", "temperature": 3}, 400, "temperature", "out_of_range", "temperature"),
    ({"prompt": "x", "temperature": "hot"}, 400, "temperature", "invalid_type", "number"),
    ({"prompt": "x", "top_p": 0}, 400, "top_p", "out_of_range", "top_p"),
    ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens", "out_of_range", "max_tokens"),
    ({"prompt": "x", "max_tokens": True}, 400, "max_tokens", "invalid_type", "integer"),
    ({"prompt": "x", "max_tokens": 10 ** 9}, 400, "max_tokens", "out_of_range", "max_tokens"),
    ({"prompt": "x", "seed": -1}, 400, "seed", "out_of_range", "seed"),
    ({"prompt": "x", "stop": ["a", ""]}, 400, "stop", "invalid_type", "stop"),
    ({"prompt": "x", "stop": "\u00e9"}, 400, "stop", "unknown_character", "stop"),
    ({"prompt": "x", "n": 2}, 400, "n", "out_of_range", "n must be in [1, 1]"),
    ({"prompt": "x", "model": "gpt-4"}, 404, "model", "model_not_found", "gpt-4"),
    ({"prompt": ["a", "b"]}, 400, "prompt", "invalid_type", "prompt"),
    ({"prompt": "y" * 501}, 400, "prompt", "context_length_exceeded", "501"),
    ({"prompt": "x", "decoder": "magic"}, 400, "decoder", "invalid_value", "decoder"),
]


@pytest.mark.parametrize("body,status,param,code,words", BAD, ids=[f"{b[2]}-{b[3]}" for b in BAD])
def test_bad_requests_get_openai_errors(client, body, status, param, code, words):
    r = client.post("/v1/completions", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param and err["code"] == code and words in err["message"]


@pytest.mark.parametrize("raw", [b"{not json", b'{"prompt": "x", "temperature": NaN}', b"[1, 2]",
                                 b'{"prompt": "x", "max_tokens": Infinity}', b"\xff\xfe"])
def test_malformed_bodies(client, raw):
    r = client.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


def test_chat_errors(client):
    for body, param in (({"messages": []}, "messages"),
                        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0]"),
                        ({"messages": [{"role": "user", "content": "\u2603"}]}, "messages[0].content")):
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_huge_body_and_unknown_route(client):
    r = client.post("/v1/completions", content=b'{"prompt": "' + b"a" * (2 << 20) + b'"}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()


def test_server_keeps_serving_after_bad_requests(client):
    for body, _, _, _, _ in BAD:
        client.post("/v1/completions", json=body)
    r = client.post("/v1/completions", json={"prompt": "ROMEO:\n", "max_tokens": 5, "seed": 1})
    assert r.status_code == 200 and r.json()["choices"][0]["text"]
    assert client.get("/health").json()["active"] == 0


def test_full_queue_answers_503(pipe):
    app = create_app(pipe, max_batch=1, max_queue=0, block_roots=BLOCK)
    with TestClient(app) as c:
        with ThreadPoolExecutor(6) as pool:
            rs = list(pool.map(lambda s: c.post("/v1/completions", json={"prompt": "", "max_tokens": 60,
                                                                           "seed": s}), range(6)))
        codes = sorted(r.status_code for r in rs)
        assert codes[0] == 200 and codes[-1] == 503, codes
        busy = next(r for r in rs if r.status_code == 503)
        assert busy.headers["retry-after"] == "1" and busy.json()["error"]["code"] == "queue_full"
        assert c.post("/v1/completions", json={"prompt": "", "max_tokens": 2}).status_code == 200


def test_concurrent_requests_equal_their_solo_runs(client, pipe):
    bodies = [{"prompt": p, "max_tokens": n, "seed": s, "temperature": 0.9}
              for s, (p, n) in enumerate([("", 13), ("ROMEO:\n", 7), ("KING", 20), ("a", 9), ("", 11),
                                          ("JULIET:", 16)])]
    with ThreadPoolExecutor(6) as pool:
        rs = list(pool.map(lambda b: client.post("/v1/completions", json=b), bodies))
    for b, r in zip(bodies, rs):
        ref = generate_solo(pipe, Request(b["prompt"], roots=b["max_tokens"], sampling=SamplingConfig(0.9),
                                          seed=b["seed"]), BLOCK)
        assert r.json()["choices"][0]["text"] == ref.text


def test_flood_stream_describes_every_root(client, pipe):
    r = client.post("/v1/flood", json={"prompt": "ROMEO:\n", "max_tokens": 14, "seed": 8, "temperature": 0.8,
                                       "decoder": "adaptive", "k": 1, "threshold": 0.5})
    assert r.status_code == 200, r.text
    events = sse_events(r.text)
    blocks, done = events[:-1], events[-1]
    assert done["done"] and done["seed"] == 8 and done["roots"] == 14
    roots = [root for b in blocks for root in b["roots"]]
    assert len(roots) == 14 and len(blocks) == 3  # blocks of 6, 6, 2
    text = "".join(b["text"] for b in blocks)
    assert text == "".join(root["text"] for root in roots)
    for root in roots:
        assert root["text"] == "".join(c["text"] for c in root["chunks"])
        assert isinstance(root["energy"], float) and all(isinstance(c["energy"], float) for c in root["chunks"])
    assert sum(b["chunks"] for b in blocks) == done["chunks"]
    assert all(b["manager_seconds"] > 0 and b["flood_seconds"] > 0 for b in blocks)
    plain = client.post("/v1/completions", json={"prompt": "ROMEO:\n", "max_tokens": 14, "seed": 8,
                                                 "temperature": 0.8, "decoder": "adaptive"}).json()
    assert plain["choices"][0]["text"] == text
    bad = client.post("/v1/flood", json={"prompt": "x", "k": 0})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "k"


def test_page_and_static_files(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for ref in ("/static/app.js", "/static/style.css"):
        assert ref in page.text
        r = client.get(ref)
        assert r.status_code == 200 and len(r.text) > 100
    assert "http" not in client.get("/static/app.js").text  # no CDN, nothing fetched from elsewhere
    assert client.get("/static/../app.py").status_code == 404
    assert client.get("/static/secret.txt").status_code == 404
    r = client.get("/bench.json")
    assert r.status_code == 404 and "--bench-json" in r.json()["error"]["message"]


def test_bench_json_is_served(pipe, tmp_path):
    data = {"run": {"device": "cpu"}, "rows": [{"name": "x", "mode": "render-only", "tokens_per_s": 5.0, "bpc": 2.0}]}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(data))
    with TestClient(create_app(pipe, max_batch=1, bench_json=path)) as c:
        assert c.get("/bench.json").json() == data


def test_chars_under_folds_the_counts_of_every_level_below():
    from fractal_flood.render.result import chars_under

    # 1 root -> 2 level-1 items -> (1, 2) level-2 items -> (3, 1, 2) characters
    counts = [[2], [1, 2], [3, 1, 2]]
    assert chars_under(counts, 2) == [3, 1, 2]
    assert chars_under(counts, 1) == [3, 3]
    assert chars_under([[2, 1], [4, 1, 2]], 1) == [4, 1, 2]  # two levels: level 1's own counts


def test_serve_takes_half_the_cores_on_a_cpu_and_torchs_threads_on_a_gpu():
    import os

    import torch

    from fractal_flood.cli.serve import default_threads

    assert default_threads(torch.device("cpu")) == max(1, (os.cpu_count() or 1) // 2)
    assert default_threads(torch.device("cuda")) is None


# ---------------------------------------------------------------- the schema, strictness, hostile bodies


def test_openapi_describes_every_request_field(client):
    """The bodies are pydantic models: /openapi.json lists every field with a description
    (and the ranges), and /docs renders it."""
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    completion = schemas["CompletionRequest"]["properties"]
    for name in ("prompt", "model", "max_tokens", "max_chars", "temperature", "top_p", "top_k", "seed", "stop",
                 "stream", "decoder", "k", "threshold", "n"):
        assert name in completion, name
    assert all(field.get("description") for field in completion.values()), \
        [n for n, f in completion.items() if not f.get("description")]
    chat = schemas["ChatRequest"]["properties"]
    assert "messages" in chat and "speaker" in chat and all(f.get("description") for f in chat.values())
    assert all(f.get("description") for f in schemas["Message"]["properties"].values())
    assert "'maximum': 2" in str(completion["temperature"]) and "'minimum': 0" in str(completion["seed"])
    for path, model in (("/v1/completions", "CompletionRequest"), ("/v1/flood", "CompletionRequest"),
                        ("/v1/chat/completions", "ChatRequest")):
        body = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body["$ref"].endswith("/" + model)
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/openapi.json" in docs.text


STRICT = [
    ({"prompt": "x", "temperature": True}, "temperature", "invalid_type", "number"),
    ({"prompt": "x", "top_p": False}, "top_p", "invalid_type", "number"),
    ({"prompt": "x", "seed": 1.0}, "seed", "invalid_type", "integer"),
    ({"prompt": "x", "top_k": "5"}, "top_k", "invalid_type", "integer"),
    ({"prompt": "x", "stream": 1}, "stream", "invalid_type", "true or false"),
    ({"prompt": 5}, "prompt", "invalid_type", "prompt"),
    ({"prompt": "x", "stop": ["a"] * 5}, "stop", "out_of_range", "at most 4"),
    ({"prompt": "x", "k": 65}, "k", "out_of_range", "k must be in [1, 64], got 65"),
    ({"prompt": "x", "echo": True}, "echo", "unsupported", "not supported"),
]


@pytest.mark.parametrize("body,param,code,words", STRICT, ids=[f"{s[1]}-{s[2]}" for s in STRICT])
def test_booleans_strings_and_floats_are_not_coerced(client, body, param, code, words):
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["code"] == code and words in err["message"], err


@pytest.mark.parametrize("raw", [b'{"prompt": "x", "temperature": 1e400}', b'{"prompt": "x", "top_p": -1e999}'])
def test_numbers_beyond_a_float_are_refused(client, raw):
    r = client.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_type", r.text


def test_chat_fields_are_named_in_errors(client):
    for body, param, code in (
            ({}, "messages", "invalid_type"),
            ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "invalid_type"),
            ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content",
             "invalid_type"),
            ({"messages": [{"role": "user", "content": "x", "name": "a\nb"}]}, "messages[0].name", "invalid_type"),
            ({"messages": [{"role": "user", "content": "x"}], "speaker": " "}, "speaker", "invalid_type")):
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 400, r.text
        assert (r.json()["error"]["param"], r.json()["error"]["code"]) == (param, code), r.text


def test_the_body_is_json_whatever_its_content_type(client):
    """As before the pydantic models: curl's -d sends application/x-www-form-urlencoded."""
    for headers in ({"content-type": "application/x-www-form-urlencoded"}, {}):
        r = client.post("/v1/completions", content=b'{"prompt": "KING", "max_tokens": 2, "seed": 1}',
                        headers=headers)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2, r.text


@pytest.mark.parametrize("raw", [b"[" * 100_000 + b"]" * 100_000,
                                 b'{"prompt": "x", "stop": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                                 b'{"prompt": ' + b"[" * 900 + b"]" * 900 + b"}"])
def test_deep_json_is_a_400_not_a_crash(client, raw):
    """Nested 100,000 levels deep this was a RecursionError, a 500 and a traceback (the test
    client re-raises what the server would log)."""
    r = client.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] in ("invalid_json", "invalid_type") and len(err["message"]) < 200


def test_a_client_hanging_up_mid_body_is_one_log_line(pipe, caplog):
    """Raw ASGI: the body's first bytes, then the client is gone. Before, ClientDisconnect
    escaped the app (uvicorn logged it with a traceback)."""
    import asyncio
    import logging

    app = create_app(pipe, max_batch=1)
    messages = iter([{"type": "http.request", "body": b'{"prompt": "KI', "more_body": True}])
    sent = []

    async def receive():
        return next(messages, {"type": "http.disconnect"})

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/completions", "raw_path": b"/v1/completions", "root_path": "", "query_string": b"",
             "headers": [(b"host", b"test"), (b"content-type", b"application/json"), (b"content-length", b"100")],
             "client": ("10.0.0.7", 5555), "server": ("test", 80)}
    with caplog.at_level(logging.INFO, logger="uvicorn.error"):
        asyncio.run(app(scope, receive, send))
    lines = [r.getMessage() for r in caplog.records if r.name == "uvicorn.error"]
    assert len(lines) == 1 and "10.0.0.7:5555 hung up" in lines[0], lines
    assert "\n" not in lines[0] and not any(r.exc_info for r in caplog.records)


def test_server_errors_are_counted(pipe):
    """An internal error is a 500 with an OpenAI-shaped body, and /metrics counts it (before,
    an exception bypassed the request counter and no 5xx series existed)."""
    app = create_app(pipe, max_batch=1)

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as c:
        assert "fractal_flood_server_errors_total 0.0" in c.get("/metrics").text
        app.state.engine.submit = broken
        r = c.post("/v1/completions", json={"prompt": "", "max_tokens": 2})
        assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
        text = c.get("/metrics").text
    assert 'fractal_flood_requests_total{endpoint="/v1/completions",status="500"} 1.0' in text
    assert "fractal_flood_server_errors_total 1.0" in text


def test_each_app_has_its_own_metrics(pipe):
    a, b = create_app(pipe, max_batch=1), create_app(pipe, max_batch=1)
    with TestClient(a) as ca, TestClient(b) as cb:
        ca.get("/health")
        assert 'endpoint="/health"' in ca.get("/metrics").text
        assert 'endpoint="/health"' not in cb.get("/metrics").text


def test_serve_help_names_every_endpoint_and_imports_no_torch():
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys\nfrom fractal_flood.cli.main import main\n"
            "try:\n    main(['serve', '--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "COLUMNS": "200"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    for endpoint in ("/v1/completions", "/v1/chat/completions", "/v1/flood", "/v1/models", "/metrics", "/health",
                     "page at /", "/docs"):
        assert endpoint in r.stdout, endpoint
