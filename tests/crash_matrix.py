"""Worker for the crash matrix (tests/test_crash_matrix.py): run one write command, killable.

    python tests/crash_matrix.py SPEC_JSON

SPEC is a JSON object: {"op": "ingest" | "reindex" | "delete" | "dedup", "path": collection, ...op
arguments (see ``run_op``), "delay": seconds per encode call, "sleep": {point: seconds},
"kill": [point, n] (SIGKILL itself at the n-th time ``point`` is reached), "line_sleep": seconds
per dedup output line}. Each op is called exactly as the CLI command calls it (cli.py), with a
fake encoder (tests/fakes.py) so no torch is imported and the process starts in ~0.3 s.

The worker prints ``ready`` once imported and ``@point`` at each durable step (LMDB commit,
index temp file written / renamed, manifest written, dedup output written) so the parent knows
where a kill landed; the optional sleeps widen the windows between those steps so that random
kill times land in every one of them.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402

from fakes import FakeEncoder, base_vector, near  # noqa: E402

from bellm_search.collection.core import MANIFEST, Collection  # noqa: E402

NEAR_COS = 0.985  # planted near duplicates: cosine to the post they vary


def planted_table(texts) -> dict[str, np.ndarray]:
    """Vectors of planted near duplicates: the text "variant {j} of post {i}" lies at cosine
    NEAR_COS from "post {i}"; every other text gets its hashed vector (FakeEncoder's default)."""
    table = {}
    for text in texts:
        if text.startswith("variant "):
            base = text.split(" of ", 1)[1]
            table[text] = near(base_vector(base), NEAR_COS, text)
    return table


def read_records(corpus: str) -> list[Any]:
    from bellm_search.corpus import CorpusOptions, ReadStats, read_corpus

    return list(read_corpus(corpus, CorpusOptions(), ReadStats()))


def encoder_for(corpus: str | None, delay: float = 0.0) -> FakeEncoder:
    texts = [r.text for r in read_records(corpus)] if corpus else []
    return FakeEncoder(planted_table(texts), delay=delay)


def run_op(spec: dict[str, Any], encoder: FakeEncoder | None = None) -> Any:
    """One command, the way cli.py runs it (ingest / reindex / delete / dedup --output)."""
    op, path = spec["op"], Path(spec["path"])
    if op == "ingest":  # cli.ingest: open or create, read the corpus lazily, ingest in chunks
        from bellm_search.corpus import CorpusOptions, ReadStats, read_corpus
        from bellm_search.config import IndexConfig

        enc = encoder or encoder_for(spec["corpus"])
        if (path / MANIFEST).is_file():
            coll = Collection.open(path, encoder=enc)
        else:  # cli passes no index config; the fresh-collection case uses the harness's small one
            coll = Collection.create(path, encoder=enc, index_config=IndexConfig(**spec.get("index_config", {})))
        records = read_corpus(spec["corpus"], CorpusOptions(), ReadStats())
        with coll:
            return coll.ingest(records, chunk_size=spec["chunk"], skip_near_duplicates=spec.get("near"))
    if op == "reindex":  # cli.reindex
        with Collection.open(path) as coll:
            return coll.reindex(factory=spec.get("factory"), nlist=spec.get("nlist"), m=spec.get("m"), opq=None)
    if op == "delete":  # cli.delete
        with Collection.open(path) as coll:
            return coll.delete(spec["ids"])
    if op == "dedup":  # cli.dedup without CORPUS: open_collection(target) then run_dedup
        from bellm_search.dedup.job import run_dedup

        with Collection.open(path) as coll:
            return run_dedup(coll, spec["threshold"], spec.get("k", 10), spec.get("keep", "first"), None,
                             Path(spec["output"]), spec.get("emit", "clusters"))
    raise ValueError(f"unknown op {op!r}")


# ----------------------------------------------------------------------------- instrumentation
HITS: Counter = Counter()


def install_points(spec: dict[str, Any]) -> None:
    """Wrap the durable steps so each reports itself, may sleep, and may be the kill point."""
    import faiss

    from bellm_search import store
    from bellm_search.collection import manifest as collection
    from bellm_search.dedup import job as dedup_job
    from bellm_search.index import faiss_index as index

    sleeps: dict[str, float] = spec.get("sleep", {})
    kill = spec.get("kill")

    def point(name: str) -> None:
        HITS[name] += 1
        print("@" + name, flush=True)
        if kill and kill[0] == name and HITS[name] == kill[1]:
            os.kill(os.getpid(), signal.SIGKILL)
        if sleeps.get(name):
            time.sleep(sleeps[name])

    def around(owner: Any, attr: str, before: str | None, after: str | None) -> None:
        orig = getattr(owner, attr)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if before:
                point(before)
            out = orig(*args, **kwargs)
            if after:
                point(after)
            return out

        setattr(owner, attr, wrapped)

    around(store.Writer, "_commit", "commit:before", "commit:after")
    around(faiss, "write_index", None, "index:tmp-written")        # temp file written, not yet renamed
    around(index.VectorIndex, "save", None, "index:saved")          # renamed; manifest not yet written
    around(index.VectorIndex, "train", None, "index:trained")
    around(collection, "write_json_atomic", "manifest:before", "manifest:after")
    around(dedup_job, "write_output", "output:before", "output:after")

    lines, line_sleep = dedup_job._lines, float(spec.get("line_sleep", 0.0))

    def slow_lines(*args: Any, **kwargs: Any):
        for n, line in enumerate(lines(*args, **kwargs)):
            if n == 1:
                point("output:partial")  # the temp file holds one line (not yet flushed)
            if line_sleep:
                time.sleep(line_sleep)
            yield line

    dedup_job._lines = slow_lines


def main(spec: dict[str, Any]) -> None:
    install_points(spec)
    encoder = encoder_for(spec["corpus"], spec.get("delay", 0.0)) if spec["op"] == "ingest" else None
    print("ready", flush=True)
    run_op(spec, encoder)
    print("done", flush=True)
    os._exit(0)  # everything is durable already; skip the interpreter's teardown


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
