"""Ray Data encoding (local Ray, CPU encoder actors) vs the single-process encoder, same tweets.

    python scripts/bench_ray.py [--n 2000] [--encoders 2] [--batch-size 256] [--ray-first]
                                [--local-threads T] [--json FILE]

Both paths use the default encoder (embedded model + shipped adapter, default settings) on the
same first N tweets of ../shared/data/tweeteval (written to one JSONL file with ids).
single process: build the Encoder (model load), then ``encode`` the texts (torch uses every core).
ray: start a local Ray (num_cpus = the machine's cores), then ``embed_with_ray`` end to end:
read the JSONL, start the actor pool (each actor loads the model; 1 torch thread per actor),
encode, write the shards. Overhead % compares end-to-end wall times. The vectors of the two
paths are compared row by row (max |difference|) as a sanity check. The machine's other load
changes over minutes: run once in each order (--ray-first) and report both. To isolate what
Ray itself costs, compare one actor with a single process held to one thread
(--encoders 1 --local-threads 1): the same compute, once through Ray and once directly.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_encode import load_tweets  # noqa: E402  (the same 2,000 tweets as the encoder benchmark)


def run_local(texts: list[str], threads: int | None) -> tuple[dict, np.ndarray]:
    import torch

    from bellm_search.encoder.encode import Encoder
    from bellm_search.encoder.resolve import resolve_config

    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    encoder = Encoder(resolve_config())
    loaded = time.perf_counter()
    vecs = encoder.encode(texts, show_progress_bar=False)
    done = time.perf_counter()
    return {"startup_s": loaded - start, "encode_s": done - loaded, "total_s": done - start}, vecs


def run_ray(corpus: Path, out: Path, encoders: int, batch_size: int) -> tuple[dict, np.ndarray]:
    import ray

    from bellm_search.distributed import shards
    from bellm_search.distributed.ray_embed import embed_with_ray

    start = time.perf_counter()
    ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, logging_level=logging.WARNING,
             object_store_memory=512 * 2**20)
    started = time.perf_counter()
    try:
        summary = embed_with_ray([str(corpus)], out, {}, num_encoders=encoders, batch_size=batch_size)
    finally:
        ray.shutdown()
    done = time.perf_counter()
    vecs = np.concatenate([np.load(emb) for emb, _ in shards.list_shards(out)])
    return {"startup_s": started - start, "encode_s": summary["seconds"], "total_s": done - start,
            "ray_init_s": started - start, "pipeline_s": summary["seconds"]}, vecs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="tweets to encode")
    ap.add_argument("--encoders", type=int, default=2, help="Ray encoder actors")
    ap.add_argument("--batch-size", type=int, default=256, help="texts per actor call")
    ap.add_argument("--ray-first", action="store_true", help="run the Ray path before the single process")
    ap.add_argument("--local-threads", type=int, help="torch threads of the single process (default: all cores)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    texts = load_tweets(args.n)
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    try:
        corpus = work / "tweets.jsonl"
        corpus.write_text("".join(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
        if args.ray_first:
            remote, v_ray = run_ray(corpus, work / "shards", args.encoders, args.batch_size)
        local, v_local = run_local(texts, args.local_threads)
        if not args.ray_first:
            remote, v_ray = run_ray(corpus, work / "shards", args.encoders, args.batch_size)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(args, len(texts), local, remote, float(np.abs(v_local - v_ray).max()))


def report(args: argparse.Namespace, n: int, local: dict, remote: dict, diff: float) -> None:
    order = "ray first" if args.ray_first else "single process first"
    threads = args.local_threads or "all"
    print(f"{n} tweets, {os.cpu_count()} CPU cores; Ray: {args.encoders} CPU actors (1 thread each), batch "
          f"{args.batch_size}; single process: {threads} threads; {order}")
    print(f"{'path':<26} {'wall s':>8} {'texts/s':>8} {'overhead':>9}")
    rows = [("single process (load+enc)", local["total_s"], False), ("  encode only", local["encode_s"], False),
            (f"ray {args.encoders} actors (init+run)", remote["total_s"], True),
            ("  embed_with_ray only", remote["pipeline_s"], True)]
    for name, seconds, vs_local in rows:  # overhead: against the single process, load + encode
        overhead = f"{100 * (seconds / local['total_s'] - 1):+8.0f}%" if vs_local else ""
        print(f"{name:<26} {seconds:8.1f} {n / seconds:8.1f} {overhead:>9}")
    print(f"ray init {remote['ray_init_s']:.1f}s, local model load {local['startup_s']:.1f}s; "
          f"max |ray - local| = {diff:.2e}")
    if args.json:
        args.json.write_text(json.dumps({"n": n, "cores": os.cpu_count(), "encoders": args.encoders,
                                         "batch_size": args.batch_size, "ray_first": args.ray_first,
                                         "local_threads": args.local_threads, "local": local, "ray": remote,
                                         "max_abs_diff": diff}, indent=2) + "\n")


if __name__ == "__main__":
    main()
