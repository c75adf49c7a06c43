"""Peak memory of ingest on a large corpus: is it bounded by the chunk, not by the corpus?

    python scripts/ingest_memory.py [--sizes 10000,50000,0] [--chunk 2048]

Each size runs in a fresh process: it streams the first N TweetEval tweets as records into a new
collection through `Collection.ingest` (the code path of `bellm-search ingest`) with the cached
proxy vectors given per chunk (`.cache/tweets_proxy_vecs.npy`, memory-mapped: only the chunk being
ingested is read), so everything but the encoder is measured: reading, hashing, LMDB commits of
records + fp16 vectors, the index (Flat, then IVF-PQ trained past 100k vectors), the index save.
The encoder's own memory is separate and does not grow with the corpus (one token-budget batch;
its peak RSS is in `bench_encode.py`). Reported: peak RSS of the process (ru_maxrss) before and
after the ingest, wall time, and the collection's size on disk.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
VECTORS = ROOT / ".cache" / "tweets_proxy_vecs.npy"


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(n: int, chunk: int, queue: mp.Queue) -> None:
    import numpy as np
    from embed_tweets import tweets

    from bellm_search.collection.core import Collection
    from bellm_search.encoder.resolve import resolve_config

    vecs = np.load(VECTORS, mmap_mode="r")
    texts = tweets()[:n or len(vecs)]
    n = len(texts)
    before = rss_mb()
    tmp = Path(tempfile.mkdtemp(prefix="ingest-mem-"))
    try:
        coll = Collection.create(tmp / "c", resolve_config(), vecs.shape[1], normalize_social=True)
        records = ({"id": str(i), "text": t} for i, t in enumerate(texts))
        t0 = time.perf_counter()
        coll.ingest(records, chunk_size=chunk, vectors=vecs[:n])  # memory-mapped: one chunk is read at a time
        seconds = time.perf_counter() - t0
        info = coll.info()
        coll.close()
        disk = int(subprocess.run(["du", "-sb", str(tmp / "c")], capture_output=True, text=True).stdout.split()[0])
        queue.put({"n": n, "seconds": round(seconds, 1), "rss_before_mb": round(before), "peak_rss_mb": round(rss_mb()),
                   "index": info.get("index", {}).get("factory"), "disk_mb": round(disk / 2**20)})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,50000,0", help="0 = all 155k tweets")
    ap.add_argument("--chunk", type=int, default=2048)
    args = ap.parse_args()
    if not VECTORS.is_file():
        sys.exit(f"{VECTORS} missing: run python scripts/embed_tweets.py proxy")
    print(f"{'docs':>8} {'index':<20} {'ingest s':>9} {'RSS before':>11} {'peak RSS':>9} {'on disk':>8}")
    for size in (int(s) for s in args.sizes.split(",")):
        queue: mp.Queue = mp.get_context("spawn").Queue()
        proc = mp.get_context("spawn").Process(target=one, args=(size, args.chunk, queue))
        proc.start()
        r = queue.get()
        proc.join()
        print(f"{r['n']:>8} {str(r['index']):<20} {r['seconds']:>9.1f} {r['rss_before_mb']:>8} MB {r['peak_rss_mb']:>6} MB "
              f"{r['disk_mb']:>5} MB", flush=True)
        print(json.dumps(r), file=sys.stderr)


if __name__ == "__main__":
    main()
