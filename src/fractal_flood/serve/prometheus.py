"""The server's metrics through ``prometheus_client``, in a registry of the app's own (not
the process-wide one, so several apps in one process keep apart): request counters by
endpoint and status (5xx included), completion counters, a latency histogram, and the
engine's gauges and counters, read when /metrics is scraped."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class EngineCollector:
    """The engine's (``generation.engine.Engine``, or ``engine_process.EngineProcess``'s last
    report of it) gauges and work counters, at scrape time."""

    def __init__(self, engine):
        self.engine = engine

    def collect(self):
        e = self.engine
        for name, value, text in (("queue_length", e.queued, "Requests waiting for a slot."),
                                  ("active_requests", e.active, "Requests being generated."),
                                  ("slots", e.max_batch, "Requests generated at once, at most.")):
            yield GaugeMetricFamily(f"fractal_flood_{name}", text, value=value)
        for name, value, text in (
                ("engine_rounds", e.rounds, "Engine rounds (manager steps for a block, then a flood)."),
                ("engine_busy_seconds", e.busy_s, "Seconds the engine spent in rounds."),
                ("engine_flood_seconds", e.flood_s,
                 "Of those, seconds in renders (the rest: the manager's steps and bookkeeping)."),
                ("manager_steps", e.steps_run, "Batched manager decode steps."),
                ("manager_row_steps", e.row_steps,
                 "Rows in those steps, summed (divided by manager_steps: the mean batch).")):
            yield CounterMetricFamily(f"fractal_flood_{name}", text, value=value)


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("fractal_flood_requests", "HTTP requests answered, by endpoint and status.",
                                ["endpoint", "status"], registry=r)
        self.server_errors = Counter("fractal_flood_server_errors",
                                     "HTTP requests answered with a 5xx status (503: the queue was full); "
                                     "requests_total has them by endpoint and status.", registry=r)
        self.failed_completions = Counter(
            "fractal_flood_failed_completions",
            "Completions whose generation failed (a 500, or an error event in a stream already answered 200).",
            registry=r)
        self.prompt_tokens = Counter("fractal_flood_prompt_tokens", "Prompt roots read.", registry=r)
        self.completion_tokens = Counter("fractal_flood_completion_tokens",
                                         "Roots generated (the manager's tokens).", registry=r)
        self.completion_chunks = Counter("fractal_flood_completion_chunks",
                                         "Chunks rendered (the project's unit of tokens/s).", registry=r)
        self.completion_chars = Counter("fractal_flood_completion_chars", "Characters returned.", registry=r)
        self.latency = Histogram("fractal_flood_request_seconds",
                                 "Completion latency, from arrival to the last text.", buckets=LATENCY_BUCKETS,
                                 registry=r)

    def watch(self, engine) -> None:
        self.registry.register(EngineCollector(engine))

    def request(self, endpoint: str, status: int) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        if status >= 500:
            self.server_errors.inc()

    def failed(self) -> None:
        self.failed_completions.inc()

    def completion(self, prompt_roots: int, roots: int, chunks: int, chars: int, seconds: float) -> None:
        self.prompt_tokens.inc(prompt_roots)
        self.completion_tokens.inc(roots)
        self.completion_chunks.inc(chunks)
        self.completion_chars.inc(chars)
        self.latency.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
