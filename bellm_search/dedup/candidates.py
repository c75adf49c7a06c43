"""Candidate pairs for near-duplicate detection: every live vector's neighbours above a cosine
bound. Exact search while small; k-means blocks with dense block products (BLAS) while all vectors
fit in memory; past that the collection's IVF-PQ index with exact re-rank (memory: its codes plus
one batch). Scores are exact inner products of the stored vectors. Ingest-time duplicate links
(exact copies and near duplicates rejected at ingest) come from the store.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

EXACT_SEARCH_MAX = 20_000  # below this many vectors a brute-force k-NN is fastest
MEMORY_BUDGET = 4 << 30    # all vectors held for the blocked search (as half floats: counted as float32, half is slack
                           # for the per-thread float32 block copies)


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
    """Ids and the stored half-float vectors (half the memory of float32; converted per block)."""
    parts = list(coll.store.iter_vectors(dtype=np.float16))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


KMEANS_ITER = 10  # blocks only need to keep near neighbours together, not to be optimal


def block_probes(threshold: float) -> int:
    """Blocks each vector joins: 2 keep >= 99 % of the clusters at cosine >= 0.75; lower
    thresholds (the mixed score's candidates at its 0.65 floor) reach farther neighbours and need 3
    (50k real tweet vectors: 98.3 % of the exact mixed-score pairs clustered together with 2,
    99.2 % with 3; raising k from 10 to 40 did not help; measured when a pair was searched in every
    block the two shared, a superset of the IVF lists' pairs: on 50k synthetic vectors the lists
    find 99.7 % of those pairs at cosine >= 0.5, 99.99 % in one cluster)."""
    return 2 if threshold >= 0.75 else 3


def dedup_nlist(n: int) -> int:
    """~sqrt(n) blocks (a power of two): cheap k-means, blocks of ~sqrt(n) vectors."""
    return max(1, 1 << max(0, round(np.log2(max(n, 1)) / 2)))


def blocked_pairs(ids: np.ndarray, vecs: np.ndarray, threshold: float, k: int, probes: int = 2,
                  seed: int = 0, rows: int = 0, workers: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs >= threshold of a vector and one whose nearest k-means block is among the first's
    ``probes`` nearest (an IVF search with ``probes`` probes, both ways), at most k per vector and
    block (a pair stays when it is among the k best of either side); exact inner products from
    dense block products (BLAS). Near duplicates sit next to each other, so each one's nearest
    block is among the other's nearest. Each pair of vectors is multiplied in at most one block
    per direction (a block's own vectors against each other once, the visitors against them).
    ``rows``: rows per block product (0: a quarter of the block, within ``BLOCK_BYTES``);
    ``workers``: threads over blocks (None: one per core)."""
    n = len(ids)
    blocks = _blocks(vecs, dedup_nlist(n), probes, seed)
    work = [b for b in blocks if b.own and len(b.rows) > 1]
    work.sort(key=lambda b: b.own * len(b.rows), reverse=True)  # the biggest first: threads finish together
    parts = _map_blocks(lambda b: _block_pairs(b, vecs, threshold, k, rows), work, workers)
    return _merge_pairs(ids, parts)


SPLIT_FACTOR = 8   # a block over this many times the mean block size (and over SPLIT_MIN rows) is split:
SPLIT_MIN = 4096   # its product costs quadratically, its split about linearly


@dataclass(frozen=True)
class Block:
    """Row positions of one k-means block: ``rows[:own]`` are the rows whose nearest block it is
    (ascending), the rest the visitors, rows for which it is one of their other probes (ascending)."""

    rows: np.ndarray
    own: int


def _blocks(vecs: np.ndarray, nblocks: int, probes: int, seed: int) -> list[Block]:
    """The k-means blocks, every row in its ``probes`` nearest. A block far over the mean size
    (k-means blocks can be very uneven) is split by its own k-means over all its rows, each joining
    its 2 nearest parts (so parts of about the mean size): a pair inside it is then found when one's
    nearest part is among the other's 2 nearest (near duplicates' are)."""
    n = len(vecs)
    if nblocks <= 1:
        return [Block(np.arange(n), n)]
    blocks = _kmeans_blocks(vecs, nblocks, probes, seed)
    mean = sum(len(b.rows) for b in blocks) / len(blocks)
    out = []
    for b in blocks:
        if len(b.rows) > max(SPLIT_MIN, SPLIT_FACTOR * mean):
            parts = _kmeans_blocks(vecs[b.rows], max(3, -(-2 * len(b.rows) // max(1, round(mean)))), 2, seed)
            out.extend(Block(b.rows[part.rows], part.own) for part in parts)
        else:
            out.append(b)
    return out


def _kmeans_blocks(vecs: np.ndarray, nblocks: int, probes: int, seed: int) -> list[Block]:
    from bellm_search.index.factory import training_sample
    from bellm_search.index.faiss_index import kmeans, nearest_centroids

    n = len(vecs)
    sample = vecs[training_sample(n, min(n, 64 * nblocks), seed)].astype(np.float32)
    centroids = kmeans(sample, nblocks, seed, niter=KMEANS_ITER)
    p = min(probes, nblocks)
    step = 1 << 15  # float32 copies of this many rows at a time
    assign = np.concatenate([nearest_centroids(vecs[s:s + step], centroids, p) for s in range(0, n, step)])
    key = assign * p + np.arange(p)  # (block, probe rank), row-major: rows ascending within each
    order = np.argsort(key.ravel(), kind="stable")
    bounds = np.searchsorted(key.ravel()[order], np.arange(nblocks + 1) * p)
    own = np.bincount(assign[:, 0], minlength=nblocks)
    return [Block(order[bounds[b]:bounds[b + 1]] // p, int(own[b])) for b in range(nblocks)]


BLOCK_BYTES = 64 << 20  # one block product's float32 matrix at most (per thread)


def _map_blocks(fn: Any, blocks: list, workers: int | None) -> list:
    """``fn`` over blocks: one BLAS thread per block and a thread per core (small products gain
    little from a threaded BLAS and lose much when the cores are shared); without threadpoolctl
    one block at a time with the BLAS's own threads."""
    import os

    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # not a dependency: the BLAS's own threads, one block at a time
        return [fn(b) for b in blocks]
    if workers <= 1 or len(blocks) <= 1:
        return [fn(b) for b in blocks]
    from concurrent.futures import ThreadPoolExecutor

    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, blocks))


def _block_pairs(b: Block, vecs: np.ndarray, threshold: float, k: int, rows: int = 0):
    """Pairs (row positions) >= threshold inside one block: each chunk of its own rows against its
    own rows from the chunk on (the upper triangle), each chunk of visitors against all its own
    rows; only the hits kept (sparse), then at most k per row: a pair stays when it is among the k
    best pairs of either of its rows in this block."""
    block = vecs[b.rows].astype(np.float32, copy=False)
    m, own = len(b.rows), b.own
    rows = rows or min(max(256, -(-m // 4)), max(1, BLOCK_BYTES // (4 * own)))
    chunks = [(s, min(s + rows, own), s) for s in range(0, own - 1, rows)]  # own rows: from the chunk on
    chunks += [(s, min(s + rows, m), 0) for s in range(own, m, rows)]       # visitors: all own rows
    out_i, out_j, out_s = [], [], []
    for s, e, c in chunks:
        G = block[s:e] @ block[c:own].T  # column q is row c + q
        i, j = np.nonzero(G >= threshold)
        if s < own:                       # the square part of the upper triangle: j > i only
            later = j > i
            i, j = i[later], j[later]
        out_i.append(s + i)
        out_j.append(c + j)
        out_s.append(G[i, j])
    i, j, sc = np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_s)
    if len(i) > k:  # rank each pair among all pairs of its first row, and of its second
        best = _top_k(np.concatenate([i, j]), np.concatenate([sc, sc]), k, m)
        keep = best[:len(i)] | best[len(i):]
        i, j, sc = i[keep], j[keep], sc[keep]
    return b.rows[i], b.rows[j], sc


def _top_k(group: np.ndarray, score: np.ndarray, k: int, size: int) -> np.ndarray:
    """Mask of the pairs among the k best of their ``group`` (ties: the first in order)."""
    if np.bincount(group, minlength=size).max() <= k:
        return np.ones(len(group), dtype=bool)
    order = np.lexsort((-score, group))
    g = group[order]
    start = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    rank = np.arange(len(g)) - np.repeat(start, np.diff(np.r_[start, len(g)]))
    keep = np.empty(len(g), dtype=bool)
    keep[order] = rank < k
    return keep


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
