"""Candidate pairs for near-duplicate detection: every live vector's neighbours above a cosine
bound. Exact search while small; k-means blocks with dense block products (BLAS) while all vectors
fit in memory; past that the collection's IVF-PQ index with exact re-rank (memory: its codes plus
one batch). Scores are exact inner products of the stored vectors. Ingest-time duplicate links
(exact copies and near duplicates rejected at ingest) come from the store.
"""
from __future__ import annotations

from typing import Any

import numpy as np

EXACT_SEARCH_MAX = 20_000  # below this many vectors a brute-force k-NN is fastest
MEMORY_BUDGET = 4 << 30    # float32 copy of all vectors allowed for the blocked search


def knn_pairs(coll: Any, threshold: float, k: int, nprobe: int | None = None,
              batch: int = 16384) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, score) with i < j, score >= threshold, from k-NN over every live stored vector."""
    index = coll.load_index()
    n = coll.store.num_vectors()
    large = index.ntotal > EXACT_SEARCH_MAX or index.is_ivf
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
    from bellm_search.index.factory import training_sample
    from bellm_search.index.faiss_index import kmeans, nearest_centroids

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
