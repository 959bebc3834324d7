"""Load test for ``fractal-flood serve``: throughput and latency against concurrency.

Starts a server on 127.0.0.1 (a free port; the shipped model unless --model), then for each
concurrency level sends the same fixed set of requests (prompt, max_tokens, seed) from that
many clients (a closed loop: each sends its next request when its last is answered) and
prints requests/s, tokens/s (a token is one level-1 chunk, as in the bench; roots/s and
chars/s too) and p50/p99 latency. Bounded: --requests per level and --time-limit seconds per
level. Loopback only.

The clients are coroutines on one thread, each on its own keep-alive connection, writing
plain HTTP/1.1: the load generator shares the machine's cores with the server, and a
thread per client through an HTTP library took ~60% of a core at 32 clients on the 2-core
CPU (2026-12-07), which the server then did not get. Its own CPU time is in the table.

Exactness: concurrency 1 runs every request alone, which is its solo run; every other level
must return the very same text for every request (the engine's promise), and the table says
whether it did.

    PYTHONPATH=src python scripts/load_test.py                   # 1, 4, 16, 32 clients
    PYTHONPATH=src python scripts/load_test.py --levels 1,8 --requests 16 --max-tokens 32
    PYTHONPATH=src python scripts/load_test.py --engines         # and CTranslate2's generate_batch

With ``--engines`` (``pip install 'fractal-flood[engines]'``), after the server has stopped:
the model's AR peer in CTranslate2 (``measure/ct2_peer.py``; float32 and int8, at the
server's torch threads) writes, in one ``generate_batch`` per window, for as many prompts as
the top level's clients (the requests' own prompts, left-padded with newline chunks), as
many chunks each as the server wrote per request at that level, at the same temperature;
its tokens/s (median of 3 runs after a warm-up) and the served level's over it are printed.
The engines are loaded while the server idles, and with ``--rounds N`` the top level served
and each compute type then take turns N times, their order rotated round by round, each
round's ratios and their medians printed (the shared CPU's speed drifts between runs: only
ratios measured side by side compare).

    PYTHONPATH=src python scripts/load_test.py --levels 1,32 --engines --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx

PROMPTS = ["ROMEO:\n", "First Citizen:\n", "KING RICHARD III:\n", "", "JULIET:\nO Romeo, ",
           "MENENIUS:\nWhat is", "All:\n", "DUKE VINCENTIO:\n"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_block() -> int:
    """serve's default roots per round (imported here only: the package imports torch)."""
    from fractal_flood.generation.request import DEFAULT_SERVE_BLOCK_ROOTS
    return DEFAULT_SERVE_BLOCK_ROOTS


def start_server(args) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "fractal_flood", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--device", args.device, "--max-batch", str(args.max_batch), "--max-queue", str(args.requests),
           "--log-level", "warning"]
    if args.block:  # default: serve's own block (DEFAULT_SERVE_BLOCK_ROOTS)
        cmd += ["--block", str(args.block)]
    if args.engine:  # default: serve's own (a process of its own)
        cmd += ["--engine", args.engine]
    if args.model:
        cmd += ["--model", args.model]
    if args.server_threads:  # the server's torch threads; default: torch's
        cmd += ["--threads", str(args.server_threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"load_test: the server exited: {proc.stderr.read()}")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            time.sleep(0.3)
    proc.kill()
    sys.exit("load_test: the server did not start within 180 s")


def bodies(n: int, max_tokens: int) -> list[dict]:
    return [{"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens, "seed": 1000 + i,
             "temperature": 0.8} for i in range(n)]


def engine_counters(base: str) -> dict:
    """The server's engine counters from /metrics (rounds, busy seconds, manager steps, rows)."""
    text = httpx.get(base + "/metrics", timeout=10).text
    names = ("engine_busy_seconds", "engine_flood_seconds", "manager_steps", "manager_row_steps")
    values = dict(line.split() for line in text.splitlines() if line and not line.startswith("#") and "{" not in line)
    return {n: float(values[f"fractal_flood_{n}_total"]) for n in names}


async def _post(conn, host: str, body: bytes) -> tuple[int, bytes]:
    """One POST /v1/completions over an open keep-alive connection -> (status, body)."""
    reader, writer = conn
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
                 b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines[1:] if ":" in h)}
    if "content-length" not in headers:
        raise SystemExit(f"load_test: a response without Content-Length ({lines[0]})")
    return status, await reader.readexactly(int(headers["content-length"]))


async def _clients(base: str, reqs: list[dict], concurrency: int, time_limit: float, t0: float) -> dict:
    """``concurrency`` clients, each on its own keep-alive connection, taking the next request
    as soon as their last one is answered (a closed loop), until all are sent or time is up."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    bodies_json = [json.dumps(r).encode() for r in reqs]
    results: dict = {}
    next_index = [0]

    async def client():
        conn = await asyncio.open_connection(host, int(port))
        try:
            while True:
                i = next_index[0]
                if i >= len(reqs) or time.perf_counter() - t0 > time_limit:
                    return
                next_index[0] += 1
                start = time.perf_counter()
                status, body = await _post(conn, f"{host}:{port}", bodies_json[i])
                latency = time.perf_counter() - start
                if status != 200:
                    raise SystemExit(f"load_test: request {i} got {status}: {body.decode(errors='replace')}")
                d = json.loads(body)
                results[i] = (latency, d["choices"][0]["text"], d["fractal_flood"])
        finally:
            conn[1].close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return results


def run_level(base: str, reqs: list[dict], concurrency: int, time_limit: float) -> dict:
    """One level: the clients run on one thread (asyncio, raw HTTP/1.1), so the load generator
    takes as little of the machine's CPU as it can (its own CPU time is reported: on a small
    machine it shares the cores with the server)."""
    before = engine_counters(base)
    cpu0, t0 = time.process_time(), time.perf_counter()
    results = asyncio.run(_clients(base, reqs, concurrency, time_limit, t0))
    seconds = time.perf_counter() - t0
    client_cpu = time.process_time() - cpu0
    work = {k: v - before[k] for k, v in engine_counters(base).items()}
    lat = sorted(v[0] for v in results.values())
    ext = [v[2] for v in results.values()]
    return {"concurrency": concurrency, "requests": len(results), "seconds": seconds,
            "chunks": sum(e["chunks"] for e in ext),
            "requests_per_s": len(results) / seconds,
            "tokens_per_s": sum(e["chunks"] for e in ext) / seconds,
            "roots_per_s": sum(e["roots"] for e in ext) / seconds,
            "chars_per_s": sum(e["chars"] for e in ext) / seconds,
            "mean_batch": work["manager_row_steps"] / max(1, work["manager_steps"]),
            "engine_busy": work["engine_busy_seconds"] / seconds,
            "flood_share": work["engine_flood_seconds"] / max(1e-9, work["engine_busy_seconds"]),
            "client_cpu": client_cpu / seconds,
            "p50_s": statistics.median(lat), "p99_s": lat[min(len(lat) - 1, int(0.99 * len(lat)))],
            "texts": {i: v[1] for i, v in results.items()}}


class Engines:
    """CTranslate2's ``generate_batch`` of the model's AR peer (float32 and int8, at the
    server's torch threads) for the top level: as many prompts as its clients (the requests'
    own prompts, left-padded with newline chunks), as many chunks each as the server wrote per
    request there, at the same temperature."""

    def __init__(self, args, clients: int, chunks_each: int, tmp: str):
        import torch

        from fractal_flood.cli.serve import default_threads
        from fractal_flood.measure import ct2_peer
        from fractal_flood.models import checkpoint as ckpt
        from fractal_flood.sampling.tokens import SamplingConfig

        m = ckpt.load_model_dir(args.model, torch.device("cpu"), torch.float32, optional=("peer",))
        self.missing = m.peer is None
        if self.missing:
            return
        self.threads = args.server_threads or default_threads(torch.device("cpu"))
        self.B, self.n = clients, max(1, chunks_each)
        newline = m.tokenizer.encode_chunks("\n")[-1]
        self.prompts = ct2_peer.pad_prompts([m.tokenizer.encode_chunks(b["prompt"] or "\n")
                                             for b in bodies(clients, 1)], newline)
        self.sampling = SamplingConfig(temperature=0.8)
        path = ct2_peer.convert(m.peer, f"{tmp}/peer")
        self.engines = {ct: ct2_peer.CT2Peer(path, m.peer.config.context, ct, self.threads)
                        for ct in ct2_peer.COMPUTE_TYPES}
        for engine in self.engines.values():
            engine.generate(self.prompts, self.n, self.sampling)  # warm-up

    def tokens_per_s(self, ct: str) -> tuple[float, list]:
        """(tokens/s of the median of 3 runs, the runs' seconds)."""
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            self.engines[ct].generate(self.prompts, self.n, self.sampling)
            times.append(time.perf_counter() - t0)
        return self.B * self.n / statistics.median(times), times

    def lines(self, served_tps: float) -> list[str]:
        """One line per compute type: its tokens/s and the served level's over it."""
        if self.missing:
            return ["CTranslate2: the model directory has no AR peer"]
        out = []
        for ct in self.engines:
            tps, times = self.tokens_per_s(ct)
            out.append(f"CTranslate2 {ct} generate_batch of the AR peer, {self.B} prompts x {self.n} chunks, "
                       f"{self.threads} thread(s): {tps:,.0f} tokens/s (median of 3: "
                       f"{', '.join(f'{t:.3f}' for t in times)} s); served at {self.B} clients / it: "
                       f"{served_tps / tps:.2f}x")
        return out


def alternated_rounds(base: str, reqs: list[dict], solo: dict, args, engines: Engines, clients: int) -> list[str]:
    """``args.rounds`` rounds of the top level served and each CTranslate2 compute type, their
    order rotated round by round (on a shared CPU the machine's speed drifts between runs, so
    only ratios measured next to each other compare): per round the ratios, then their
    medians. Every served text is compared with its solo run again."""
    names = ["served", *engines.engines]
    ratios: dict = {ct: [] for ct in engines.engines}
    out, unequal = [], 0
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        got = {}
        for name in order:
            if name == "served":
                row = run_level(base, reqs, clients, args.time_limit)
                unequal += sum(row["texts"][i] != solo[i] for i in row["texts"] if i in solo)
                got[name] = row["tokens_per_s"]
            else:
                got[name] = engines.tokens_per_s(name)[0]
        for ct in engines.engines:
            ratios[ct].append(got["served"] / got[ct])
        out.append(f"round {r + 1} ({' '.join(order)}): served {got['served']:,.0f} tokens/s, "
                   + ", ".join(f"ct2-{ct} {got[ct]:,.0f} ({got['served'] / got[ct]:.2f}x)" for ct in engines.engines))
    for ct, v in ratios.items():
        q = statistics.quantiles(v, n=4) if len(v) > 1 else [v[0], v[0], v[0]]
        out.append(f"served at {clients} clients / CTranslate2 {ct} generate_batch ({engines.threads} thread(s)): "
                   f"median {statistics.median(v):.2f}x (quartiles {q[0]:.2f} - {q[2]:.2f}, {len(v)} rounds)")
    out.append(f"texts unequal to their solo run in these rounds: {unequal}")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--levels", default="1,4,16,32", help="comma list of concurrency levels")
    p.add_argument("--requests", type=int, default=256,
                   help="requests per level (the same set each time; 256 = 8 waves of 32: a steady state, "
                        "where 64 would mostly measure the first and last wave)")
    p.add_argument("--max-tokens", type=int, default=64, help="roots per request")
    p.add_argument("--time-limit", type=float, default=300, help="seconds per level: no new requests after")
    p.add_argument("--model", help="model directory (default: the shipped model)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--block", type=int, help="roots per round (serve --block; default: serve's own, "
                   "DEFAULT_SERVE_BLOCK_ROOTS)")
    p.add_argument("--engine", choices=("process", "thread"), help="serve --engine (default: serve's own)")
    p.add_argument("--server-threads", type=int, help="the server's torch threads (serve --threads; "
                   "default: serve's own, half the cores on a CPU)")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--engines", action="store_true",
                   help="then CTranslate2's generate_batch of the AR peer at the top level's clients "
                        "(pip install 'fractal-flood[engines]')")
    p.add_argument("--rounds", type=int, default=0,
                   help="with --engines: then this many alternated rounds of the top level served and "
                        "CTranslate2 (the server kept up), their ratios' medians")
    args = p.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    if levels[0] != 1:
        sys.exit("load_test: the first level must be 1 (it gives each request's solo text)")
    if args.engines:
        from fractal_flood.errors import FractalFloodError
        from fractal_flood.measure import ct2_peer
        try:
            ct2_peer.require()
        except FractalFloodError as e:
            sys.exit(f"load_test: {e}")
        if args.device != "cpu":
            sys.exit("load_test: --engines compares on the CPU only (--device cpu)")
    if args.rounds and not args.engines:
        sys.exit("load_test: --rounds alternates the served level with CTranslate2: add --engines")
    if args.block is not None and args.block < 1:
        sys.exit(f"load_test: --block {args.block}: roots per round must be at least 1")
    proc, base = start_server(args)
    tmp = tempfile.TemporaryDirectory(prefix="fractal-flood-ct2-")
    engines, alternated = None, []
    try:
        reqs = bodies(args.requests, args.max_tokens)
        run_level(base, reqs[:2], 2, args.time_limit)  # warm-up, not timed
        rows, solo = [], None
        for c in levels:
            row = run_level(base, reqs, c, args.time_limit)
            texts = row.pop("texts")
            if solo is None:
                solo = texts
            compared = [i for i in texts if i in solo]  # level 1 may have stopped at its time limit
            row["compared"] = len(compared)
            row["equal_to_solo"] = sum(texts[i] == solo[i] for i in compared)
            rows.append(row)
            print(f"  concurrency {c}: {row['requests']} requests in {row['seconds']:.1f} s", file=sys.stderr)
        if args.engines:  # the server idles meanwhile (its engine thread waits for requests)
            top = rows[-1]
            engines = Engines(args, top["concurrency"], round(top["chunks"] / top["requests"]), tmp.name)
            if args.rounds and not engines.missing:
                alternated = alternated_rounds(base, reqs, solo, args, engines, top["concurrency"])
    finally:
        proc.terminate()
        proc.wait(30)
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    print(f"Load test: {args.requests} requests per level x {args.max_tokens} roots (temperature 0.8), "
          f"server --max-batch {args.max_batch} --block {args.block or serve_block()}"
          f"{f' --engine {args.engine}' if args.engine else ''} on {args.device}"
          f"{f' with {args.server_threads} torch thread(s)' if args.server_threads else ''}; "
          f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, {date}")
    print("| clients | requests | seconds | requests/s | tokens/s | roots/s | chars/s | p50 latency (s) | "
          "p99 latency (s) | mean batch | engine busy | flood share | load generator CPU | text equal to solo |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['concurrency']} | {r['requests']} | {r['seconds']:.1f} | {r['requests_per_s']:.2f} | "
              f"{r['tokens_per_s']:.0f} | {r['roots_per_s']:.0f} | {r['chars_per_s']:.0f} | {r['p50_s']:.2f} | "
              f"{r['p99_s']:.2f} | {r['mean_batch']:.1f} | {r['engine_busy']:.0%} | {r['flood_share']:.0%} | "
              f"{r['client_cpu']:.0%} | "
              f"{r['equal_to_solo']}/{r['compared']} |")
    print("mean batch: rows per manager step; engine busy: the share of the level's wall time the "
          "server's engine spent in rounds (the rest it waited for requests); flood share: the share "
          "of those rounds spent rendering; load generator CPU: this script's own CPU time over the level's wall "
          "time (its clients share the machine's cores with the server)")
    top = rows[-1]
    print(f"{top['concurrency']} clients vs 1: {top['tokens_per_s'] / rows[0]['tokens_per_s']:.2f}x tokens/s")
    if args.engines:
        for line in engines.lines(top["tokens_per_s"]) + alternated:
            print(line)
    tmp.cleanup()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": date, "args": vars(args), "rows": rows}, f, indent=1)
    ok = all(r["equal_to_solo"] == r["compared"] for r in rows) and not any(
        line.startswith("texts unequal") and not line.endswith(": 0") for line in alternated)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
