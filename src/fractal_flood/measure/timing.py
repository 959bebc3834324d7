"""Trustworthy wall-clock timing of work that may run asynchronously on a device.

A CUDA kernel launch returns before the kernel has run, so reading the clock right after
a call measures the launch, not the work. ``measure`` therefore synchronises the device
before reading the clock at the start (so work queued earlier, e.g. by the warm-up, is not
charged to this run) and at the end (so this run's own work is). It warms up outside the
timing (kernel selection, allocator growth, CUDA-graph capture) and reports the median of
several runs, which one slow outlier on a shared machine cannot move.

The synchronisation is a plain callable, injected by the caller: ``device_sync(device)``
for real work, or a fake in a test that proves deferred work is charged to the right run.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from ..device import synchronize


def device_sync(device: torch.device) -> Callable[[], None]:
    """A callable that waits for all queued work on ``device`` (a no-op on the CPU)."""
    return lambda: synchronize(device)


def _no_sync() -> None:
    pass


@dataclass
class Timing:
    seconds: float  # median of the timed runs
    times: list = field(default_factory=list)  # every timed run, in order
    warmup_s: float = 0.0  # total warm-up time (not part of ``seconds``)
    result: Any = None  # what the last timed run returned

    @property
    def repeats(self) -> int:
        return len(self.times)


def timed(fn: Callable[[], Any], sync: Callable[[], None] = _no_sync) -> tuple[float, Any]:
    """One run of ``fn`` between two synchronisations -> (seconds, result)."""
    sync()
    t0 = time.perf_counter()
    result = fn()
    sync()
    return time.perf_counter() - t0, result


def measure(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1,
            sync: Callable[[], None] = _no_sync, warmup_fn: Optional[Callable[[], Any]] = None,
            budget_s: Optional[float] = None) -> Timing:
    """Warm up ``warmup`` times (with ``warmup_fn`` if given, e.g. a smaller input for a slow
    baseline), then time ``repeats`` runs of ``fn`` and keep the median.

    ``budget_s`` caps the cost of slow rows: the number of timed runs is cut (never below
    one) so that, at the speed of the last warm-up, they fit in about ``budget_s`` seconds.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    warm, last = 0.0, None
    for _ in range(warmup):
        last, _ = timed(warmup_fn or fn, sync)
        warm += last
    if budget_s is not None and last is not None and warmup_fn is None and last > 0:
        repeats = max(1, min(repeats, int(budget_s / last)))
    times, result = [], None
    for _ in range(repeats):
        if times and budget_s is not None and sum(times) + times[-1] > budget_s:
            break  # one more run like the last would overrun the budget
        dt, result = timed(fn, sync)
        times.append(dt)
    return Timing(statistics.median(times), times, warm, result)
