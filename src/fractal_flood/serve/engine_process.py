"""The server's engine in a process of its own, so that HTTP work never waits on it.

In one process the engine's thread and the HTTP thread take turns at the interpreter lock:
each of the engine's C calls hands it over, and getting it back waits for whatever Python
the HTTP thread is running (parsing, validating, writing JSON). On the 2-core CPU at 32
clients (2026-12-07) that kept the engine off its core ~12% of the time, and the HTTP
thread's replies waited on the engine's Python likewise. Here the engine (the very same
``generation.engine.Engine``) runs rounds in a child process, and the server's process only
validates requests, sends them, and receives blocks.

``EngineProcess`` stands where the app expects an ``Engine``: ``submit`` (validated here,
with the same rule and errors as ``Engine.submit``: unknown characters, numbers and decoders
are a FractalFloodError, a full queue a QueueFull), jobs with ``cancel`` and ``done``, the
counters /metrics reports, ``start`` and ``stop``. The parent and the child talk over the
child's standard input and output, one JSON object a line (no pickle):

- to the child: ``{"op": "submit", "id", "request", "prompt_ids"}`` (``GenerationRequest.to_dict``,
  validated here, and its prompt's ids),
  ``{"op": "cancel", "id"}``; the end of its input stops it;
- from the child: ``{"op": "ready"}`` once its model is loaded, ``{"op": "block", "id", ...}``
  per block, ``{"op": "done", "id", ...}`` per finished request, ``{"op": "stats", ...}``
  (the counters /health and /metrics report) after every round and every finished request.

A request's text is the engine's, so it is the same as in one process (tested, and the load
test compares every served text with its solo run). If the child dies, every request in it
finishes with an error (a 500), and later ones are refused with ``EngineUnavailable`` (503).

The child: ``python -m fractal_flood.serve.engine_process SETTINGS_JSON``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from dataclasses import fields
from typing import Callable, Optional

from ..errors import FractalFloodError
from ..generation.engine import Block, Completion, QueueFull, prepared
from ..generation.request import GenerationRequest

START_S = 300  # the child's model load and first build of the C kernels, at most


class EngineUnavailable(FractalFloodError):
    """The engine's process is not running (it failed to start, or exited)."""


class EngineError(Exception):
    """What failed in the engine's process (its exception's type and message)."""


class RemoteJob:
    """A request in the child's engine, as the app sees a ``generation.engine.Job``."""

    def __init__(self, owner: "EngineProcess", ident: int, request: GenerationRequest, prompt_ids: list,
                 on_block: Optional[Callable] = None, on_done: Optional[Callable] = None):
        self.owner, self.id, self.request, self.prompt_ids = owner, ident, request, prompt_ids
        self.on_block, self.on_done = on_block, on_done
        self.completion: Optional[Completion] = None
        self.error: Optional[Exception] = None
        self.cancelled = False
        self.done = threading.Event()

    def cancel(self) -> None:
        """Frees the slot at the next block boundary (a disconnected client)."""
        if not self.cancelled and not self.done.is_set():
            self.cancelled = True
            self.owner._send({"op": "cancel", "id": self.id})

    def _finish(self, completion: Completion, error: Optional[Exception] = None) -> None:
        self.completion, self.error = completion, error
        self.done.set()
        if self.on_done is not None:
            self.on_done(self)


def _reported(name: str) -> property:
    """A counter of the child's engine, as its last stats message gave it."""
    return property(lambda self: self._stats[name])


def failed(request: Optional[GenerationRequest]) -> Completion:
    """The completion of a request that failed before any text."""
    return Completion(request, "", [], "error", 0, 0, 0.0, 0.0, 0.0)


def done_message(ident: int, completion: Completion, error: Optional[str]) -> dict:
    """A finished request as the child sends it: the completion's fields but its request (the
    parent holds that), and what failed, if anything."""
    return {"op": "done", "id": ident, "error": error,
            **{f.name: getattr(completion, f.name) for f in fields(Completion) if f.name != "request"}}


class EngineProcess:
    """``generation.engine.Engine``'s interface over an engine in a child process.

    ``pipe`` is this process's pipeline (the tokenizer and decoders validate requests here);
    ``settings``: what the child loads (``model``, ``device``, ``dtype``, ``decoder``,
    ``threads``) and runs (``max_batch``, ``block_roots``, ``max_queue``)."""

    def __init__(self, pipe, settings: dict):
        self.pipe, self.settings = pipe, dict(settings)
        self.max_batch, self.max_queue = settings["max_batch"], settings["max_queue"]
        self._proc: Optional[subprocess.Popen] = None
        self._jobs: dict = {}  # id -> RemoteJob, submitted and not done
        self._lock = threading.Lock()  # _jobs, _next, _gone
        self._write_lock = threading.Lock()  # the child's input (never held with _lock: a write
        # that waits for a full pipe never keeps the reader from finishing a job)
        self._next = 0
        self._reader: Optional[threading.Thread] = None
        self._ready = threading.Event()
        self._gone: Optional[str] = None  # why the child is not running
        self._stats = {"active": 0, "queued": 0, "rounds": 0, "busy_s": 0.0, "flood_s": 0.0, "steps_run": 0,
                       "row_steps": 0}

    # ---- the Engine's interface -----------------------------------------------------------

    def start(self) -> None:
        if self._proc is not None:
            return
        cmd = [sys.executable, "-m", "fractal_flood.serve.engine_process", json.dumps(self.settings)]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=child_environment())
        self._gone = None
        self._reader = threading.Thread(target=self._read, name="fractal-flood-engine-reader", daemon=True)
        self._reader.start()
        if not self._ready.wait(START_S) or self._gone:
            self.stop()
            raise EngineUnavailable(f"the engine's process did not start: {self._gone or 'timed out'}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with self._write_lock:
            try:
                proc.stdin.close()  # the child stops at the end of its input
            except OSError:
                pass
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if self._reader is not None:
            self._reader.join(30)
        proc.stdout.close()
        self._ready.clear()

    def submit(self, request: GenerationRequest, on_block=None, on_done=None) -> RemoteJob:
        request, prompt_ids, _decoder = prepared(self.pipe, request)
        with self._lock:
            if self._gone is not None or self._proc is None:
                raise EngineUnavailable(f"the engine is not running: {self._gone or 'not started'}")
            # Engine.submit's rule: waiting >= max_queue + free slots, i.e. submitted and not
            # done >= max_queue + max_batch
            if len(self._jobs) >= self.max_queue + self.max_batch:
                raise QueueFull(f"the queue is full ({self.max_queue} waiting); retry shortly")
            self._next += 1
            job = RemoteJob(self, self._next, request, prompt_ids, on_block, on_done)
            self._jobs[job.id] = job  # from here the reader fails it if the child ends
        self._send({"op": "submit", "id": job.id, "request": request.to_dict(), "prompt_ids": prompt_ids})
        return job

    # what /health and /metrics report: the child's report after its last round or request
    queued = _reported("queued")
    active = _reported("active")
    rounds = _reported("rounds")
    busy_s = _reported("busy_s")
    flood_s = _reported("flood_s")
    steps_run = _reported("steps_run")
    row_steps = _reported("row_steps")

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._gone is None

    # ---- the pipes ----------------------------------------------------------------------------

    def _send(self, msg: dict) -> None:
        data = (json.dumps(msg) + "\n").encode()
        with self._write_lock:
            proc = self._proc
            if proc is None or self._gone is not None:
                return
            try:
                proc.stdin.write(data)
                proc.stdin.flush()
            except (OSError, ValueError):  # the child is gone (or stop() closed its input): the
                pass  # reader fails its jobs

    def _read(self) -> None:
        proc = self._proc
        try:
            for line in proc.stdout:
                msg = json.loads(line)
                op = msg.pop("op")
                if op == "block":
                    job = self._jobs.get(msg.pop("id"))
                    if job is not None and job.on_block is not None:
                        job.on_block(job, Block(render=None, **msg))
                elif op == "done":
                    with self._lock:
                        job = self._jobs.pop(msg.pop("id"), None)
                    if job is not None:
                        error = msg.pop("error")
                        job._finish(Completion(job.request, **msg), None if error is None else EngineError(error))
                elif op == "stats":
                    self._stats = msg
                elif op == "ready":
                    self._ready.set()
        except (OSError, ValueError) as e:  # a broken pipe, a line that is not JSON
            reason = f"its output broke off ({type(e).__name__})"
        else:
            reason = "it exited"
        code = proc.poll()
        if code is None:
            try:
                code = proc.wait(5)
            except subprocess.TimeoutExpired:
                code = None
        with self._lock:
            self._gone = f"{reason} (exit status {code})" if self._ready.is_set() else \
                f"it exited while loading (exit status {code}; its messages are above)"
            jobs, self._jobs = list(self._jobs.values()), {}
        self._ready.set()  # wakes a start() still waiting
        for job in jobs:  # nobody else will finish them
            job._finish(failed(job.request), EngineError(f"the engine's process ended: {self._gone}"))


def child_environment() -> dict:
    """The child's environment: this one, with the package's folder on its path (a server run
    from a source tree without installing finds the same package)."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# ---- the child ---------------------------------------------------------------------------------


def _child(settings: dict) -> int:
    import torch

    from ..generation.engine import Engine, Job
    from ..generation.pipeline import load_pipeline

    out = os.fdopen(os.dup(1), "wb", buffering=0)  # the messages' channel
    os.dup2(2, 1)  # anything else printed goes to the server's log, not into the messages
    write_lock = threading.Lock()

    def send(msg: dict) -> None:
        data = (json.dumps(msg) + "\n").encode()
        with write_lock:
            out.write(data)

    pipe = load_pipeline(settings["model"], settings["device"], settings["dtype"], settings["decoder"])
    if settings.get("threads") is not None:
        torch.set_num_threads(settings["threads"])
    engine = Engine(pipe, max_batch=settings["max_batch"], block_roots=settings["block_roots"],
                    max_queue=settings["max_queue"])
    jobs: dict = {}  # id -> Job

    def stats(*_):
        send({"op": "stats", "active": engine.active, "queued": engine.queued, "rounds": engine.rounds,
              "busy_s": engine.busy_s, "flood_s": engine.flood_s, "steps_run": engine.steps_run,
              "row_steps": engine.row_steps})

    def on_block(ident: int, block: Block) -> None:
        send({"op": "block", "id": ident, "root_ids": block.root_ids, "root_texts": block.root_texts,
              "text": block.text, "energies": block.energies, "chunk_counts": block.chunk_counts,
              "manager_s": block.manager_s, "flood_s": block.flood_s})

    def on_done(ident: int, job) -> None:
        jobs.pop(ident, None)
        error = None if job.error is None else f"{type(job.error).__name__}: {job.error}"
        send(done_message(ident, job.completion, error))
        stats()  # its slot is free now (a round may not follow: an idle engine ends none)

    engine.on_round = stats
    engine.start()
    send({"op": "ready"})
    try:
        for line in sys.stdin.buffer:
            msg = json.loads(line)
            if msg["op"] == "submit":
                ident = msg["id"]
                try:
                    # validated and encoded by the parent (the same code): no tokenizer here, whose
                    # thread pool would take turns with the engine's thread
                    request = GenerationRequest.from_dict(msg["request"])
                    decoder = pipe.decoder_for(request.seed, request.renderer.decoder, request.renderer.options)
                    job = Job(request, msg["prompt_ids"], decoder, lambda j, block, ident=ident: on_block(ident, block),
                              lambda j, ident=ident: on_done(ident, j))
                    jobs[ident] = job
                    engine.enqueue(job)
                except (FractalFloodError, ValueError, TypeError) as e:  # the parent validated it: unexpected
                    jobs.pop(ident, None)
                    send(done_message(ident, failed(None), f"{type(e).__name__}: {e}"))
            elif msg["op"] == "cancel" and msg["id"] in jobs:
                jobs[msg["id"]].cancel()
    finally:
        engine.stop()
    return 0


def main(argv: Optional[list] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m fractal_flood.serve.engine_process SETTINGS_JSON", file=sys.stderr)
        return 2
    try:
        return _child(json.loads(argv[0]))
    except FractalFloodError as e:  # a model that does not load: one line in the server's log
        print(f"fractal-flood serve: the engine's process: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the server's Ctrl-C reaches its whole process group
        return 130


if __name__ == "__main__":
    sys.exit(main())
