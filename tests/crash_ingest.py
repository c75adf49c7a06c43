"""Subprocess for crash and concurrency tests: ingest N synthetic docs slowly with a fake encoder."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from fakes import FakeEncoder  # noqa: E402

from bellm_search.collection.core import MANIFEST, Collection  # noqa: E402


def main(path: str, n: int, chunk: int, delay: float) -> None:
    enc = FakeEncoder(delay=delay)
    target = Path(path)
    coll = Collection.open(target, encoder=enc) if (target / MANIFEST).is_file() else Collection.create(target, encoder=enc)
    records = ({"id": f"doc-{i}", "text": f"synthetic post number {i}", "n": i} for i in range(n))
    with coll:
        coll.ingest(records, chunk_size=chunk)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
