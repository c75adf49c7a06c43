"""Exact re-ranking of approximate candidates with the stored vectors (numpy only)."""
from __future__ import annotations

from typing import Callable

import numpy as np


def rerank(xq: np.ndarray, I: np.ndarray, lookup: Callable[[np.ndarray], np.ndarray],
           k: int, chunk: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k among candidate ids I (nq, K), -1 = no candidate.

    lookup(unique int64 ids) returns their stored vectors (len, d) in the same order; it is
    called once. Returns (D, I) of shape (nq, k), sorted descending, padded with -inf / -1.
    Queries go in small chunks so the gathered candidates (chunk, K, d) stay in cache."""
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    I = np.asarray(I, dtype=np.int64)
    nq, K = I.shape
    D_out = np.full((nq, k), -np.inf, dtype=np.float32)
    I_out = np.full((nq, k), -1, dtype=np.int64)
    valid = I >= 0
    if not valid.any():
        return D_out, I_out
    uniq, inv = np.unique(I[valid], return_inverse=True)
    pos = np.zeros(I.shape, dtype=np.int64)
    pos[valid] = inv.ravel()                            # row in V of each candidate
    V = np.asarray(lookup(uniq), dtype=np.float32)      # (u, d)
    kk = min(k, K)
    for s in range(0, nq, chunk):
        q = slice(s, s + chunk)
        scores = np.matmul(V[pos[q]], xq[q, :, None])[:, :, 0]     # (c, K)
        scores[~valid[q]] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, :kk]
        top = np.take_along_axis(scores, order, axis=1)
        D_out[q, :kk] = top
        I_out[q, :kk] = np.where(np.isfinite(top), np.take_along_axis(I[q], order, axis=1), -1)
    return D_out, I_out
