"""Peak memory of the test suite, the way the machine sees it: the resident set sizes of
pytest and of every process it started (servers, CLI runs, torchrun workers) summed, sampled
every 0.1 s, with the test that was running at the peak.

Turned on by ``FRACTAL_FLOOD_MEMORY_REPORT=FILE`` (conftest.py): at the end of the session
it writes the peak and the ten tests with the highest sampled peaks to FILE and prints the
peak line. With pytest-xdist it runs in the controller only, whose process tree holds every
worker, and a sample is charged to the tests running on all workers at that moment (their
node ids joined by " + "). Linux only (reads /proc)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


def _children() -> dict:
    """pid -> parent pid for every process."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    out[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return out


def tree_rss(root: int) -> int:
    """Bytes resident in ``root`` and all its descendants."""
    parents = _children()
    tree, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p and c not in tree]
        tree.update(kids)
        frontier.extend(kids)
    total = 0
    for pid in tree:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            pass
    return total


class MemoryWatch:
    def __init__(self, path: str, every_s: float = 0.1):
        self.path, self.every_s = Path(path), every_s
        self.running: list = []  # node ids of the tests running now, one per worker at most
        self.test = "(collection)"
        self.peak, self.peak_test = 0, ""
        self.per_test: dict = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            rss, test = tree_rss(me), self.test
            self.per_test[test] = max(self.per_test.get(test, 0), rss)
            if rss > self.peak:
                self.peak, self.peak_test = rss, test
            self._stop.wait(self.every_s)

    # logstart/logfinish fire in the process that reports: pytest itself, or the xdist
    # controller for every worker's test
    def pytest_runtest_logstart(self, nodeid, location) -> None:
        self.running.append(nodeid)
        self.test = " + ".join(self.running)

    def pytest_runtest_logfinish(self, nodeid, location) -> None:
        if nodeid in self.running:
            self.running.remove(nodeid)
        if self.running:
            self.test = " + ".join(self.running)

    def pytest_sessionfinish(self, session) -> None:
        self._stop.set()
        self._thread.join()
        top = sorted(self.per_test.items(), key=lambda kv: -kv[1])[:10]
        lines = [f"suite peak: {self.peak / 2**30:.2f} GiB resident (pytest and its child processes, "
                 f"sampled every {self.every_s} s) during {self.peak_test}", "highest tests:"]
        lines += [f"  {rss / 2**30:.2f} GiB  {test}" for test, rss in top]
        self.path.write_text("\n".join(lines) + "\n")
        print("\n" + lines[0])
