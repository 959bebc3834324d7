"""``fractal-flood serve``: an OpenAI-compatible HTTP API over the batched engine.

The engine runs rounds on its own thread; each HTTP request becomes an engine job whose
blocks are handed to the request's coroutine through an ``asyncio.Queue`` (``handoff.py``:
one wakeup of the event loop for all the blocks a round delivers). So a request that arrives while others run joins them at the
next block boundary, a client that goes away cancels its job (its slot is freed at the next
boundary), and a full queue is answered at once with 503 and ``Retry-After``.

Request bodies are pydantic models (``openai_schema``): FastAPI validates them and
describes them at ``/openapi.json`` and ``/docs``. The body itself is read by
``JsonBodyRoute``: at most ``MAX_BODY_BYTES``, JSON whatever its Content-Type, NaN,
Infinity and deep nesting refused. Every error a client can cause is a 4xx with an
OpenAI-shaped body and touches nothing else; a client that hangs up is one log line; the
server keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
import weakref
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

from fastapi import FastAPI, Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..errors import FractalFloodError
from ..generation.engine import Engine, Job, QueueFull
from ..generation.request import DEFAULT_SERVE_BLOCK_ROOTS
from ..render.result import chars_under
from .engine_process import EngineUnavailable
from .handoff import Handoff
from .openai_schema import (ApiError, ChatRequest, CompletionRequest, Limits, Parsed, from_chat, from_completion,
                            parse_json, validation_error)
from .prometheus import ServerMetrics

MAX_BODY_BYTES = 1 << 20
RETRY_AFTER_S = 1
POLL_S = 0.25  # how often a waiting non-streaming request checks that its client is still there
STATIC = Path(__file__).parent / "static"
STATIC_FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
BODIES = {"/v1/completions": CompletionRequest, "/v1/flood": CompletionRequest,
          "/v1/chat/completions": ChatRequest}
KNOWN_PATHS = {"/", "/health", "/metrics", "/v1/models", "/bench.json", "/openapi.json", "/docs",
               *BODIES} | {f"/static/{name}" for name in STATIC_FILES}
log = logging.getLogger("uvicorn.error")  # uvicorn's own log: its format, its --log-level


def who(request: HttpRequest) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "a client"


class JsonBodyRequest(HttpRequest):
    """A request whose body is read at most ``MAX_BODY_BYTES`` long (413 beyond) and parsed
    by ``parse_json``; FastAPI reads it as JSON whatever the Content-Type says (curl's -d
    sends application/x-www-form-urlencoded), as this server always has."""

    def __init__(self, request: HttpRequest):
        super().__init__(request.scope, request.receive, request._send)
        raw = [(k, v) for k, v in request.scope["headers"] if k.lower() != b"content-type"]
        self._headers = Headers(raw=raw + [(b"content-type", b"application/json")])

    async def body(self) -> bytes:
        if not hasattr(self, "_body"):
            size = self.headers.get("content-length")
            if size is not None and size.isdigit() and int(size) > MAX_BODY_BYTES:
                raise ApiError(413, f"the body is larger than {MAX_BODY_BYTES} bytes", code="body_too_large")
            chunks, n = [], 0
            async for chunk in self.stream():
                n += len(chunk)
                if n > MAX_BODY_BYTES:
                    raise ApiError(413, f"the body is larger than {MAX_BODY_BYTES} bytes", code="body_too_large")
                chunks.append(chunk)
            self._body = b"".join(chunks)
        return self._body

    async def json(self):
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body())
        return self._json


class JsonBodyRoute(APIRoute):
    """Reads and parses a POST's body before FastAPI does, so that what is wrong with it
    (too large, not JSON, too deep, the client gone) reaches this app's handlers as is;
    FastAPI then validates the parsed body against the endpoint's model."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def route(request: HttpRequest) -> Response:
            if request.method == "POST":
                request = JsonBodyRequest(request)
                await request.json()
            return await handler(request)

        return route


class CountResponses:
    """Counts every HTTP response by path and status (``ServerMetrics.request``); a plain ASGI
    middleware, which adds no task or stream to a request (Starlette's ``BaseHTTPMiddleware``
    adds both, and every request paid for them while holding the engine's interpreter lock)."""

    def __init__(self, app, metrics: ServerMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"] if scope["path"] in KNOWN_PATHS else "other"
        status = []

        async def send_counted(message):
            if message["type"] == "http.response.start":
                status.append(message["status"])
                self.metrics.request(path, message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        except Exception:
            if not status:
                self.metrics.request(path, 500)  # answered by internal_error
            raise


def block_event(block) -> dict:
    """One block, root by root: its text and energy, and its chunks' (level-1 items')
    characters and energies, at any depth (a chunk's text is every character under it)."""
    counts, energies = block.chunk_counts, block.energies
    widths = chars_under(counts, 1)
    roots, chunk, char = [], 0, 0
    text = "".join(block.root_texts)
    for r, (rid, rtext) in enumerate(zip(block.root_ids, block.root_texts)):
        chunks = []
        for _ in range(counts[0][r]):
            n = widths[chunk]
            chunk_energy = energies[1][chunk] if len(energies) > 1 and energies[1] is not None else None
            chunks.append({"text": text[char:char + n], "energy": chunk_energy})
            char += n
            chunk += 1
        root_energy = energies[0][r] if energies[0] is not None else None  # None: not scored
        roots.append({"id": rid, "text": rtext, "energy": root_energy, "chunks": chunks})
    return {"roots": roots, "text": block.text, "manager_seconds": block.manager_s,
            "flood_seconds": block.flood_s, "chunks": chunk, "chars": len(text)}


def create_app(pipe, max_batch: int = 32, max_queue: int = 64, block_roots: int = DEFAULT_SERVE_BLOCK_ROOTS,
               limits: Optional[Limits] = None, model_id: str = "fractal-flood",
               bench_json: Optional[Path] = None, engine=None) -> FastAPI:
    """The app over ``engine``: by default an ``Engine`` on a thread of this process (over
    ``pipe``, with ``max_batch``, ``block_roots``, ``max_queue``); ``fractal-flood serve``
    passes an ``engine_process.EngineProcess`` (the engine in a process of its own) built
    with the same settings."""
    limits = limits or Limits()
    if engine is None:
        engine = Engine(pipe, max_batch=max_batch, block_roots=block_roots, max_queue=max_queue)
    metrics = ServerMetrics()
    created = int(time.time())
    alphabet = pipe.tokenizer.alphabet

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="Fractal Flood", lifespan=lifespan, redoc_url=None,
                  description="An OpenAI-compatible API over Fractal Flood's batched engine: "
                              "/v1/completions, /v1/chat/completions, and /v1/flood (every block's roots "
                              "and chunks, for the playground page at /). max_tokens counts roots.")
    app.router.route_class = JsonBodyRoute
    app.state.engine, app.state.metrics = engine, metrics
    metrics.watch(engine)

    app.add_middleware(CountResponses, metrics=metrics)

    @app.exception_handler(ApiError)
    async def api_error(request, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request, e: RequestValidationError):
        err = validation_error(list(e.errors()), e.body, BODIES.get(request.url.path, CompletionRequest), limits)
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(ClientDisconnect)
    async def hung_up(request, e: ClientDisconnect):
        log.info("%s hung up before sending its whole body (%s %s)", who(request), request.method,
                 request.url.path)
        return PlainTextResponse("", status_code=499)  # nobody reads this

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, e: StarletteHTTPException):
        err = ApiError(e.status_code, str(e.detail), code="not_found" if e.status_code == 404 else None)
        return JSONResponse(err.body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request, e: Exception):
        err = ApiError(500, f"internal error: {type(e).__name__}", kind="server_error", code="internal_error")
        return JSONResponse(err.body(), status_code=500)

    @app.get("/health")
    async def health():
        if not getattr(engine, "alive", True):  # the engine's process has exited
            return JSONResponse({"status": "engine stopped", "model": model_id}, status_code=503)
        return {"status": "ok", "model": model_id, "active": engine.active, "queued": engine.queued,
                "slots": engine.max_batch}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": created,
                                            "owned_by": "fractal-flood"}]}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=metrics.content_type)

    def check_model(parsed: Parsed) -> None:
        if parsed.model is not None and parsed.model != model_id:
            raise ApiError(404, f"the model {parsed.model!r} does not exist; this server has {model_id!r}",
                           "model", "model_not_found")

    handoffs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> its Handoff

    def submit(parsed: Parsed):
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        handoff = handoffs.get(loop)
        if handoff is None:
            handoff = handoffs[loop] = Handoff(loop)

        def post(item):
            handoff.post(queue, item)

        try:
            job = engine.submit(parsed.request, lambda j, block: post(("block", block)),
                                lambda j: post(("done", j)))
        except QueueFull as e:
            raise ApiError(503, str(e), kind="server_error", code="queue_full",
                           headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        except EngineUnavailable as e:
            raise ApiError(503, str(e), kind="server_error", code="engine_unavailable") from None
        except FractalFloodError as e:
            raise ApiError(400, str(e), code="invalid_request") from None
        return job, queue

    async def wait_done(request: HttpRequest, job: Job, queue: asyncio.Queue) -> Optional[Job]:
        while True:
            try:
                kind, item = await asyncio.wait_for(queue.get(), POLL_S)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    job.cancel()
                    log.info("%s hung up before its completion was done; its slot is freed", who(request))
                    return None
                continue
            if kind == "done":
                return item

    def finished(job: Job) -> dict:
        c = job.completion
        if c.finish_reason == "error":
            metrics.failed()
            raise ApiError(500, f"generation failed: {type(job.error).__name__}", kind="server_error",
                           code="internal_error")
        metrics.completion(len(job.prompt_ids), len(c.root_ids), c.chunks, len(c.text), c.seconds)
        return {"prompt_tokens": len(job.prompt_ids), "completion_tokens": len(c.root_ids),
                "total_tokens": len(job.prompt_ids) + len(c.root_ids)}

    def extension(job: Job) -> dict:
        c = job.completion
        return {"seed": job.request.seed, "roots": len(c.root_ids), "chunks": c.chunks, "chars": len(c.text),
                "blocks": c.blocks, "seconds": c.seconds, "manager_seconds": c.manager_s,
                "flood_seconds": c.flood_s}

    async def run(request: HttpRequest, parsed: Parsed, chat: bool):
        check_model(parsed)
        job, queue = submit(parsed)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        obj = "chat.completion" if chat else "text_completion"
        now = int(time.time())
        if parsed.stream:
            return StreamingResponse(stream(job, queue, rid, now, chat, who(request)),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        done = await wait_done(request, job, queue)
        if done is None:
            return PlainTextResponse("", status_code=499)  # the client is gone; nobody reads this
        usage = finished(job)
        c = job.completion
        choice = ({"index": 0, "message": {"role": "assistant", "content": c.text},
                   "finish_reason": c.finish_reason, "logprobs": None} if chat else
                  {"index": 0, "text": c.text, "finish_reason": c.finish_reason, "logprobs": None})
        return {"id": rid, "object": obj, "created": now, "model": model_id, "choices": [choice],
                "usage": usage, "fractal_flood": extension(job)}

    async def stream(job: Job, queue: asyncio.Queue, rid: str, now: int, chat: bool, client: str):
        obj = "chat.completion.chunk" if chat else "text_completion"

        def event(delta: Optional[str], finish: Optional[str], extra: Optional[dict] = None,
                  role: bool = False) -> str:
            if chat:
                d = {"role": "assistant", "content": ""} if role else {} if delta is None else {"content": delta}
                choice = {"index": 0, "delta": d, "finish_reason": finish, "logprobs": None}
            else:
                choice = {"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}
            body = {"id": rid, "object": obj, "created": now, "model": model_id, "choices": [choice]}
            if extra:
                body.update(extra)
            return f"data: {json.dumps(body)}\n\n"

        try:
            if chat:
                yield event(None, None, role=True)
            while True:
                kind, item = await queue.get()
                if kind == "block":
                    if item.text:
                        yield event(item.text, None)
                    continue
                try:
                    usage = finished(item)
                except ApiError as e:
                    yield f"data: {json.dumps(e.body())}\n\n"
                    break
                yield event(None if chat else "", item.completion.finish_reason,
                            {"usage": usage, "fractal_flood": extension(item)})
                break
            yield "data: [DONE]\n\n"
        finally:
            if not job.done.is_set():
                job.cancel()  # the client went away mid-stream: free the slot
                log.info("%s hung up mid-stream; its slot is freed", client)

    @app.get("/")
    async def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/static/{name}")
    async def static(name: str):
        if name not in STATIC_FILES:  # a fixed list: no path from the client reaches the disk
            raise ApiError(404, f"no static file {name!r}", code="not_found")
        return FileResponse(STATIC / name, media_type=STATIC_FILES[name])

    @app.get("/bench.json")
    async def bench():
        if bench_json is None:
            raise ApiError(404, "no bench results: start the server with --bench-json FILE "
                                "(the output of fractal-flood bench --json FILE)", code="no_bench")
        try:
            return JSONResponse(json.loads(Path(bench_json).read_text(encoding="utf-8")))
        except (OSError, ValueError) as e:
            raise ApiError(500, f"cannot read {bench_json}: {e}", kind="server_error", code="bad_bench") from None

    @app.post("/v1/flood")
    async def flood(request: HttpRequest, body: CompletionRequest):
        """Not OpenAI: server-sent events of every block's roots (id, text, energy, chunks with
        their characters and energies) and timings, for the playground page. The body is a
        completion's; stop is not supported."""
        parsed = from_completion(body, limits, alphabet)
        if parsed.request.stop:
            raise ApiError(400, "stop is not supported by /v1/flood", "stop", "unsupported")
        # the page shows every root's and chunk's energy: ask for the energy pass, which a
        # K = 1 flood otherwise skips (same text either way)
        renderer = parsed.request.renderer
        opts = replace(renderer.options or pipe.options, energies=True)
        parsed.request = replace(parsed.request, renderer=replace(renderer, options=opts))
        job, queue = submit(parsed)
        client = who(request)

        async def events():
            try:
                while True:
                    kind, item = await queue.get()
                    if kind == "block":
                        yield f"data: {json.dumps(block_event(item))}\n\n"
                        continue
                    try:
                        finished(item)
                        yield f"data: {json.dumps({'done': True, 'finish_reason': item.completion.finish_reason, **extension(item)})}\n\n"
                    except ApiError as e:
                        yield f"data: {json.dumps(e.body())}\n\n"
                    break
                yield "data: [DONE]\n\n"
            finally:
                if not job.done.is_set():
                    job.cancel()
                    log.info("%s hung up mid-stream; its slot is freed", client)

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/v1/completions")
    async def completions(request: HttpRequest, body: CompletionRequest):
        """OpenAI's completions: the text after the prompt (streamed as server-sent events
        with stream: true)."""
        return await run(request, from_completion(body, limits, alphabet), chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HttpRequest, body: ChatRequest):
        """OpenAI's chat completions: the conversation is written as the corpus's dialogue
        and the model speaks the next turn."""
        parsed, _speaker = from_chat(body, limits, alphabet)
        return await run(request, parsed, chat=True)

    return app
