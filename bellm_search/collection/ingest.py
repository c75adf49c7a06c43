"""Adding and removing documents: one LMDB transaction per chunk, then the index.

A chunk's records and vectors commit together, so a crash at any point loses nothing and
duplicates nothing; re-running an ingest skips the source ids already stored. Exact duplicates
(same normalised text) are linked to their first copy and never encoded; near duplicates (cosine
>= a threshold) are linked likewise when asked. The index only ever holds committed vectors, read
back from the store (fp16), so it equals an index rebuilt from the store. Functions take the open
``Collection`` (``coll``).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bellm_search.collection.lock import writer_lock
from bellm_search.corpus import Record
from bellm_search.errors import CollectionError
from bellm_search.pairs.normalize import text_hash


@dataclass
class IngestStats:
    added: int = 0
    skipped_known: int = 0
    exact_duplicates: int = 0
    near_duplicates: int = 0
    invalid: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def to_record(item: Record | dict[str, Any], line: int) -> Record:
    """API callers pass dicts {"id", "text", ...}; the corpus reader passes Records."""
    if isinstance(item, Record):
        return item
    data = dict(item)
    if not isinstance(data.get("text"), str):
        raise CollectionError(f"record {line}: 'text' must be a string")
    source_id = str(data.pop("id", line))
    return Record(source_id, data.pop("text"), data, "<api>", line)


def chunks(records: Iterable[Record | dict[str, Any]], size: int) -> Iterator[list[Record]]:
    chunk: list[Record] = []
    for n, item in enumerate(records, start=1):
        chunk.append(to_record(item, n))
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def ingest(coll: Any, records: Iterable[Record | dict[str, Any]], *, chunk_size: int = 2048,
           near: float | None = None, progress: Callable[[int], Any] | None = None, wait: bool = True,
           vectors: np.ndarray | None = None) -> IngestStats:
    """See ``Collection.ingest``."""
    stats, start = IngestStats(), time.perf_counter()
    state = coll.index_state
    with writer_lock(coll.path, wait):
        state.load()
        offset = 0
        for chunk in chunks(records, chunk_size):
            given = None if vectors is None else vectors[offset:offset + len(chunk)]
            ingest_chunk(coll, chunk, stats, near, given)
            offset += len(chunk)
            if progress:
                progress(len(chunk))
            state.maybe_grow()  # during the ingest: a Flat never holds more than flat_max
        state.maybe_grow()  # (an ingest of nothing new still grows a collection that has outgrown Flat)
        state.save()
    stats.seconds = time.perf_counter() - start
    return stats


def ingest_chunk(coll: Any, chunk: list[Record], stats: IngestStats, near: float | None,
                 given: np.ndarray | None = None) -> None:
    """One transaction: the chunk's new records, vectors and duplicate links; then the index."""
    store = coll.store
    with store.writer() as w:
        fresh, followers = plan_chunk(w, chunk, stats, coll.social)
        vecs = vectors_for(coll, fresh, chunk, given)
        dup_of = near_duplicates(coll, vecs, near) if near is not None else {}
        first_of_row: dict[int, int] = {}  # row -> int id its exact copies point to
        added_ids: list[int] = []
        for row, (rec, h) in enumerate(fresh):
            if row in dup_of:
                target, score = dup_of[row]
                target = target if target >= 0 else first_of_row[-target - 1]
                w.add_doc(rec.id, _doc(rec, dup_of=target, score=score), text_hash=h, dup_of=(target, score))
                first_of_row[row] = target
                stats.near_duplicates += 1
            else:
                first_of_row[row] = w.add_doc(rec.id, _doc(rec), text_hash=h, vector=vecs[row])
                added_ids.append(first_of_row[row])
        for rec, row in followers:  # exact copies of a record first seen in this chunk
            w.add_doc(rec.id, _doc(rec, dup_of=first_of_row[row], score=1.0), dup_of=(first_of_row[row], 1.0))
            stats.exact_duplicates += 1
    stats.added += len(added_ids)
    if added_ids:  # after the commit, exactly the stored (fp16) vectors: as any rebuild would add them
        ids = np.asarray(added_ids, dtype=np.int64)
        coll.index_state.index.add(store.get_vectors(ids), ids)


def vectors_for(coll: Any, fresh: list[tuple[Record, bytes]], chunk: list[Record],
                given: np.ndarray | None) -> np.ndarray:
    """Unit vectors of the fresh records: encoded, or picked from ``given`` (aligned with chunk)."""
    if not fresh:
        return np.zeros((0, coll.dim), np.float32)
    if given is None:
        return coll.encoder.encode([r.text for r, _ in fresh])
    if given.shape != (len(chunk), coll.dim):
        raise CollectionError(f"vectors of shape {given.shape} do not match {len(chunk)} records x {coll.dim} dims")
    row_of = {id(rec): i for i, rec in enumerate(chunk)}
    vecs = np.asarray(given[[row_of[id(r)] for r, _ in fresh]], dtype=np.float32)
    return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)


def plan_chunk(w: Any, chunk: list[Record], stats: IngestStats, social: bool) -> tuple[list, list]:
    """Record skips and exact duplicates of stored docs; return (to encode, in-chunk copies)."""
    fresh: list[tuple[Record, bytes]] = []
    followers: list[tuple[Record, int]] = []  # (record, row in fresh it copies)
    row_of_hash: dict[bytes, int] = {}
    seen: set[str] = set()
    for rec in chunk:
        if rec.id in seen or w.lookup_key(rec.id) is not None:
            stats.skipped_known += 1
            continue
        seen.add(rec.id)
        h = text_hash(rec.text, social=social)
        if h in row_of_hash:
            followers.append((rec, row_of_hash[h]))
            continue
        first = w.lookup_hash(h)
        if first is not None:
            w.add_doc(rec.id, _doc(rec, dup_of=first, score=1.0), dup_of=(first, 1.0))
            stats.exact_duplicates += 1
            continue
        row_of_hash[h] = len(fresh)
        fresh.append((rec, h))
    return fresh, followers


def near_duplicates(coll: Any, vecs: np.ndarray, threshold: float) -> dict[int, tuple[int, float]]:
    """Rows of ``vecs`` that duplicate a stored doc (id >= 0) or an earlier row (-(row+1))."""
    out: dict[int, tuple[int, float]] = {}
    if len(vecs) and coll.index_state.index.ntotal:
        D, I = coll.search_vectors(vecs, 1)
        for row in np.nonzero(D[:, 0] >= threshold)[0]:
            out[int(row)] = (int(I[row, 0]), float(D[row, 0]))
    sims = vecs @ vecs.T
    kept: list[int] = []  # rows that will be added, in order
    for row in range(len(vecs)):
        if row in out:
            continue
        if kept:
            best = int(np.argmax(sims[row, kept]))
            if sims[row, kept[best]] >= threshold:
                out[row] = (-(kept[best] + 1), float(sims[row, kept[best]]))
                continue
        kept.append(row)
    return out


def delete(coll: Any, source_ids: Iterable[str], wait: bool = True) -> tuple[int, list[str]]:
    """See ``Collection.delete``."""
    unknown: list[str] = []
    state = coll.index_state
    with writer_lock(coll.path, wait):
        index = state.load()
        with coll.store.writer() as w:
            targets = []
            for sid in source_ids:
                int_id = w.lookup_key(str(sid))
                if int_id is None or not w.delete(int_id):
                    unknown.append(str(sid))
                    continue
                targets.append(int_id)
            # a deleted first copy hands its vector to its earliest exact copy (re-added under a
            # new int id, so a crash before the index save is caught up like any add)
            promoted = w.promote_duplicates(targets) if targets else []
        if targets:
            index.remove(np.asarray(targets, dtype=np.int64))
        if promoted:
            new_ids = np.asarray([new for _, new in promoted], dtype=np.int64)
            index.add(coll.store.get_vectors(new_ids), new_ids)
        if targets or state.behind():  # a re-run also saves what a killed delete did not
            state.save()
    return len(targets), unknown


def _doc(rec: Record, dup_of: int | None = None, score: float | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"text": rec.text, "meta": rec.meta}
    if dup_of is not None:
        doc["dup_of"] = int(dup_of)
        doc["dup_score"] = round(float(score), 6) if score is not None else None
    return doc
