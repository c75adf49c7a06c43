"""Near-duplicate detection over a collection: k-NN candidate pairs, exact cosine, union-find.

Exact duplicates (same normalised text) and near duplicates rejected at ingest are already
linked to their first copy in the records (``dup_of``); they cost no search. Every live vector
is searched in batches against an index: the collection's own IVF index (memory bounded by
its codes + one batch), exact search while small, or a temporary IVF-Flat index for a mid-sized
Flat collection. Candidate scores are exact inner products of the stored vectors.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from bellm_search.dedup import all_cluster_scores, choose_keep, clusters_from_pairs, parse_keep

log = logging.getLogger(__name__)

Emit = Literal["clusters", "keep", "remove", "pairs"]
EXACT_SEARCH_MAX = 20_000  # below this many vectors a brute-force k-NN is fastest
MEMORY_BUDGET = 4 << 30    # float32 copy of all vectors allowed for an in-memory IVF-Flat
DEFAULT_THRESHOLD = 0.95   # replaced by the calibrated value, see bellm_search/calibration.json


@dataclass
class DedupResult:
    documents: int
    clusters: int
    removed: int
    removed_exact: int
    removed_near: int
    pairs: int
    seconds: float
    threshold: float
    k: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Clusters:
    """The outcome: clusters of int ids with their kept member and edge scores."""

    members: list[np.ndarray]
    keep: list[int]
    max_score: np.ndarray
    min_score: np.ndarray
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray]  # (i, j, score) int ids


def default_threshold() -> float:
    """The threshold calibrated on labelled paraphrase data (see README), else a safe default."""
    path = Path(__file__).with_name("calibration.json")
    if path.is_file():
        return float(json.loads(path.read_text())["threshold"])
    return DEFAULT_THRESHOLD


# ----------------------------------------------------------------------------- candidate pairs
def knn_pairs(coll: Any, threshold: float, k: int, nprobe: int | None = None,
              batch: int = 16384) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, score) with i < j, score >= threshold, from k-NN over every live stored vector."""
    search = _searcher(coll, nprobe)
    parts_i, parts_j, parts_s = [], [], []
    for ids, vecs in coll.store.iter_vectors(batch=batch):
        D, I = search(vecs, k + 1)  # the document itself is usually its own first neighbour
        qi = np.repeat(ids, I.shape[1])
        cj, cs = I.ravel(), D.ravel()
        ok = (cj >= 0) & (cj != qi) & (cs >= threshold)
        a, b = qi[ok], cj[ok]
        parts_i.append(np.minimum(a, b))
        parts_j.append(np.maximum(a, b))
        parts_s.append(cs[ok])
    if not parts_i:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.float32)
    pi, pj, ps = np.concatenate(parts_i), np.concatenate(parts_j), np.concatenate(parts_s)
    _, first = np.unique(pi * (int(pj.max()) + 1) + pj, return_index=True) if len(pi) else (None, [])
    return pi[first], pj[first], ps[first].astype(np.float32)


def _searcher(coll: Any, nprobe: int | None) -> Any:
    """A function (xq, k) -> (D, I) with exact scores, chosen for the collection's size:
    exact search while small; an in-memory IVF-Flat (~sqrt(n) lists, exact scores, no re-rank)
    while a float32 copy fits MEMORY_BUDGET; beyond that the collection's own IVF-PQ index with
    exact re-ranking, so memory stays bounded by its codes plus one batch."""
    index = coll.index
    n = coll.store.num_vectors()
    if index.ntotal <= EXACT_SEARCH_MAX and "IVF" not in index.factory:
        return lambda xq, k: coll.search_vectors(xq, k, nprobe)
    if n * coll.dim * 4 <= MEMORY_BUDGET:
        return _temporary_ivf(coll, nprobe or 8)
    return lambda xq, k: coll.search_vectors(xq, k, nprobe)


def dedup_nlist(n: int) -> int:
    """~sqrt(n) lists (a power of two): cheap k-means, and near duplicates (cosine >= ~0.8) of a
    vector almost always fall in its few nearest lists."""
    return max(1, 1 << max(0, round(np.log2(max(n, 1)) / 2)))


def _temporary_ivf(coll: Any, nprobe: int) -> Any:
    """IVF-Flat over all stored vectors, held in memory (callers check the budget)."""
    from bellm_search.index import IndexConfig, VectorIndex, training_sample, training_size

    ids_parts, vec_parts = zip(*coll.store.iter_vectors())
    ids, vecs = np.concatenate(ids_parts), np.concatenate(vec_parts)
    nlist = dedup_nlist(len(ids))
    cfg = IndexConfig(nprobe=nprobe, seed=coll.index_config.seed, gpu=coll.index_config.gpu)
    index = VectorIndex.create(vecs.shape[1], f"IVF{nlist},Flat", cfg)
    index.train(vecs[training_sample(len(ids), training_size(nlist, len(ids)), cfg.seed)])
    index.add(vecs, ids)
    return lambda xq, k: index.search(xq, k, nprobe)


def stored_links(coll: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All live int ids, plus (i, j, score) links from ingest-time duplicates to their first copy."""
    live, li, lj, ls = [], [], [], []
    for int_id, doc in coll.store.iter_docs():
        live.append(int_id)
        if "dup_of" in doc:
            li.append(int(doc["dup_of"]))
            lj.append(int_id)
            ls.append(float(doc.get("dup_score") or 1.0))
    live_ids = np.asarray(live, dtype=np.int64)
    i, j = np.asarray(li, dtype=np.int64), np.asarray(lj, dtype=np.int64)
    ok = np.isin(i, live_ids)  # a link to a deleted first copy is dropped
    return live_ids, i[ok], j[ok], np.asarray(ls, dtype=np.float32)[ok], np.asarray(ls)[ok] >= 1.0


# ----------------------------------------------------------------------------- clustering
def find_clusters(coll: Any, threshold: float, k: int = 10, keep: str = "first",
                  nprobe: int | None = None) -> tuple[Clusters, np.ndarray, np.ndarray]:
    """Clusters over the live documents; returns (clusters, live ids, ids linked exactly)."""
    parse_keep(keep)
    live, ei, ej, es, exact = stored_links(coll)
    ni, nj, ns = knn_pairs(coll, threshold, k, nprobe)
    pi, pj, ps = np.concatenate([ei, ni]), np.concatenate([ej, nj]), np.concatenate([es, ns])
    members = clusters_from_pairs(live, pi, pj)
    mx, mn = all_cluster_scores(members, pi, pj, ps) if members else (np.zeros(0), np.zeros(0))
    docs = _doc_getter(coll)
    kept = [choose_keep(m, keep, docs) for m in members]
    return Clusters(members, kept, mx, mn, (pi, pj, ps)), live, ej[exact]


def _doc_getter(coll: Any) -> Any:
    cache: dict[int, dict] = {}

    def get(int_id: int) -> dict:
        if int_id not in cache:
            doc = coll.store.get_doc(int(int_id)) or {}
            cache[int_id] = {"text": doc.get("text", ""), **doc.get("meta", {})}
        return cache[int_id]

    return get


def run_dedup(coll: Any, threshold: float | None = None, k: int = 10, keep: str = "first",
              nprobe: int | None = None, output: Path | None = None, emit: Emit = "clusters") -> DedupResult:
    """Find clusters and write the chosen output (atomically); return the summary."""
    start = time.perf_counter()
    threshold = default_threshold() if threshold is None else threshold
    found, live, exact_ids = find_clusters(coll, threshold, k, keep, nprobe)
    removed = [m[m != kp] for m, kp in zip(found.members, found.keep)]
    removed_all = np.concatenate(removed) if removed else np.zeros(0, dtype=np.int64)
    n_exact = int(np.isin(removed_all, exact_ids).sum())
    if output is not None:
        write_output(coll, found, live, removed_all, output, emit)
    return DedupResult(
        documents=len(live), clusters=len(found.members), removed=len(removed_all),
        removed_exact=n_exact, removed_near=len(removed_all) - n_exact, pairs=len(found.pairs[0]),
        seconds=round(time.perf_counter() - start, 3), threshold=threshold, k=k,
    )


# ----------------------------------------------------------------------------- output
def write_output(coll: Any, found: Clusters, live: np.ndarray, removed: np.ndarray, path: Path, emit: Emit) -> None:
    """JSONL clusters/pairs or one source id per line, written to a temp file then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    source = _source_ids(coll)
    with open(tmp, "w", encoding="utf-8") as fh:
        for line in _lines(found, live, removed, emit, source):
            fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _lines(found: Clusters, live: np.ndarray, removed: np.ndarray, emit: Emit, source: Any):
    if emit == "clusters":
        for n, (members, kept) in enumerate(zip(found.members, found.keep)):
            yield json.dumps({"cluster": n, "keep": source(kept), "members": [source(m) for m in members],
                              "max_score": _round(found.max_score[n]), "min_score": _round(found.min_score[n])},
                             ensure_ascii=False)
    elif emit == "pairs":
        for i, j, s in zip(*found.pairs):
            yield json.dumps({"id1": source(i), "id2": source(j), "score": _round(s)}, ensure_ascii=False)
    elif emit in ("keep", "remove"):
        gone = set(removed.tolist())
        for int_id in live.tolist():
            if (int_id in gone) == (emit == "remove"):
                yield source(int_id)
    else:
        raise ValueError(f"unknown --emit {emit!r}")


def _round(x: float) -> float | None:
    return None if np.isnan(x) else round(float(x), 6)


def _source_ids(coll: Any) -> Any:
    def source(int_id: int) -> str:
        doc = coll.store.get_doc(int(int_id))
        return doc["id"] if doc else str(int_id)

    return source
