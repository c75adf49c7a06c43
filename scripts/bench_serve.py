"""HTTP serving throughput of POST /query: micro-batching on vs off, side by side, against the
encoder's own batching gain measured in the same run.

    python scripts/bench_serve.py [--requests 192] [--rounds 2] [--clients 1,4,16] [--budget-s 120]
    python scripts/bench_serve.py --fake [--fixed-ms 40 --per-text-ms 4]

Builds a small collection from the first --docs (100) posts of bellm_search/data/sample_posts.jsonl
with the REAL default encoder, then starts two servers on loopback (port 0) over copies of it:
one with --no-batching (encoder calls of one request each, still on one encoder thread), one with
micro-batching (--max-batch 64, --max-wait-ms 5 by default). Each client sends POST /query
{"text": post, "k": 10}, one request at a time, with the posts NOT in the collection as queries.
Every row (client count x mode) is bounded by --requests and --budget-s, split over --rounds
rounds that interleave the two servers, the order swapped every round, so background load hits
both alike. Reported: requests/s, p50 and p99 latency (p99 of < 100 requests is close to the
max), the mean texts per encoder call, the share of the time the encoder computed (busy), and
the encoder's own ceiling: 16 texts as 16 one-text calls (back to back, as under load) vs one
16-text call, timed by the server's encoder-time counter (no HTTP in it; no server-side batching
can beat that ratio).
The verdict is micro-batching's speed-up at the most clients as a share of that ceiling.

--fake replaces the encoder by a cost model, sleep(fixed + per_text * texts) per call with
hash-seeded vectors: it shows what the batcher does with an encoder whose calls have a fixed
cost (as on a GPU). Its output is labelled COST MODEL and is not a measurement of the encoder.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np

from bellm_search.serve.app import ServerSettings

ROOT = Path(__file__).resolve().parents[1]
POSTS = ROOT / "bellm_search" / "data" / "sample_posts.jsonl"
MAX_REQUESTS = 1000  # per row, whatever is asked


# ----------------------------------------------------------------------------- the cost-model encoder
class CostModelEncoder:
    """Deterministic vectors; each call sleeps fixed_s + per_text_s * len(texts) (--fake only)."""

    def __init__(self, fixed_s: float = 0.0, per_text_s: float = 0.0, dim: int = 64) -> None:
        from bellm_search.config import EncoderConfig

        self.config = EncoderConfig(model="bench-cost-model", adapter=None)
        self.dim, self.fixed_s, self.per_text_s = dim, fixed_s, per_text_s

    def encode(self, texts, **_) -> np.ndarray:
        time.sleep(self.fixed_s + self.per_text_s * len(texts))
        rows = []
        for text in texts:
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
            rows.append(v / np.linalg.norm(v))
        return np.stack(rows) if rows else np.zeros((0, self.dim), np.float32)


def serve_fake(path: str, options: str) -> None:
    """The server process of --fake: bellm_search.serve.app with the cost-model encoder."""
    import logging

    from bellm_search.serve.app import ServerSettings, run_server

    opts = json.loads(options)
    encoder = CostModelEncoder(opts.pop("fixed_s"), opts.pop("per_text_s"))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    run_server(Path(path), ServerSettings(**opts), encoder=encoder)


# ----------------------------------------------------------------------------- setup
def read_posts() -> list[dict]:
    return [json.loads(line) for line in POSTS.read_text(encoding="utf-8").splitlines() if line.strip()]


def build_collection(path: Path, posts: list[dict], fake: bool) -> float:
    from bellm_search.collection.core import Collection

    start = time.perf_counter()
    encoder = CostModelEncoder() if fake else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # model-loading chatter from transformers/peft
        with Collection.create(path, encoder=encoder) as coll:
            coll.ingest(posts)
    return time.perf_counter() - start


@contextmanager
def server(path: Path, batching: bool, fake: tuple[float, float] | None, log_path: Path,
           max_batch: int, max_wait_ms: float) -> Iterator[str]:
    """A loopback server process on a free port; yields its URL once /health answers; always stopped."""
    opts = {"port": 0, "timeout_s": 600.0, "max_queue": 100_000, "batching": batching,
            "max_batch": max_batch, "max_wait_ms": max_wait_ms}
    if fake:
        cmd = [sys.executable, __file__, "--serve-fake", str(path),
               json.dumps({**opts, "fixed_s": fake[0], "per_text_s": fake[1]})]
    else:
        cmd = [sys.executable, "-m", "bellm_search.cli.main", "serve", "--collection", str(path), "--port", "0",
               "--timeout", "600", "--max-queue", "100000", "--max-batch", str(max_batch),
               "--max-wait-ms", str(max_wait_ms)] + ([] if batching else ["--no-batching"])
    with server_process(cmd, log_path) as (url, _):
        yield url


@contextmanager
def server_process(cmd: list[str], log_path: Path) -> Iterator[tuple[str, int]]:
    """Start a server command logging to log_path; yield (URL, pid) once /health answers; always stopped."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        yield wait_ready(proc, log_path), proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_ready(proc: subprocess.Popen, log_path: Path, timeout: float = 600) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode}; log: {log_path}\n{log_path.read_text()[-3000:]}")
        found = re.search(r"serving .* on (http://127\.0\.0\.1:\d+)", log_path.read_text())
        if found:
            try:
                if httpx.get(found.group(1) + "/health", timeout=5).status_code == 200:
                    return found.group(1)
            except httpx.TransportError:
                pass
        time.sleep(0.2)
    sys.exit(f"server not ready within {timeout:.0f}s; log: {log_path}")


# ----------------------------------------------------------------------------- load
@dataclass
class Row:
    """One setting (clients, batching), pooled over rounds."""

    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    calls: int = 0
    texts: int = 0
    encode_s: float = 0.0  # server-side time inside the encoder
    wait_s: float = 0.0    # server-side time waiting for expected requests

    @property
    def busy(self) -> float:
        """Share of the wall time the encoder was computing."""
        return self.encode_s / max(self.seconds, 1e-9)

    @property
    def rps(self) -> float:
        return len(self.latencies) / max(self.seconds, 1e-9)

    def ms(self, q: float) -> float:
        return float(np.percentile(np.asarray(self.latencies) * 1000, q))


async def _load(url: str, queries: list[str], clients: int, requests: int, budget_s: float) -> tuple[list[float], float]:
    latencies: list[float] = []
    issued = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=900, limits=limits) as client:
        start = time.perf_counter()

        async def one_client() -> None:
            nonlocal issued
            while issued < requests and time.perf_counter() - start < budget_s:
                text = queries[issued % len(queries)]
                issued += 1
                t0 = time.perf_counter()
                res = await client.post("/query", json={"text": text, "k": 10})
                res.raise_for_status()
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(one_client() for _ in range(clients)))
        return latencies, time.perf_counter() - start


def encoder_calls(url: str) -> dict:
    return httpx.get(url + "/info", timeout=60).json()["server"]["encoder_calls"]


def measure(row: Row, url: str, queries: list[str], clients: int, requests: int, budget_s: float) -> None:
    before = encoder_calls(url)
    latencies, seconds = asyncio.run(_load(url, queries, clients, requests, budget_s))
    after = encoder_calls(url)
    row.latencies += latencies
    row.seconds += seconds
    row.calls += after["calls"] - before["calls"]
    row.texts += after["texts"] - before["texts"]
    row.encode_s += after["encode_s"] - before["encode_s"]
    row.wait_s += after["wait_s"] - before["wait_s"]


@dataclass
class Ceiling:
    """The encoder's own batching gain: 16 texts as 16 one-text calls vs as one 16-text call, in
    encoder time (the server's ``encode_s`` counter, no HTTP in it). The one-text calls come from 16
    concurrent requests to the unbatched server, so they run back to back as they do under load;
    the same 16 calls made one request at a time (one client, idle gaps between calls) are
    reported too, with the client's wall times (HTTP included)."""

    encoder_one: float = 0.0       # 16 one-text calls, back to back
    encoder_together: float = 0.0  # one 16-text call
    encoder_one_idle: float = 0.0  # 16 one-text calls, one request at a time
    http_one: float = 0.0
    http_together: float = 0.0

    @property
    def ratio(self) -> float:
        return self.encoder_one / max(self.encoder_together, 1e-9)


async def _embed_each(url: str, texts: list[str]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=900, limits=httpx.Limits(max_connections=len(texts))) as client:
        for res in await asyncio.gather(*(client.post("/embed", json={"text": t}) for t in texts)):
            res.raise_for_status()


def encoder_ceiling(ceiling: Ceiling, url: str, texts: list[str]) -> None:
    """On the unbatched server: ``texts`` one request each, at once and then one at a time, and
    all of them in one request."""
    spent = lambda: encoder_calls(url)["encode_s"]  # noqa: E731
    with httpx.Client(base_url=url, timeout=900) as client:
        e0 = spent()
        asyncio.run(_embed_each(url, texts))
        e1 = spent()
        client.post("/embed", json={"texts": texts}).raise_for_status()
        e2, t2 = spent(), time.perf_counter()
        for text in texts:
            client.post("/embed", json={"text": text}).raise_for_status()
        e3, t3 = spent(), time.perf_counter()
        client.post("/embed", json={"texts": texts}).raise_for_status()
        e4, t4 = spent(), time.perf_counter()
    ceiling.encoder_one += e1 - e0
    ceiling.encoder_together += ((e2 - e1) + (e4 - e3)) / 2
    ceiling.encoder_one_idle += e3 - e2
    ceiling.http_one += t3 - t2
    ceiling.http_together += t4 - t3


def warm_up(url: str, queries: list[str]) -> None:
    for text in queries[:2]:
        httpx.post(url + "/query", json={"text": text, "k": 10}, timeout=600).raise_for_status()


# ----------------------------------------------------------------------------- report
def describe_encoder(url: str, args: argparse.Namespace) -> str:
    if args.fake:
        return f"COST MODEL encoder (not a measurement): sleep({args.fixed_ms:g} ms + {args.per_text_ms:g} ms x texts) per call"
    enc = httpx.get(url + "/info", timeout=60).json()["encoder"]
    return (f"REAL default encoder: model={enc['model']} adapter={enc.get('adapter')} pooling={enc['pooling']} "
            f"bidirectional_layers={enc['bidirectional_layers']} (device auto)")


def report(rows: dict[tuple[int, bool], Row], clients: list[int]) -> float:
    head = (f"{'clients':>7} | {'off: req/s':>10} {'p50 ms':>7} {'p99 ms':>7} {'n':>4} | "
            f"{'on: req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'n':>4} {'texts/call':>10} {'busy':>5} | {'speed-up':>8}")
    print(head)
    print("-" * len(head))
    for c in clients:
        off, on = rows[(c, False)], rows[(c, True)]
        print(f"{c:>7} | {off.rps:>10.2f} {off.ms(50):>7.0f} {off.ms(99):>7.0f} {len(off.latencies):>4} | "
              f"{on.rps:>9.2f} {on.ms(50):>7.0f} {on.ms(99):>7.0f} {len(on.latencies):>4} "
              f"{on.texts / max(on.calls, 1):>10.1f} {on.busy:>5.0%} | {on.rps / off.rps:>7.2f}x")
    top = max(clients)
    return rows[(top, True)].rps / rows[(top, False)].rps


def conclude(rows: dict[tuple[int, bool], Row], clients: list[int], ceiling: Ceiling, ratio: float) -> None:
    top = max(clients)
    on, off = rows[(top, True)], rows[(top, False)]
    print(f"# encoder ceiling, the server's own encoder time: 16 texts as 16 one-text calls back to back "
          f"{ceiling.encoder_one:.2f}s, as one 16-text call {ceiling.encoder_together:.2f}s -> {ceiling.ratio:.2f}x")
    print(f"#   the same 16 one-text calls one request at a time: {ceiling.encoder_one_idle:.2f}s of encoder time "
          f"({ceiling.encoder_one_idle / max(ceiling.encoder_together, 1e-9):.2f}x); over HTTP, 1 client: "
          f"{ceiling.http_one:.2f}s vs {ceiling.http_together:.2f}s ({ceiling.http_one / max(ceiling.http_together, 1e-9):.2f}x)")
    print(f"# at {top} clients: encoder busy {off.busy:.0%} of the time unbatched, {on.busy:.0%} batched; "
          f"{on.texts / max(on.calls, 1):.1f} texts per call; waiting for expected requests {on.wait_s:.2f}s of {on.seconds:.1f}s")
    share = ratio / ceiling.ratio
    verdict = "MET" if share >= 0.85 else "NOT met"
    print(f"# batching at {top} clients: {ratio:.2f}x the unbatched throughput = {share:.0%} of the encoder's own "
          f"{ceiling.ratio:.2f}x measured in this run (target >= 85%: {verdict})")
    print(f"# load average at the end {os.getloadavg()[0]:.1f}")


def run_rounds(urls: dict[bool, str], queries: list[str], clients: list[int], args: argparse.Namespace,
               requests: int) -> tuple[dict[tuple[int, bool], Row], Ceiling]:
    """Every round: each client count against both servers (off first in odd rounds, on first in
    even ones), then the encoder ceiling on the unbatched server."""
    rows = {(c, b): Row() for c in clients for b in (False, True)}
    per_round = max(1, requests // args.rounds)
    ceiling = Ceiling()
    for r in range(args.rounds):
        for c in clients:
            for batching in ((False, True) if r % 2 == 0 else (True, False)):
                measure(rows[(c, batching)], urls[batching], queries, c, per_round, args.budget_s / args.rounds)
                row = rows[(c, batching)]
                print(f"#   round {r + 1}: {c:>2} clients, batching {'on ' if batching else 'off'}: "
                      f"{len(row.latencies)} requests so far, {row.rps:.2f} req/s", file=sys.stderr, flush=True)
        encoder_ceiling(ceiling, urls[False], queries[(r * 16) % len(queries):][:16])
    return rows, ceiling


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=192, help="requests per row, all rounds together (at most 1000)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds (background load hits both modes alike)")
    ap.add_argument("--budget-s", type=float, default=120.0, help="a row stops issuing requests after this (all rounds)")
    ap.add_argument("--clients", default="1,4,16", help="concurrent clients, comma-separated")
    ap.add_argument("--docs", type=int, default=100, help="posts in the collection (the rest are queries)")
    ap.add_argument("--max-batch", type=int, default=64, help="the batched server's --max-batch")
    ap.add_argument("--max-wait-ms", type=float, default=None, help="the batched server's --max-wait-ms (default: its default)")
    ap.add_argument("--fake", action="store_true", help="cost-model encoder instead of the real one (labelled)")
    ap.add_argument("--fixed-ms", type=float, default=40.0, help="--fake: cost per encoder call")
    ap.add_argument("--per-text-ms", type=float, default=4.0, help="--fake: cost per text")
    ap.add_argument("--serve-fake", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_fake:
        return serve_fake(*args.serve_fake)
    clients = [int(c) for c in args.clients.split(",")]
    requests = max(1, min(args.requests, MAX_REQUESTS))
    posts = read_posts()
    queries = [p["text"] for p in posts[args.docs:]] or [p["text"] for p in posts]
    fake = (args.fixed_ms / 1000, args.per_text_ms / 1000) if args.fake else None
    work = Path(tempfile.mkdtemp(prefix="bellm-bench-serve-"))
    try:
        build_s = build_collection(work / "base", posts[:args.docs], args.fake)
        for name in ("off", "on"):
            shutil.copytree(work / "base", work / name)
        wait = ServerSettings().max_wait_ms if args.max_wait_ms is None else args.max_wait_ms
        with server(work / "off", False, fake, work / "off.log", args.max_batch, wait) as off_url, \
                server(work / "on", True, fake, work / "on.log", args.max_batch, wait) as on_url:
            warm_up(off_url, queries)
            warm_up(on_url, queries)
            print(f"# {describe_encoder(on_url, args)}", flush=True)
            print(f"# batched server: --max-batch {args.max_batch} --max-wait-ms {wait:g}; "
                  f"collection: {args.docs} posts (built in {build_s:.1f}s); POST /query k=10; "
                  f"{requests} requests per row in {args.rounds} interleaved rounds (or {args.budget_s:g}s); "
                  f"loopback; cpus={os.cpu_count()}, load average {os.getloadavg()[0]:.1f}", flush=True)
            rows, ceiling = run_rounds({False: off_url, True: on_url}, queries, clients, args, requests)
        conclude(rows, clients, ceiling, report(rows, clients))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
