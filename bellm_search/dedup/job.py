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

from bellm_search.pairs.score import COSINE_FLOOR, PairScore, pair_jaccards
from bellm_search.corpus import SEEN
from bellm_search.dedup.graph import all_cluster_scores, clusters_from_pairs
from bellm_search.dedup.keep import choose_keep, parse_keep

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
    lexical_weight: float = 0.0
    score: str = "cosine"

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


def _calibration() -> dict[str, Any]:
    path = Path(__file__).resolve().parent.parent / "calibration.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def default_threshold() -> float:
    """The dedup threshold calibrated on labelled paraphrase data (see README), for the
    calibrated ``default_score()``; else a safe cosine default."""
    return float(_calibration().get("threshold", DEFAULT_THRESHOLD))


def default_cosine_threshold() -> float:
    """The calibrated threshold for a pure cosine score (the server's near-duplicate lookups)."""
    cal = _calibration()
    return float(cal.get("cosine_threshold", cal.get("threshold", DEFAULT_THRESHOLD)))


def default_score() -> PairScore:
    """The calibrated pair score: cosine mixed with character 5-gram Jaccard (see PairScore)."""
    cal = _calibration()
    return PairScore(float(cal.get("lexical_weight", 0.0)), float(cal.get("cosine_floor", COSINE_FLOOR)))


def score_with(lexical_weight: float | None) -> PairScore:
    """The calibrated pair score, or the same score with another lexical weight."""
    calibrated = default_score()
    if lexical_weight is None or lexical_weight == calibrated.lexical_weight:
        return calibrated
    return PairScore(lexical_weight, calibrated.cosine_floor)


def resolve_scoring(threshold: float | None, lexical_weight: float | None) -> tuple[float, PairScore]:
    """The (threshold, score) a dedup uses: the calibrated pair, or the user's choices. A
    threshold only means something for its score, so a non-default lexical weight without a
    threshold is refused, except 0 (pure cosine), which has its own calibrated threshold."""
    from bellm_search.errors import ConfigError

    score = score_with(lexical_weight)
    if score == default_score():
        return (default_threshold() if threshold is None else threshold), score
    if threshold is None:
        if score.lexical:
            calibrated = default_score()
            raise ConfigError(f"--lexical-weight {lexical_weight:g} has no calibrated threshold: give --threshold "
                              f"(calibrated: --lexical-weight {calibrated.lexical_weight:g} --threshold "
                              f"{default_threshold():g}, or --lexical-weight 0 for pure cosine)")
        threshold = default_cosine_threshold()
    return threshold, score


# ----------------------------------------------------------------------------- candidate pairs
def knn_pairs(coll: Any, threshold: float, k: int, nprobe: int | None = None,
              batch: int = 16384) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, score) with i < j, score >= threshold, from k-NN over every live stored vector."""
    index = coll.index
    n = coll.store.num_vectors()
    large = index.ntotal > EXACT_SEARCH_MAX or "IVF" in index.factory
    if large and n * coll.dim * 4 <= MEMORY_BUDGET:
        ids, vecs = _all_vectors(coll)
        return blocked_pairs(ids, vecs, threshold, k, probes=nprobe or block_probes(threshold), seed=coll.index_config.seed)
    # exact while small; past the memory budget the collection's IVF-PQ index with exact re-rank
    # (memory: its codes plus one batch)
    parts_i, parts_j, parts_s = [], [], []
    for ids, vecs in coll.store.iter_vectors(batch=batch):
        D, I = coll.search_vectors(vecs, k + 1, nprobe)  # the document itself is usually its own first neighbour
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


def _all_vectors(coll: Any) -> tuple[np.ndarray, np.ndarray]:
    parts = list(coll.store.iter_vectors())
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


KMEANS_ITER = 10  # blocks only need to keep near neighbours together, not to be optimal


def block_probes(threshold: float) -> int:
    """Blocks each vector joins: 2 keep >= 99 % of the clusters at cosine >= 0.75; lower
    thresholds (the mixed score's candidates at its 0.65 floor) reach farther neighbours and need 3
    (50k real tweet vectors: 98.3 % of the exact mixed-score pairs clustered together with 2,
    99.2 % with 3; raising k from 10 to 40 did not help)."""
    return 2 if threshold >= 0.75 else 3


def dedup_nlist(n: int) -> int:
    """~sqrt(n) blocks (a power of two): cheap k-means, blocks of ~sqrt(n) vectors."""
    return max(1, 1 << max(0, round(np.log2(max(n, 1)) / 2)))


def blocked_pairs(ids: np.ndarray, vecs: np.ndarray, threshold: float, k: int, probes: int = 2,
                  seed: int = 0, rows: int = 4096) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs >= threshold among vectors that share one of their ``probes`` nearest k-means
    blocks, at most k per vector and block (its best later rows); exact inner products from dense
    block products (BLAS).
    Near duplicates sit next to each other, so they share a nearest block."""
    from bellm_search.index.faiss_index import kmeans, nearest_centroids, training_sample

    n = len(ids)
    nblocks = dedup_nlist(n)
    if nblocks > 1:
        sample = vecs[training_sample(n, min(n, 64 * nblocks), seed)]
        assign = nearest_centroids(vecs, kmeans(sample, nblocks, seed, niter=KMEANS_ITER), min(probes, nblocks))
    else:
        assign = np.zeros((n, 1), dtype=np.int64)
    block_of = assign.ravel()
    row_of = np.repeat(np.arange(n), assign.shape[1])
    order = np.argsort(block_of, kind="stable")
    bounds = np.searchsorted(block_of[order], np.arange(nblocks + 1))
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for b in range(nblocks):
        members = row_of[order[bounds[b]:bounds[b + 1]]]
        if len(members) > 1:
            parts.append(_block_pairs(members, vecs, threshold, k, rows))
    return _merge_pairs(ids, parts)


def _block_pairs(members: np.ndarray, vecs: np.ndarray, threshold: float, k: int, rows: int):
    """Pairs (row positions) >= threshold inside one block: each row against the rows after it
    (the upper triangle: half the products), top-k per row; i < j after merging."""
    block = vecs[members]
    out_i, out_j, out_s = [], [], []
    for s in range(0, len(members) - 1, rows):
        r = min(rows, len(members) - s)
        G = block[s:s + r] @ block[s:].T  # (r, m - s) exact inner products, columns from row s on
        hits = G >= threshold
        ar = np.arange(r)
        hits[:, :r] &= ar[None, :] > ar[:, None]  # only j > i inside the square part
        # every later row also keeps its best earlier partner of this chunk, so the top-k cut of a
        # crowded row never cuts a row off its cluster (what a full, symmetric top-k gave)
        cols = np.nonzero(hits.any(0))[0]
        back = np.where(hits[:, cols], G[:, cols], -np.inf).argmax(0) if len(cols) else cols
        crowded = np.nonzero(hits.sum(1) > k)[0]  # only these rows need a top-k selection
        if len(crowded):
            sub = np.where(hits[crowded], G[crowded], -np.inf)
            keep = np.argpartition(-sub, k - 1, axis=1)[:, :k]
            hits[crowded] = False
            hits[crowded[:, None], keep] = sub[np.arange(len(crowded))[:, None], keep] >= threshold
        hits[back, cols] = True
        i, j = np.nonzero(hits)
        out_i.append(members[s + i])
        out_j.append(members[s + j])
        out_s.append(G[i, j])
    if not out_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_s)


def _merge_pairs(ids: np.ndarray, parts: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.float32)
    a, b, sc = (np.concatenate(x) for x in zip(*parts))
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    _, first = np.unique(lo * len(ids) + hi, return_index=True)
    return ids[lo[first]], ids[hi[first]], sc[first].astype(np.float32)


def stored_links(coll: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All live int ids, plus (i, j, score) links from ingest-time duplicates to their first copy."""
    live_ids = coll.store.live_ids()
    j, i, score = coll.store.dup_links()
    ok = np.isin(i, live_ids)  # a link to a deleted first copy is dropped
    return live_ids, i[ok], j[ok], score[ok], score[ok] >= 1.0


# ----------------------------------------------------------------------------- clustering
def find_clusters(coll: Any, threshold: float, k: int = 10, keep: str = "first",
                  nprobe: int | None = None, score: PairScore | None = None,
                  ) -> tuple[Clusters, np.ndarray, np.ndarray]:
    """Clusters over the live documents; returns (clusters, live ids, ids linked exactly).

    Candidates are the cosine k-NN pairs with cosine >= ``score.candidate_threshold(threshold)``;
    a candidate is a duplicate when its ``score`` (default: pure cosine) reaches ``threshold``.
    """
    parse_keep(keep)
    score = score or PairScore()
    live, ei, ej, es, exact = stored_links(coll)
    ni, nj, ns = knn_pairs(coll, score.candidate_threshold(threshold), k, nprobe)
    if score.lexical:
        ns = rescore(coll, ni, nj, ns, score).astype(np.float32)
        ok = ns >= threshold
        ni, nj, ns = ni[ok], nj[ok], ns[ok]
    pi, pj, ps = np.concatenate([ei, ni]), np.concatenate([ej, nj]), np.concatenate([es, ns])
    members = clusters_from_pairs(live, pi, pj)
    mx, mn = all_cluster_scores(members, pi, pj, ps) if members else (np.zeros(0), np.zeros(0))
    docs = _doc_getter(coll)
    kept = [choose_keep(m, keep, docs) for m in members]
    return Clusters(members, kept, mx, mn, (pi, pj, ps)), live, ej[exact]


LEXICAL_CACHE_DOCS = 200_000  # documents whose shingle sets are held at once; past it the cache restarts


def rescore(coll: Any, pi: np.ndarray, pj: np.ndarray, cosine: np.ndarray, score: PairScore,
            chunk: int = 65536) -> np.ndarray:
    """``score`` of candidate pairs (int ids) from their cosines and their stored texts.

    Pairs are scored in chunks; each document's shingle set is built once while it stays in a
    cache of ``LEXICAL_CACHE_DOCS`` documents (all of them below that size), so memory stays
    bounded on any collection and time is one normalisation per document on most."""
    out = np.empty(len(pi), dtype=np.float64)
    shingles: dict[Any, set] = {}
    text_of: dict[int, str | None] = {}
    for s in range(0, len(pi), chunk):
        a, b = pi[s:s + chunk].tolist(), pj[s:s + chunk].tolist()
        if len(text_of) > LEXICAL_CACHE_DOCS:
            text_of.clear()
            shingles.clear()
        for int_id in set(a) | set(b):
            if int_id not in text_of:
                doc = coll.store.get_doc(int(int_id))
                value = doc.get("text") if doc else None
                text_of[int_id] = value if isinstance(value, str) else None
        jac = pair_jaccards([text_of[i] for i in a], [text_of[j] for j in b], score.shingle, cache=shingles)
        out[s:s + chunk] = score.combine(cosine[s:s + chunk], jac)
    return out


def _doc_getter(coll: Any) -> Any:
    cache: dict[int, dict] = {}

    def get(int_id: int) -> dict:
        if int_id not in cache:
            doc = coll.store.get_doc(int(int_id)) or {}
            cache[int_id] = {"text": doc.get("text", ""), **doc.get("meta", {})}
            if SEEN in doc:  # a promoted copy: its arrival order (see choose_keep)
                cache[int_id][SEEN] = doc[SEEN]
        return cache[int_id]

    return get


def run_dedup(coll: Any, threshold: float | None = None, k: int = 10, keep: str = "first",
              nprobe: int | None = None, output: Path | None = None, emit: Emit = "clusters",
              lexical_weight: float | None = None) -> DedupResult:
    """Find clusters and write the chosen output (atomically); return the summary."""
    start = time.perf_counter()
    threshold, score = resolve_scoring(threshold, lexical_weight)
    found, live, exact_ids = find_clusters(coll, threshold, k, keep, nprobe, score)
    removed = [m[m != kp] for m, kp in zip(found.members, found.keep)]
    removed_all = np.concatenate(removed) if removed else np.zeros(0, dtype=np.int64)
    n_exact = int(np.isin(removed_all, exact_ids).sum())
    if output is not None:
        write_output(coll, found, live, removed_all, output, emit)
    return DedupResult(
        documents=len(live), clusters=len(found.members), removed=len(removed_all),
        removed_exact=n_exact, removed_near=len(removed_all) - n_exact, pairs=len(found.pairs[0]),
        seconds=round(time.perf_counter() - start, 3), threshold=threshold, k=k,
        lexical_weight=score.lexical_weight, score=score.describe(),
    )


# ----------------------------------------------------------------------------- output
def write_output(coll: Any, found: Clusters, live: np.ndarray, removed: np.ndarray, path: Path, emit: Emit) -> None:
    """JSONL clusters/pairs or one source id per line, written to a temp file then renamed
    (so the output is complete or absent); temp files of killed earlier runs are removed."""
    from bellm_search.collection.core import remove_stale_temps

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
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
