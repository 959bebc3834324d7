"""``fractal-flood serve``: the flags, the listening socket, and starting uvicorn. The
server's libraries (FastAPI, uvicorn, ...) are imported only when the command runs, so the
rest of the CLI stays light."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from ..errors import FractalFloodError
from ..generation.request import DEFAULT_SERVE_BLOCK_ROOTS
from ..render.decoders import DECODERS
from .args import MAX_BATCH, MAX_ROOTS, int_in

DESCRIPTION = ("An OpenAI-compatible HTTP API with continuous batching: POST /v1/completions and "
               "/v1/chat/completions (streaming too), POST /v1/flood (every block's roots and chunks as "
               "server-sent events), GET /v1/models, /health, /metrics (Prometheus); the playground page "
               "at / and the API's schema at /docs and /openapi.json. Needs the [serve] extra.")


def add_arguments(v) -> None:
    v.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    v.add_argument("--port", type=int_in(0, 65535), default=8000, help="TCP port")
    v.add_argument("--model", help="model directory (default: the shipped model)")
    v.add_argument("--device", default="auto", help="cpu, cuda or auto")
    v.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16")
    v.add_argument("--decoder", default="flood", choices=DECODERS, help="default decoder")
    v.add_argument("--max-batch", type=int_in(1, MAX_BATCH), default=32, help="requests generated at once (slots)")
    v.add_argument("--max-queue", type=int_in(0, 1 << 20), default=64,
                   help="requests waiting for a slot before new ones get 503 + Retry-After")
    v.add_argument("--block", type=int_in(1, MAX_ROOTS), default=DEFAULT_SERVE_BLOCK_ROOTS,
                   help="roots per block: text streams once per block (new requests join every few manager steps; the text never depends on the block)")
    v.add_argument("--max-tokens-limit", type=int_in(1, MAX_ROOTS), default=4096, help="largest max_tokens (roots) accepted")
    v.add_argument("--model-name", default="fractal-flood", help="the model id clients ask for")
    v.add_argument("--bench-json", metavar="FILE",
                   help="a fractal-flood bench --json file: the page's bench view draws it")
    v.add_argument("--threads", type=int_in(1, 1024), default=None,
                   help="torch intra-op threads (default on a CPU: half the cores, at least 1; the "
                        "HTTP loop and the engine's Python need the rest: on 2 cores one thread "
                        "beat two at every load, docs/log/notebook.md 'Serving'; on a GPU: torch's)")
    v.add_argument("--engine", default="process", choices=("process", "thread"),
                   help="where the engine runs rounds: a process of its own (the default: HTTP work never "
                        "waits on it) or a thread of the server's process (one process; the engine and "
                        "the HTTP loop take turns at the interpreter lock)")
    v.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))


def default_threads(device) -> int | None:
    """``serve``'s torch threads when ``--threads`` is not given: half the cores on a CPU
    (at least 1), torch's own choice (None) on a GPU."""
    if device.type != "cpu":
        return None
    return max(1, (os.cpu_count() or 1) // 2)


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to HOST:PORT (uvicorn listens on it), bound before the model loads so a
    port in use or an address this machine does not have is one line, at once."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise FractalFloodError(f"cannot listen on {host}:{port}: {getattr(e, 'strerror', None) or e}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise FractalFloodError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def run(args) -> int:
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn
        from pydantic import field_validator  # noqa: F401  (pydantic 2)
    except ImportError:
        raise FractalFloodError("serve needs FastAPI, pydantic 2, uvicorn and prometheus_client: "
                                "pip install 'fractal-flood[serve]'") from None
    if args.bench_json is not None and not Path(args.bench_json).is_file():
        raise FractalFloodError(f"--bench-json: no such file {args.bench_json}")
    if args.max_queue < 0:
        raise FractalFloodError(f"--max-queue must be >= 0, got {args.max_queue}")
    sock = listen(args.host, args.port)
    try:
        return _serve(args, sock, uvicorn)
    finally:
        sock.close()


def _serve(args, sock: socket.socket, uvicorn) -> int:
    import torch

    from ..generation.pipeline import load_pipeline
    from ..serve.app import create_app
    from ..serve.openai_schema import Limits
    from ..device import resolve_device, resolve_dtype
    from ..serve.engine_process import EngineProcess
    device = resolve_device(args.device)
    resolve_dtype(args.dtype, device)  # a bad one is one line here, not the engine process's failure
    threads = args.threads if args.threads is not None else default_threads(device)
    engine = None
    if args.engine == "process":  # this process validates requests and speaks HTTP: the CPU model will do
        pipe = load_pipeline(args.model, "cpu", "auto", args.decoder)
        torch.set_num_threads(1)
        engine = EngineProcess(pipe, {"model": args.model, "device": args.device, "dtype": args.dtype,
                                      "decoder": args.decoder, "threads": threads, "max_batch": args.max_batch,
                                      "block_roots": args.block, "max_queue": args.max_queue})
    else:
        pipe = load_pipeline(args.model, args.device, args.dtype, args.decoder)
        if threads is not None:
            torch.set_num_threads(threads)
    limits = Limits(max_tokens=args.max_tokens_limit)
    app = create_app(pipe, args.max_batch, args.max_queue, args.block, limits, args.model_name,
                     Path(args.bench_json) if args.bench_json else None, engine)
    port = sock.getsockname()[1]  # --port 0: the one the system chose
    print(f"fractal-flood serve: {args.model or 'shipped model'} on {device}, "
          f"http://{args.host}:{port}/ ({args.max_batch} slots, queue {args.max_queue}, "
          f"{threads if threads is not None else torch.get_num_threads()} torch thread(s), "
          f"the engine on {'a process of its own' if args.engine == 'process' else 'a thread'})",
          file=sys.stderr, flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level=args.log_level))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # as uvicorn.run: a second Ctrl-C during the shutdown
        pass
    if not server.started:  # uvicorn has logged why
        raise FractalFloodError("the server did not start (see the lines above)")
    return 0
