"""What storing shingle hashes at ingest costs (issue 16 item 3): the same synthetic tweet-like posts
ingested twice into fresh collections with the fake hash encoder (no model time, so the difference
is all of it), with and without the shingles; alternating runs; also the per-post cost of
``shingle_hashes`` alone.

    python scripts/bench_shingle_store.py [N]      (default 20000)
"""
from __future__ import annotations

import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fakes import FakeEncoder  # noqa: E402

from bellm_search.collection import ingest as ingesting  # noqa: E402
from bellm_search.collection.core import Collection  # noqa: E402
from bellm_search.pairs.shingles import shingle_hashes  # noqa: E402


def posts(n: int) -> list[dict]:
    rng = random.Random(0)
    words = [f"w{i}" for i in range(3000)]
    return [{"id": f"p{i}", "text": f"RT @user_{rng.randrange(500)}: "
             + " ".join(rng.choice(words) for _ in range(rng.randrange(8, 25))) + f" http://t.co/x{i}"}
            for i in range(n)]


def main(n: int) -> None:
    rows, stored = posts(n), ingesting.record_hash_bytes
    t0 = time.perf_counter()
    for r in rows:
        shingle_hashes(r["text"])
    print(f"shingle_hashes: {(time.perf_counter() - t0) / n * 1e6:.1f} us/post")
    for mode in ("without", "with", "without", "with"):
        ingesting.record_hash_bytes = stored if mode == "with" else (lambda doc: {})  # without: nothing stored
        with tempfile.TemporaryDirectory() as tmp:
            coll = Collection.create(Path(tmp) / "C", encoder=FakeEncoder(dim=576))
            t0 = time.perf_counter()
            with coll:
                coll.ingest(rows)
            dt = time.perf_counter() - t0
            size = (Path(tmp) / "C" / "meta.lmdb" / "data.mdb").stat().st_size
        print(f"{mode:>7} 5-gram + word hashes: {dt:.2f} s for {n} posts ({n / dt:.0f}/s), data.mdb {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20000)
