"""Union-find over candidate pairs, clusters and per-cluster edge scores. Pure numpy.

Ids are integer document ids; positions are 0..n-1 indexes into a sorted id array. Pair arrays
(``pairs_i``, ``pairs_j``) always name ids, never positions.
"""
from __future__ import annotations

from typing import Any

import numpy as np

# --------------------------------------------------------------------------- union-find

class UnionFind:
    """Disjoint sets over positions 0..n-1 held in numpy arrays (scales to millions).

    ``union_many`` merges whole pair arrays vectorised (hook roots to the smaller root, then
    pointer jumping), so a million pairs cost a few numpy passes rather than a Python loop.
    """

    def __init__(self, n: int) -> None:
        if n < 0:
            raise ValueError(f"UnionFind size must be >= 0, got {n}")
        self.parent = np.arange(n, dtype=np.int64)
        self.size = np.ones(n, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.parent)

    def union_many(self, a: np.ndarray, b: np.ndarray) -> None:
        """Merge every pair ``(a[k], b[k])`` of positions, vectorised."""
        a, b = _check_pair_arrays(a, b)
        _check_positions(a, len(self))
        _check_positions(b, len(self))
        self.compress()
        while True:
            ra, rb = self.parent[a], self.parent[b]
            differ = ra != rb
            if not differ.any():
                break
            a, b, ra, rb = a[differ], b[differ], ra[differ], rb[differ]
            low = np.minimum(ra, rb)
            np.minimum.at(self.parent, ra, low)  # roots only: parent[r] == r before hooking
            np.minimum.at(self.parent, rb, low)
            self.compress()
        self.size = np.bincount(self.parent, minlength=len(self)).astype(np.int64)

    def compress(self) -> np.ndarray:
        """Point every element straight at its root; returns the root array (a view)."""
        while True:
            grand = self.parent[self.parent]
            if np.array_equal(grand, self.parent):
                return self.parent
            self.parent = grand

    def roots(self) -> np.ndarray:
        """Root of every position (a copy)."""
        return self.compress().copy()


def _check_pair_arrays(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if a.shape != b.shape:
        raise ValueError(f"pair arrays differ in length: {a.shape[0]} vs {b.shape[0]}")
    if a.size and not (np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer)):
        raise ValueError(f"pair arrays must hold integers, got {a.dtype} and {b.dtype}")
    return a.astype(np.int64, copy=False), b.astype(np.int64, copy=False)


def _check_positions(pos: np.ndarray, n: int) -> None:
    if pos.size and (pos.min() < 0 or pos.max() >= n):
        raise ValueError(f"positions must lie in 0..{n - 1}")


# --------------------------------------------------------------------------- ids and clusters

def sorted_ids(ids: Any) -> np.ndarray:
    """``ids`` as a sorted int64 array; raises ValueError on duplicates or non-integers."""
    arr = np.asarray(ids).ravel()
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"ids must be integers, got {arr.dtype}")
    arr = np.sort(arr.astype(np.int64, copy=False))
    if arr.size > 1 and (arr[1:] == arr[:-1]).any():
        raise ValueError("ids contain duplicates")
    return arr


def positions_of(sorted_id_array: np.ndarray, query: Any) -> np.ndarray:
    """Positions of ``query`` ids in ``sorted_id_array``; ValueError names an unknown id."""
    query = np.asarray(query, dtype=np.int64).ravel()
    n = len(sorted_id_array)
    pos = np.searchsorted(sorted_id_array, query)
    found = np.zeros(len(query), dtype=bool) if n == 0 else \
        (pos < n) & (sorted_id_array[np.minimum(pos, n - 1)] == query)
    if not found.all():
        raise ValueError(f"pair references id {int(query[~found][0])}, which is not in ids")
    return pos


def component_roots(ids: Any, pairs_i: Any, pairs_j: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(sorted ids, root position per id)`` of the graph on ``ids`` with the given edges."""
    uniq = sorted_ids(ids)
    pi, pj = _check_pair_arrays(pairs_i, pairs_j)
    uf = UnionFind(len(uniq))
    uf.union_many(positions_of(uniq, pi), positions_of(uniq, pj))
    return uniq, uf.roots()


def clusters_from_pairs(ids: Any, pairs_i: Any, pairs_j: Any) -> list[np.ndarray]:
    """Connected components of size >= 2 as arrays of ids.

    Members sorted ascending; clusters sorted by their smallest member. Self pairs and repeated
    pairs are harmless; a pair naming an id absent from ``ids`` raises ValueError.
    """
    uniq, roots = component_roots(ids, pairs_i, pairs_j)
    order = np.argsort(roots, kind="stable")  # within a root: ascending position = ascending id
    grouped = roots[order]
    starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]]) if len(order) else order
    sizes = np.diff(np.r_[starts, len(order)])
    keep = sizes >= 2
    starts, sizes = starts[keep], sizes[keep]
    firsts = order[starts]
    clusters = [uniq[order[s:s + k]] for s, k in zip(starts, sizes)]
    return [clusters[c] for c in np.argsort(firsts, kind="stable")]


# --------------------------------------------------------------------------- cluster scores

def all_cluster_scores(clusters: list[np.ndarray], pairs_i: Any, pairs_j: Any,
                       scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster ``(max_scores, min_scores)`` for many clusters at once, vectorised.

    A pair counts for a cluster when both of its ids are members of that cluster; self pairs
    and pairs outside every cluster are ignored; clusters without a pair get NaN.
    """
    pi, pj = _check_pair_arrays(pairs_i, pairs_j)
    sc = np.asarray(scores, dtype=np.float64).ravel()
    if sc.shape != pi.shape:
        raise ValueError(f"scores has {sc.size} values for {pi.size} pairs")
    ci, cj = _cluster_of(clusters, pi), _cluster_of(clusters, pj)
    inside = (ci >= 0) & (ci == cj) & (pi != pj)
    mx = np.full(len(clusters), -np.inf)
    mn = np.full(len(clusters), np.inf)
    np.maximum.at(mx, ci[inside], sc[inside])
    np.minimum.at(mn, ci[inside], sc[inside])
    empty = np.bincount(ci[inside], minlength=len(clusters)) == 0
    mx[empty], mn[empty] = np.nan, np.nan
    return mx, mn


def _cluster_of(clusters: list[np.ndarray], query: np.ndarray) -> np.ndarray:
    """Cluster index of each queried id, -1 when in no cluster (clusters must be disjoint)."""
    if not clusters:
        return np.full(len(query), -1, dtype=np.int64)
    members = np.concatenate([np.asarray(c, dtype=np.int64).ravel() for c in clusters])
    labels = np.repeat(np.arange(len(clusters)), [np.asarray(c).size for c in clusters])
    order = np.argsort(members, kind="stable")
    members, labels = members[order], labels[order]
    if members.size > 1 and (members[1:] == members[:-1]).any():
        raise ValueError("clusters overlap: an id appears in two clusters")
    pos = np.minimum(np.searchsorted(members, query), members.size - 1)
    return np.where(members[pos] == query, labels[pos], -1)


def weakest_links(clusters: list[np.ndarray], pairs_i: Any, pairs_j: Any, scores: Any) -> np.ndarray:
    """Per cluster, the index of its lowest-scoring pair (the link a person should look at first);
    -1 for a cluster without a pair."""
    pi, pj = _check_pair_arrays(pairs_i, pairs_j)
    sc = np.asarray(scores, dtype=np.float64).ravel()
    ci, cj = _cluster_of(clusters, pi), _cluster_of(clusters, pj)
    inside = np.flatnonzero((ci >= 0) & (ci == cj) & (pi != pj))
    out = np.full(len(clusters), -1, dtype=np.int64)
    order = inside[np.lexsort((-sc[inside], ci[inside]))]  # by cluster, highest score first
    out[ci[order]] = order                                 # the last write per cluster: its lowest
    return out

