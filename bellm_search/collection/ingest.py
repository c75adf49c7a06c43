"""Adding and removing documents: one LMDB transaction per chunk, then the index.

A chunk's records and vectors commit together, so a crash at any point loses nothing and
duplicates nothing; re-running an ingest skips the source ids already stored. Exact duplicates
(same normalised text) are linked to their first copy and never encoded; near duplicates are
linked likewise when asked: by a cosine threshold, or by the collection's calibrated pair model
(a ``NearModel``, built by the caller from ``dedup.calibration``, which sits above this package).
A near link keeps the cosine (``dedup`` re-scores near links from it with the decision it applies);
the record's ``dup_score`` is the score that decided at ingest: the cosine, or the pair model's
probability (then ``dup_cosine`` holds the cosine). The index only ever holds committed vectors,
read back from the store (fp16), so it equals an index rebuilt from the store. Functions take the
open ``Collection`` (``coll``).
"""
from __future__ import annotations

import logging
import time
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from bellm_search.collection.copies import promote_first_copies
from bellm_search.collection.lock import writer_lock
from bellm_search.corpus import Record, document_problem
from bellm_search.errors import CollectionError, ConfigError, CorpusError
from bellm_search.pairs.features import record_hash_bytes
from bellm_search.pairs.normalize import text_hash

log = logging.getLogger(__name__)
NAMED = 10  # repeated ids named one by one; the rest only counted
NEAR_CANDIDATES = 5  # neighbours (stored, and earlier in the chunk) the pair model compares a new document with
NEAR_LINK_MAX = 0.999999  # a near link's score stays < 1 (1 = an exact copy), in float32 and at 6 decimals


class NearModel(Protocol):
    """What ingest needs of a pair-model decision (``dedup.calibration.Decision`` is one)."""

    threshold: float  # a probability

    @property
    def candidate_cosine(self) -> float: ...

    def text_probabilities(self, cosines: np.ndarray, texts_a: Sequence[str | None],
                           texts_b: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class IngestStats:
    added: int = 0
    skipped_known: int = 0
    deleted_earlier: int = 0  # ids deleted before: they stay deleted
    repeated_ids: int = 0  # ids repeated in this run with another text: the first kept
    exact_duplicates: int = 0
    near_duplicates: int = 0
    invalid: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def to_record(item: Record | dict[str, Any], line: int) -> Record:
    """API callers pass dicts {"id", "text", ...}; the corpus reader passes Records. Either must
    be a valid document (``corpus.document_problem``: the one rule of the CLI and the server)."""
    if isinstance(item, Record):
        rec = item
    else:
        data = dict(item)
        if not isinstance(data.get("text"), str):
            raise CollectionError(f"record {line}: 'text' must be a string")
        rec = Record(str(data.pop("id", line)), data.pop("text"), data, "<api>", line)
    problem = document_problem(rec.id, rec.text)
    if problem:
        raise CorpusError(rec.path, rec.line, problem)
    return rec


def chunks(records: Iterable[Record | dict[str, Any]], size: int) -> Iterator[list[Record]]:
    """Lists of ``size`` records. On an invalid record the records before it come first (they are
    stored), then the error."""
    chunk: list[Record] = []
    try:
        for n, item in enumerate(records, start=1):
            chunk.append(to_record(item, n))
            if len(chunk) >= size:
                yield chunk
                chunk = []
    except CorpusError:
        if chunk:
            yield chunk
        raise
    if chunk:
        yield chunk


class Origins:
    """Where each document this run adds came from, 4 bytes a document (int ids are consecutive
    from ``start``), so a repeated id can name the line it repeats; and the ids deleted before."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.start = store.next_id()
        self.lines = array("I")
        self.files: list[int] = []  # first int id of each file's run of documents
        self.paths: list[str] = []
        self.deleted = set(store.deleted_ids().tolist())

    def add(self, w: Any, rec: Record, doc: dict[str, Any], **kwargs: Any) -> int:
        int_id = w.add_doc(rec.id, doc, **record_hash_bytes(doc), **kwargs)
        if not self.paths or self.paths[-1] != rec.path:
            self.files.append(int_id)
            self.paths.append(rec.path)
        self.lines.append(rec.line)
        return int_id

    def where(self, int_id: int, path: str) -> str:
        """``line K`` (same file as ``path``) or ``FILE:K`` of a document added by this run."""
        other = self.paths[bisect_right(self.files, int_id) - 1]
        line = self.lines[int_id - self.start]
        return f"line {line}" if other == path else f"{other}:{line}"


def ingest(coll: Any, records: Iterable[Record | dict[str, Any]], *, chunk_size: int = 2048,
           near: float | None = None, progress: Callable[[int], Any] | None = None, wait: bool = True,
           vectors: np.ndarray | None = None, near_model: Callable[[Any], NearModel] | None = None) -> IngestStats:
    """See ``Collection.ingest``."""
    if near is not None and near_model is not None:
        raise ConfigError("near duplicates by a cosine threshold or by the calibrated pair model: give one, not both")
    stats, start = IngestStats(), time.perf_counter()
    rule: float | NearModel | None = near_model(coll) if near_model is not None else near  # fails before any write
    state = coll.index_state
    if isinstance(records, (list, tuple)):  # a request: all valid, or nothing stored
        records = [to_record(item, n) for n, item in enumerate(records, start=1)]
    with writer_lock(coll.path, wait):
        state.load()
        run, offset = Origins(coll.store), 0
        try:
            for chunk in chunks(records, chunk_size):
                given = None if vectors is None else vectors[offset:offset + len(chunk)]
                ingest_chunk(coll, chunk, stats, rule, given, run)
                offset += len(chunk)
                if progress:
                    progress(len(chunk))
                state.maybe_grow()  # during the ingest: a Flat never holds more than flat_max
        except CorpusError as err:
            state.save()
            raise CorpusError(err.path, err.line, f"{err.problem}; the {offset} records before this line are stored "
                              f"({stored(stats)} new): fix it (or skip invalid lines: --skip-invalid) and re-run the same "
                              "command, the records stored already are skipped") from None
        state.maybe_grow()  # (an ingest of nothing new still grows a collection that has outgrown Flat)
        state.save()
    stats.seconds = time.perf_counter() - start
    return stats


def stored(stats: IngestStats) -> int:
    return stats.added + stats.exact_duplicates + stats.near_duplicates


def ingest_chunk(coll: Any, chunk: list[Record], stats: IngestStats, near: float | NearModel | None,
                 given: np.ndarray | None = None, run: Origins | None = None) -> None:
    """One transaction: the chunk's new records, vectors and duplicate links; then the index.
    ``near``: a cosine threshold, or a ``NearModel``, for near duplicates (None: none)."""
    store = coll.store
    run = run or Origins(store)
    with store.writer() as w:
        fresh, followers = plan_chunk(w, chunk, stats, coll.social, run)
        vecs = vectors_for(coll, fresh, chunk, given)
        dup_of = find_near(coll, vecs, [rec.text for rec, _ in fresh], near)
        first_of_row: dict[int, int] = {}  # row -> int id its exact copies point to
        added_ids: list[int] = []
        for row, (rec, h) in enumerate(fresh):
            if row in dup_of:
                target, score, cos = dup_of[row]
                target = target if target >= 0 else first_of_row[-target - 1]
                doc = _doc(rec, dup_of=target, score=min(score, NEAR_LINK_MAX), cosine=None if score == cos else cos)
                run.add(w, rec, doc, text_hash=h, dup_of=(target, min(cos, NEAR_LINK_MAX)))
                first_of_row[row] = target
                stats.near_duplicates += 1
            else:
                first_of_row[row] = run.add(w, rec, _doc(rec), text_hash=h, vector=vecs[row])
                added_ids.append(first_of_row[row])
        for rec, row in followers:  # exact copies of a record first seen in this chunk
            run.add(w, rec, _doc(rec, dup_of=first_of_row[row], score=1.0), dup_of=(first_of_row[row], 1.0))
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


def plan_chunk(w: Any, chunk: list[Record], stats: IngestStats, social: bool,
               run: Origins) -> tuple[list, list]:
    """Record skips and exact duplicates of stored docs; return (to encode, in-chunk copies)."""
    fresh: list[tuple[Record, bytes]] = []
    followers: list[tuple[Record, int]] = []  # (record, row in fresh it copies)
    row_of_hash: dict[bytes, int] = {}
    seen: dict[str, Record] = {}
    for rec in chunk:
        if taken(w, rec, seen.get(rec.id), stats, run):
            continue
        seen[rec.id] = rec
        h = text_hash(rec.text, social=social)
        if h in row_of_hash:
            followers.append((rec, row_of_hash[h]))
            continue
        first = w.lookup_hash(h)
        if first is not None:
            run.add(w, rec, _doc(rec, dup_of=first, score=1.0), dup_of=(first, 1.0))
            stats.exact_duplicates += 1
            continue
        row_of_hash[h] = len(fresh)
        fresh.append((rec, h))
    return fresh, followers


def taken(w: Any, rec: Record, in_chunk: Record | None, stats: IngestStats, run: Origins) -> bool:
    """Whether the record's id is in the collection already; counted as known, deleted earlier, or
    (named) repeated in this run with another text."""
    if in_chunk is not None:
        first = in_chunk.text
        where = f"line {in_chunk.line}" if in_chunk.path == rec.path else f"{in_chunk.path}:{in_chunk.line}"
    else:
        int_id = w.lookup_key(rec.id)
        if int_id is None:
            return False
        if int_id in run.deleted:
            stats.deleted_earlier += 1
            return True
        if int_id < run.start:
            stats.skipped_known += 1
            return True
        first, where = (run.store.get_doc(int_id) or {}).get("text"), run.where(int_id, rec.path)
    if first == rec.text:
        stats.skipped_known += 1
        return True
    stats.repeated_ids += 1
    if stats.repeated_ids <= NAMED:
        log.warning("%s:%d repeats id %r of %s with a different text: kept the first%s", rec.path, rec.line,
                    rec.id, where, "" if stats.repeated_ids < NAMED else " (further repeats only counted)")
    return True


def find_near(coll: Any, vecs: np.ndarray, texts: list[str],
              near: float | NearModel | None) -> dict[int, tuple[int, float, float]]:
    """Rows of ``vecs`` that duplicate a stored doc (id >= 0) or an earlier row (-(row+1)), each
    with (target, the score that decided, cosine): the cosine twice, or the probability and the cosine."""
    if near is None or not len(vecs):
        return {}
    if isinstance(near, (int, float)):
        return {row: (t, c, c) for row, (t, c) in near_duplicates(coll, vecs, float(near)).items()}
    return model_near_duplicates(coll, vecs, texts, near)


def near_duplicates(coll: Any, vecs: np.ndarray, threshold: float) -> dict[int, tuple[int, float]]:
    """Rows of ``vecs`` that duplicate a stored doc (id >= 0) or an earlier row (-(row+1)), by cosine."""
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


def model_near_duplicates(coll: Any, vecs: np.ndarray, texts: list[str],
                          model: NearModel) -> dict[int, tuple[int, float, float]]:
    """Rows judged duplicates by the pair model: a row's candidates are its ``NEAR_CANDIDATES``
    nearest stored documents and earlier rows at cosine >= ``model.candidate_cosine``; it duplicates
    the most probable candidate at or above ``model.threshold`` (an earlier row only if that row is
    added, not itself a duplicate). Values: (target, probability, cosine)."""
    rows, targets, cos = near_candidates(coll, vecs, model.candidate_cosine)
    if not len(rows):
        return {}
    stored = np.unique(targets[targets >= 0])
    text_of = dict(zip(stored.tolist(), ((d or {}).get("text") for d in coll.store.get_docs(stored.tolist()))))
    other = [text_of[int(t)] if t >= 0 else texts[-int(t) - 1] for t in targets]
    _, prob = model.text_probabilities(cos, [texts[int(r)] for r in rows], other)
    out: dict[int, tuple[int, float, float]] = {}
    for n in np.lexsort((-prob, rows)):  # by row, the most probable candidate first
        row, target = int(rows[n]), int(targets[n])
        if row in out or prob[n] < model.threshold or (target < 0 and -target - 1 in out):
            continue
        out[row] = (target, float(prob[n]), float(cos[n]))
    return out


def near_candidates(coll: Any, vecs: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, target, cosine) of each row's ``NEAR_CANDIDATES`` nearest stored documents (target =
    int id) and nearest earlier rows (target = -(row+1)) at cosine >= ``floor``."""
    rows, targets, cos = [], [], []
    if coll.index_state.index.ntotal:
        D, I = coll.search_vectors(vecs, NEAR_CANDIDATES)
        hit = (I >= 0) & (D >= floor)
        rows.append(np.nonzero(hit)[0])
        targets.append(I[hit].astype(np.int64))
        cos.append(D[hit].astype(np.float64))
    sims = vecs @ vecs.T
    r, c = np.nonzero(np.tril(sims >= floor, k=-1))  # earlier rows only
    s = sims[r, c].astype(np.float64)
    order = np.lexsort((-s, r))  # by row, nearest first: keep the first NEAR_CANDIDATES of each row
    r, c, s = r[order], c[order], s[order]
    rank = np.arange(len(r)) - np.searchsorted(r, r)
    keep = rank < NEAR_CANDIDATES
    rows.append(r[keep])
    targets.append(-(c[keep].astype(np.int64) + 1))
    cos.append(s[keep])
    return np.concatenate(rows), np.concatenate(targets), np.concatenate(cos)


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
            promoted = promote_first_copies(w, coll.store, targets) if targets else []
        if targets:
            index.remove(np.asarray(targets, dtype=np.int64))
        if promoted:
            new_ids = np.asarray([new for _, new in promoted], dtype=np.int64)
            index.add(coll.store.get_vectors(new_ids), new_ids)
        if targets or state.behind():  # a re-run also saves what a killed delete did not
            state.save()
    return len(targets), unknown


def _doc(rec: Record, dup_of: int | None = None, score: float | None = None,
         cosine: float | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"text": rec.text, "meta": rec.meta}
    if dup_of is not None:
        doc["dup_of"] = int(dup_of)
        doc["dup_score"] = round(float(score), 6) if score is not None else None
        if cosine is not None:
            doc["dup_cosine"] = round(float(cosine), 6)
    return doc
