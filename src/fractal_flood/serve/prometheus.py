"""The server's counters, written in the Prometheus text format (version 0.0.4)."""

from __future__ import annotations

import threading

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class ServerMetrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict = {}  # (endpoint, status code) -> count
        self.roots = self.chunks = self.chars = self.prompt_roots = 0
        self.latency_counts = [0] * len(LATENCY_BUCKETS)
        self.latency_sum = 0.0
        self.latency_n = 0

    def request(self, endpoint: str, status: int) -> None:
        with self._lock:
            key = (endpoint, status)
            self.requests[key] = self.requests.get(key, 0) + 1

    def completion(self, prompt_roots: int, roots: int, chunks: int, chars: int, seconds: float) -> None:
        with self._lock:
            self.prompt_roots += prompt_roots
            self.roots += roots
            self.chunks += chunks
            self.chars += chars
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    self.latency_counts[i] += 1
            self.latency_sum += seconds
            self.latency_n += 1

    def render(self, engine) -> str:
        """The counters, and the engine's gauges and work counters (``engine.Engine``)."""
        queued, active, slots = engine.queued, engine.active, engine.max_batch
        with self._lock:
            out = ["# HELP fractal_flood_requests_total HTTP requests answered, by endpoint and status.",
                   "# TYPE fractal_flood_requests_total counter"]
            for (endpoint, status), n in sorted(self.requests.items()):
                out.append(f'fractal_flood_requests_total{{endpoint="{endpoint}",status="{status}"}} {n}')
            for name, value, text in (
                    ("prompt_tokens", self.prompt_roots, "Prompt roots read."),
                    ("completion_tokens", self.roots, "Roots generated (the manager's tokens)."),
                    ("completion_chunks", self.chunks, "Chunks rendered (the project's unit of tokens/s)."),
                    ("completion_chars", self.chars, "Characters returned.")):
                out += [f"# HELP fractal_flood_{name}_total {text}", f"# TYPE fractal_flood_{name}_total counter",
                        f"fractal_flood_{name}_total {value}"]
            for name, value, text in (("queue_length", queued, "Requests waiting for a slot."),
                                      ("active_requests", active, "Requests being generated."),
                                      ("slots", slots, "Requests generated at once, at most.")):
                out += [f"# HELP fractal_flood_{name} {text}", f"# TYPE fractal_flood_{name} gauge",
                        f"fractal_flood_{name} {value}"]
            for name, value, text in (
                    ("engine_rounds", engine.rounds, "Engine rounds (manager steps for a block, then a flood)."),
                    ("engine_busy_seconds", round(engine.busy_s, 6), "Seconds the engine spent in rounds."),
                    ("engine_flood_seconds", round(engine.flood_s, 6),
                     "Of those, seconds in renders (the rest: the manager's steps and bookkeeping)."),
                    ("manager_steps", engine.slots.steps_run, "Batched manager decode steps."),
                    ("manager_row_steps", engine.slots.row_steps,
                     "Rows in those steps, summed (divided by manager_steps: the mean batch).")):
                out += [f"# HELP fractal_flood_{name}_total {text}", f"# TYPE fractal_flood_{name}_total counter",
                        f"fractal_flood_{name}_total {value}"]
            out += ["# HELP fractal_flood_request_seconds Completion latency, from arrival to the last text.",
                    "# TYPE fractal_flood_request_seconds histogram"]
            for bound, n in zip(LATENCY_BUCKETS, self.latency_counts):
                out.append(f'fractal_flood_request_seconds_bucket{{le="{bound}"}} {n}')
            out += [f'fractal_flood_request_seconds_bucket{{le="+Inf"}} {self.latency_n}',
                    f"fractal_flood_request_seconds_sum {self.latency_sum:.6f}",
                    f"fractal_flood_request_seconds_count {self.latency_n}"]
        return "\n".join(out) + "\n"
