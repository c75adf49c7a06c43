"""Load test of the HTTP server: many requests, many clients, zero errors, stable memory.

    python scripts/load_serve.py [--requests 20000] [--clients 32] [--docs 285] [--real]

Builds a small collection from bellm_search/data/sample_posts.jsonl, starts the server in its own
process on a free loopback port, then sends --requests requests from --clients concurrent
clients (asyncio + httpx, each sends its next request when the previous answer arrives), a mix of
POST /query (50 %), POST /near-duplicates (20 %), POST /embed (20 %, 1-4 texts) and GET /health
(10 %). Reported: requests/s, p50/p99 latency (overall and per endpoint), the error count (any
non-200 answer or transport error; must be 0) and the server process's RSS sampled before the
load, at 25/50/75 % and at the end. Memory counts as stable when the last quarter grew the RSS by
at most --max-growth-mb. The last stdout line is a JSON object of the figures; the exit code is 1
when there were errors or the memory was not stable.

By default the encoder is a FAKE (hash-seeded vectors, no model, optional --encoder-ms sleep per
call): the server process is the real one (``bellm_search.serve.app.run_server``, what ``bellm-search
serve`` runs: uvicorn, middlewares, micro-batcher, collection under the read/write lock), so the
figures measure the server, not the model. --real serves with ``bellm-search serve`` and the
embedded model instead (then the encoder dominates; use fewer requests).
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import random
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from bench_serve import server_process  # one way to start and stop a server process

POSTS = ROOT / "bellm_search" / "data" / "sample_posts.jsonl"
MIX = (("query", 0.5), ("near-duplicates", 0.2), ("embed", 0.2), ("health", 0.1))
CHECKPOINTS = (0.25, 0.5, 0.75)


# ----------------------------------------------------------------------------- the fake encoder
class HashEncoder:
    """Deterministic unit vectors from a hash of each text; optional sleep per call (not a model)."""

    def __init__(self, dim: int = 64, call_s: float = 0.0) -> None:
        from bellm_search.config import EncoderConfig

        self.config = EncoderConfig(model="load-test-hash-encoder", adapter=None)
        self.dim, self.call_s, self.truncated = dim, call_s, 0

    def encode(self, texts, **_) -> np.ndarray:
        if self.call_s:
            time.sleep(self.call_s)
        rows = []
        for text in texts:
            seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
            rows.append(v / np.linalg.norm(v))
        return np.stack(rows) if rows else np.zeros((0, self.dim), np.float32)


def serve_fake(path: str, options: str) -> None:
    """The server process with the fake encoder (started by this script with --serve-fake)."""
    from bellm_search.serve.app import ServerSettings, run_server

    opts = json.loads(options)
    encoder = HashEncoder(call_s=opts.pop("encoder_ms") / 1000)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    run_server(Path(path), ServerSettings(**opts), encoder=encoder)


# ----------------------------------------------------------------------------- set-up
def read_posts() -> list[dict]:
    return [json.loads(line) for line in POSTS.read_text(encoding="utf-8").splitlines() if line.strip()]


def build_collection(path: Path, posts: list[dict], real: bool) -> None:
    from bellm_search.collection.core import Collection

    with Collection.create(path, encoder=None if real else HashEncoder()) as coll:
        coll.ingest(posts)


@contextmanager
def server(path: Path, args: argparse.Namespace, log_path: Path) -> Iterator[tuple[str, int]]:
    """The server process on a free loopback port; yields (URL, pid) once /health answers."""
    if args.real:
        exe = Path(sys.executable).with_name("bellm-search")
        cmd = ([str(exe), "serve"] if exe.is_file() else [sys.executable, "-m", "bellm_search.cli.main", "serve"])
        cmd += ["--collection", str(path), "--host", "127.0.0.1", "--port", "0", "--timeout", "600"]
    else:
        options = {"port": 0, "timeout_s": 600.0, "encoder_ms": args.encoder_ms}
        cmd = [sys.executable, __file__, "--serve-fake", str(path), json.dumps(options)]
    with server_process(cmd, log_path) as running:
        yield running


def rss_mb(pid: int) -> float:
    """Resident memory of a process (Linux /proc), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ----------------------------------------------------------------------------- the load
def plan(n: int, posts: list[dict], seed: int, calibrated: bool) -> list[tuple[str, str, dict | None]]:
    """n (method, path, body) in a fixed pseudo-random order following MIX. Near-duplicate lookups
    give a threshold unless the encoder has a calibration (the fake one has none)."""
    rng = random.Random(seed)
    texts = [p["text"] for p in posts]
    kinds, weights = zip(*MIX)
    out = []
    for kind in rng.choices(kinds, weights, k=n):
        if kind == "health":
            out.append(("GET", "/health", None))
        elif kind == "embed":
            out.append(("POST", "/embed", {"texts": rng.sample(texts, rng.randint(1, 4))}))
        elif kind == "near-duplicates":
            body = {"text": rng.choice(texts), "k": 5}
            out.append(("POST", "/near-duplicates", body if calibrated else {**body, "threshold": 0.9}))
        else:
            out.append(("POST", "/query", {"text": rng.choice(texts) + f" {rng.randint(0, 99)}", "k": 10}))
    return out


async def run_load(url: str, pid: int, requests: list, clients: int) -> dict:
    latencies: dict[str, list[float]] = defaultdict(list)
    errors: list[str] = []
    rss = {"start": rss_mb(pid)}
    marks = [(int(len(requests) * q), f"{int(q * 100)}%") for q in CHECKPOINTS]
    nxt, done = 0, 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        start = time.perf_counter()

        async def one_client() -> None:
            nonlocal nxt, done
            while nxt < len(requests):
                method, path, body = requests[nxt]
                nxt += 1
                t0 = time.perf_counter()
                try:
                    res = await client.request(method, path, json=body)
                    if res.status_code != 200:
                        errors.append(f"{method} {path}: {res.status_code} {res.text[:200]}")
                except httpx.HTTPError as exc:
                    errors.append(f"{method} {path}: {type(exc).__name__} {exc}")
                latencies[path.strip("/")].append(time.perf_counter() - t0)
                done += 1
                while marks and done >= marks[0][0]:
                    rss[marks.pop(0)[1]] = rss_mb(pid)

        await asyncio.gather(*(one_client() for _ in range(clients)))
        seconds = time.perf_counter() - start
    rss["end"] = rss_mb(pid)
    return {"latencies": latencies, "errors": errors, "rss": rss, "seconds": seconds}


def ms(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values) * 1000, q)), 2) if values else float("nan")


# ----------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=20_000, help="requests in all")
    ap.add_argument("--clients", type=int, default=32, help="concurrent clients")
    ap.add_argument("--docs", type=int, default=285, help="sample posts in the collection (at most 285)")
    ap.add_argument("--real", action="store_true", help="serve with `bellm-search serve` and the embedded model")
    ap.add_argument("--encoder-ms", type=float, default=0.0, help="fake encoder: sleep per encoder call")
    ap.add_argument("--max-growth-mb", type=float, default=10.0, help="largest RSS growth over the last quarter")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--serve-fake", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_fake:
        return serve_fake(*args.serve_fake)
    posts = read_posts()[:max(1, args.docs)]
    encoder = ("REAL embedded model (bellm-search serve): the encoder dominates these figures" if args.real else
               f"FAKE hash encoder ({args.encoder_ms:g} ms per call, no model): these figures measure the server, not the model")
    print(f"# encoder: {encoder}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bellm-load-serve-"))
    try:
        t0 = time.perf_counter()
        build_collection(work / "coll", posts, args.real)
        print(f"# collection: {len(posts)} posts in {time.perf_counter() - t0:.1f}s", flush=True)
        with server(work / "coll", args, work / "server.log") as (url, pid):
            asyncio.run(run_load(url, pid, plan(min(200, args.requests), posts, args.seed + 1, args.real), args.clients))  # warm-up
            print(f"# server pid {pid} at {url}; {args.requests} requests from {args.clients} clients", flush=True)
            result = asyncio.run(run_load(url, pid, plan(args.requests, posts, args.seed, args.real), args.clients))
            info = httpx.get(url + "/info", timeout=60).json()["server"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lat, rss = result["latencies"], result["rss"]
    everything = [x for values in lat.values() for x in values]
    growth = rss["end"] - rss["75%"]
    figures = {
        "encoder": "real" if args.real else "fake", "requests": len(everything), "clients": args.clients,
        "seconds": round(result["seconds"], 2), "requests_per_s": round(len(everything) / result["seconds"], 1),
        "p50_ms": ms(everything, 50), "p99_ms": ms(everything, 99),
        "per_endpoint": {k: {"n": len(v), "p50_ms": ms(v, 50), "p99_ms": ms(v, 99)} for k, v in sorted(lat.items())},
        "errors": len(result["errors"]), "internal_errors": info["internal_errors"],
        "encoder_calls": info["encoder_calls"],
        "rss_mb": {k: round(v, 1) for k, v in rss.items()},
        "rss_growth_last_quarter_mb": round(growth, 1), "memory_stable": growth <= args.max_growth_mb,
    }
    print(f"requests/s {figures['requests_per_s']}, p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms, "
          f"errors {figures['errors']} (server internal errors {figures['internal_errors']})")
    for name, row in figures["per_endpoint"].items():
        print(f"  {name:<16} n={row['n']:<6} p50 {row['p50_ms']:>7} ms  p99 {row['p99_ms']:>7} ms")
    print("server RSS MiB: " + ", ".join(f"{k} {v}" for k, v in figures["rss_mb"].items())
          + f"; last quarter {growth:+.1f} MiB ({'stable' if figures['memory_stable'] else 'NOT stable'})")
    for line in result["errors"][:5]:
        print(f"  error: {line}")
    print(json.dumps(figures))
    if figures["errors"] or figures["internal_errors"] or not figures["memory_stable"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
