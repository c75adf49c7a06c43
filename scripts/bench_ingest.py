"""Ingest overhead: docs/s of `Collection.ingest` vs pure `Encoder.encode` on the same tweets.

    python scripts/bench_ingest.py [--n 5000] [--rounds 1]

Both use one Encoder instance (loaded once, not timed). The tweets are distinct texts (copies
removed first) so ingest encodes every one of them like embed does; ingest adds hashing, LMDB
commits of records + fp16 vectors, index adds and the manifest/index save.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def main() -> None:
    from embed_tweets import tweets

    from bellm_search.collection.core import Collection
    from bellm_search.encoder.encode import Encoder

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    texts = list(dict.fromkeys(tweets()))[:args.n]
    encoder = Encoder()
    encoder.encode(texts[:32])
    t_embed, t_ingest = [], []
    for r in range(args.rounds):
        t = time.perf_counter()
        encoder.encode(texts)
        t_embed.append(time.perf_counter() - t)
        tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
        try:
            coll = Collection.create(tmp / "c", encoder=encoder)
            t = time.perf_counter()
            stats = coll.ingest({"id": str(i), "text": x} for i, x in enumerate(texts))
            t_ingest.append(time.perf_counter() - t)
            assert stats.added == len(texts), stats
            coll.close()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"round {r + 1}: embed {t_embed[-1]:.1f}s  ingest {t_ingest[-1]:.1f}s", flush=True)
    e, i = statistics.median(t_embed), statistics.median(t_ingest)
    print(f"\n{len(texts)} distinct tweets, encoder dtype {encoder.dtype}")
    print(f"embed : {len(texts) / e:7.1f} docs/s")
    print(f"ingest: {len(texts) / i:7.1f} docs/s")
    print(f"ingest overhead vs embed: {100 * (i - e) / e:+.1f}% (target <= 10%)")


if __name__ == "__main__":
    main()
