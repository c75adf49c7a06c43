"""Hashed character shingles: each text's n-grams (of its social-normalised form) as a sorted
array of unique uint64 hashes, computed once at ingest and stored; Jaccard over two such arrays
is exact up to 64-bit hash collisions. Pure numpy."""
from __future__ import annotations

import numpy as np

from bellm_search.pairs.normalize import normalize_text

SHINGLE = 5
_PRIME = np.uint64(0x100000001B3)        # FNV-64 prime: the polynomial base of the rolling hash
_MIX = np.uint64(0x9E3779B97F4A7C15)      # golden-ratio multiplier: spreads the low bits
EMPTY = np.zeros(0, dtype=np.uint64)


def shingle_hashes(text: str, n: int = SHINGLE) -> np.ndarray:
    """Sorted unique uint64 hashes of the character n-grams of ``normalize_text(text, social=True)``.

    The same sets as ``char_shingles`` (a text shorter than n is one shingle; one that normalises
    to "" has none), hashed: hash = sum_k c[i+k] * P^(n-1-k) mod 2^64, then mixed."""
    return normalized_shingle_hashes(normalize_text(text, social=True), n)


def normalized_shingle_hashes(norm: str, n: int = SHINGLE) -> np.ndarray:
    """``shingle_hashes`` of a text already social-normalised (callers that need the normalised
    text for something else normalise once)."""
    if n < 1:
        raise ValueError(f"shingle size must be >= 1, got {n}")
    if not norm:
        return EMPTY
    codes = np.frombuffer(norm.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    width = min(n, len(codes))
    h = np.zeros(len(codes) - width + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(width):
            h = h * _PRIME + codes[k:len(codes) - width + 1 + k]
        h = (h ^ (h >> np.uint64(29))) * _MIX
    return np.unique(h)


def to_bytes(hashes: np.ndarray) -> bytes:
    return np.ascontiguousarray(hashes, dtype="<u8").tobytes()


def from_bytes(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype="<u8")


def hashed_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """|a & b| / |a | b| of two sorted unique hash arrays; two empty ones are identical (1.0)."""
    if len(a) == 0 and len(b) == 0:
        return 1.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


OVERLAP_CHUNK = 1024  # pairs per sort: small sorts stay in cache, and chunks run on a thread per core


def batch_overlaps(a: list[np.ndarray], b: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(|a_k & b_k|, |a_k|, |b_k|)`` for each pair k of sorted unique hash arrays, vectorised: the
    pair's two arrays are tagged with k, sorted together, and equal neighbours counted; in chunks of
    ``OVERLAP_CHUNK`` pairs over a thread per core (numpy sorts without the GIL; memory: a chunk's
    hashes, twice, per thread)."""
    if len(a) != len(b):
        raise ValueError(f"pair lists differ in length: {len(a)} vs {len(b)}")
    if len(a) <= OVERLAP_CHUNK:
        return _overlaps(a, b)
    import os
    from concurrent.futures import ThreadPoolExecutor

    step = OVERLAP_CHUNK
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    with ThreadPoolExecutor(max(1, min(cores, -(-len(a) // step)))) as pool:
        parts = list(pool.map(lambda s: _overlaps(a[s:s + step], b[s:s + step]), range(0, len(a), step)))
    inter, na, nb = (np.concatenate(x) for x in zip(*parts))
    return inter, na, nb


def _overlaps(a: list[np.ndarray], b: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    size_a = np.fromiter((len(x) for x in a), dtype=np.int64, count=len(a))
    size_b = np.fromiter((len(x) for x in b), dtype=np.int64, count=len(b))
    if not len(a) or not (size_a.sum() and size_b.sum()):
        return np.zeros(len(a), dtype=np.int64), size_a, size_b
    hashes = np.concatenate([np.concatenate(a) if size_a.sum() else EMPTY, np.concatenate(b) if size_b.sum() else EMPTY])
    owner = np.concatenate([np.repeat(np.arange(len(a)), size_a), np.repeat(np.arange(len(b)), size_b)])
    order = np.lexsort((hashes, owner))
    h, o = hashes[order], owner[order]
    same = (h[1:] == h[:-1]) & (o[1:] == o[:-1])  # within one pair each side is unique: a match is a & b
    return np.bincount(o[1:][same], minlength=len(a)).astype(np.int64), size_a, size_b


def batch_jaccard(a: list[np.ndarray], b: list[np.ndarray]) -> np.ndarray:
    """``hashed_jaccard`` of each pair, vectorised (two empty arrays: 1.0)."""
    inter, na, nb = batch_overlaps(a, b)
    union = na + nb - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)
