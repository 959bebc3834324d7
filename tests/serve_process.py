"""A real ``fractal-flood serve`` process on 127.0.0.1 for the end-to-end tests."""

import contextlib
import socket
import subprocess
import sys
import time

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(args: list, log_path, env=None, startup_s: float = 120):
    """Start ``fractal-flood serve ARGS --host 127.0.0.1 --port <free>``, wait for /health,
    yield its base URL; stop it afterwards. The server's output goes to ``log_path``, shown
    when it does not start."""
    port = free_port()
    with open(log_path, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "fractal_flood", "serve", "--host", "127.0.0.1",
                                 "--port", str(port), *args], stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_s
        while True:
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"server did not start: {open(log_path).read()}")
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
