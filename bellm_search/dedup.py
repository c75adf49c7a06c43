"""Near-duplicate clustering maths: text normalisation and hashing, union-find over candidate
pairs, keep policies and per-cluster edge scores. Pure stdlib + numpy (no torch/faiss/lmdb).

Ids are integer document ids; positions are 0..n-1 indexes into a sorted id array. Pair arrays
(``pairs_i``, ``pairs_j``) always name ids, never positions.
"""
from __future__ import annotations

import hashlib
import html
import math
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from bellm_search.errors import ConfigError

KeepPolicy = Literal["first", "longest", "shortest"]  # plus "field:NAME", see parse_keep
KEEP_POLICIES = ("first", "longest", "shortest")
# record key of a re-keyed (promoted) document: the int id it arrived with, i.e. its place in
# arrival order, which its new int id no longer gives (see Writer.promote_duplicates)
SEEN = "_seen"

# Social-media patterns (compiled constants, no state).
_RT_PREFIX = re.compile(r"^\s*RT\b\s*(?:@\w+)?\s*:?\s*")
_URL = re.compile(r"(?:https?://|www\.|pic\.twitter\.com/)\S+", re.IGNORECASE)
_VIA_TAIL = re.compile(r"[\s(\[-]*\bvia\s+@\w+[\s)\].]*$", re.IGNORECASE)
_MENTION = re.compile(r"(?<![\w@])@\w+:?")
_HASHTAG = re.compile(r"(?<![\w#])#(\w)")
_REPEATED_PUNCT = re.compile(r"([^\w\s])\1+")
_WHITESPACE = re.compile(r"\s+")


# --------------------------------------------------------------------------- normalisation

def normalize_text(text: str, social: bool = False) -> str:
    """Normalise text for exact-duplicate hashing and shingling.

    Always: Unicode NFKC, whitespace runs -> one space, strip.
    ``social=True`` also, in this order: HTML entities unescaped (``&amp;`` -> ``&``); leading
    retweet markers dropped (``RT``, ``RT:``, ``RT @user:``, repeated; upper-case ``RT`` only);
    URLs dropped (``http(s)://``, ``www.``, ``pic.twitter.com/``); a trailing ``via @user``
    (optionally in brackets) dropped; ``@mentions`` dropped (with a following ``:``; e-mail
    addresses kept); ``#`` removed from hashtags, their words kept; case-folded (a stronger
    lower-case); runs of one repeated punctuation or symbol character collapsed to one
    (``!!!`` -> ``!``, ``...`` -> ``.``, repeated emoji -> one); letters are never collapsed.
    """
    text = unicodedata.normalize("NFKC", text)
    if social:
        text = _social(text)
    return _WHITESPACE.sub(" ", text).strip()


def _social(text: str) -> str:
    text = unicodedata.normalize("NFKC", html.unescape(text))
    text = _strip_retweet(text)
    text = _URL.sub(" ", text)
    text = _VIA_TAIL.sub("", text)
    text = _MENTION.sub(" ", text)
    text = _HASHTAG.sub(r"\1", text)
    return _REPEATED_PUNCT.sub(r"\1", text.casefold())


def _strip_retweet(text: str) -> str:
    while True:
        stripped = _RT_PREFIX.sub("", text, count=1)
        if stripped == text:
            return text
        text = stripped


def text_hash(text: str, social: bool = False) -> bytes:
    """16-byte BLAKE2b digest of ``normalize_text(text, social)`` (UTF-8)."""
    data = normalize_text(text, social).encode("utf-8")
    return hashlib.blake2b(data, digest_size=16).digest()


# --------------------------------------------------------------------------- pair scores

def char_shingles(text: str, n: int = 5) -> set[str]:
    """Character n-grams of ``normalize_text(text, social=True)``. A text shorter than n is one
    shingle; a text that normalises to "" gives the empty set."""
    if n < 1:
        raise ValueError(f"shingle size must be >= 1, got {n}")
    norm = normalize_text(text, social=True)
    if len(norm) <= n:
        return {norm} if norm else set()
    return {norm[k:k + n] for k in range(len(norm) - n + 1)}


def jaccard(a: set, b: set) -> float:
    """|a & b| / |a | b|; two empty sets are identical (1.0)."""
    inter = len(a & b)
    union = len(a) + len(b) - inter
    return inter / union if union else 1.0


COSINE_FLOOR = 0.65  # the highest floor on a 0.05 grid that costs no dev F1 at the precision rule (README)


@dataclass(frozen=True)
class PairScore:
    """The duplicate score of a candidate pair.

    ``lexical_weight`` w = 0: the cosine of the two vectors. w > 0: ``(1 - w) * cosine + w *
    J``, J the Jaccard similarity of the character 5-grams of the two social-normalised texts,
    for pairs whose cosine reaches ``cosine_floor``; a pair below the floor scores
    ``cosine - 1`` (below every floor-passing pair, so never a duplicate at a threshold > 0,
    and rankings stay monotone in the cosine there). The floor is what lets the search stay a
    cosine k-NN search: only pairs with cosine >= ``candidate_threshold(t)`` can reach t.
    A pair where either text is missing (vectors ingested without text) scores its cosine.
    """

    lexical_weight: float = 0.0
    cosine_floor: float = COSINE_FLOOR
    shingle: int = 5

    def __post_init__(self) -> None:
        if not 0.0 <= self.lexical_weight < 1.0:
            raise ConfigError(f"lexical weight must be in [0, 1), got {self.lexical_weight}")
        if not 0.0 < self.cosine_floor <= 1.0:
            raise ConfigError(f"cosine floor must be in (0, 1], got {self.cosine_floor}")

    @property
    def lexical(self) -> bool:
        return self.lexical_weight > 0.0

    def candidate_threshold(self, threshold: float) -> float:
        """The least cosine a pair needs to score >= ``threshold``."""
        if not self.lexical:
            return threshold
        w = self.lexical_weight
        return max(self.cosine_floor, (threshold - w) / (1.0 - w))

    def combine(self, cosine: Any, jac: Any) -> np.ndarray:
        """Scores from cosines and Jaccards (NaN Jaccard: the text is missing -> the cosine)."""
        cos = np.asarray(cosine, dtype=np.float64)
        if not self.lexical:
            return cos
        j = np.asarray(jac, dtype=np.float64)
        w = self.lexical_weight
        mixed = np.where(np.isnan(j), cos, (1.0 - w) * cos + w * np.nan_to_num(j))
        return np.where(cos >= self.cosine_floor, mixed, cos - 1.0)

    def describe(self) -> str:
        if not self.lexical:
            return "cosine"
        w = self.lexical_weight
        return f"{1 - w:.2g}*cosine + {w:.2g}*jaccard5 (cosine >= {self.cosine_floor:g})"


def pair_jaccards(texts_a: Sequence[str | None], texts_b: Sequence[str | None], n: int = 5,
                  cache: dict[Any, set] | None = None) -> np.ndarray:
    """Character n-gram Jaccard of each pair; NaN where a text is None. Shingle sets are cached
    by text (pass ``cache`` to share it across calls)."""
    cache = {} if cache is None else cache

    def sh(text: str) -> set:
        got = cache.get(text)
        if got is None:
            got = cache[text] = char_shingles(text, n)
        return got

    return np.array([np.nan if a is None or b is None else jaccard(sh(a), sh(b))
                     for a, b in zip(texts_a, texts_b)], dtype=np.float64)


# --------------------------------------------------------------------------- union-find

class UnionFind:
    """Disjoint sets over positions 0..n-1 held in numpy arrays (scales to millions).

    ``find``/``union`` are scalar (path compression, union by size); ``union_many`` merges
    whole pair arrays vectorised (hook roots to the smaller root, then pointer jumping), so a
    million pairs cost a few numpy passes rather than a Python loop.
    """

    def __init__(self, n: int) -> None:
        if n < 0:
            raise ValueError(f"UnionFind size must be >= 0, got {n}")
        self.parent = np.arange(n, dtype=np.int64)
        self.size = np.ones(n, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.parent)

    def find(self, x: int) -> int:
        """Root of ``x``; compresses the path to it."""
        parent = self.parent
        root = int(x)
        while parent[root] != root:
            root = int(parent[root])
        while parent[x] != root:
            parent[x], x = root, int(parent[x])
        return root

    def union(self, a: int, b: int) -> int:
        """Merge the sets of ``a`` and ``b`` (smaller under larger); returns the new root."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]
        return ra

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

def cluster_scores(members: Any, pairs_i: Any, pairs_j: Any, scores: Any) -> tuple[float, float]:
    """``(max, min)`` score over the pairs with both ends in ``members`` (self pairs ignored);
    ``(nan, nan)`` when the cluster has no such pair (e.g. exact duplicates found by hash)."""
    mx, mn = all_cluster_scores([np.asarray(members)], pairs_i, pairs_j, scores)
    return float(mx[0]), float(mn[0])


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


# --------------------------------------------------------------------------- keep policies

def parse_keep(policy: str) -> tuple[str, str | None]:
    """Validate a keep policy: ``first``, ``longest``, ``shortest`` or ``field:NAME``."""
    text = policy.strip() if isinstance(policy, str) else ""
    if text in KEEP_POLICIES:
        return text, None
    if text.startswith("field:") and text[len("field:"):].strip():
        return "field", text[len("field:"):].strip()
    raise ConfigError(
        f"unknown keep policy {policy!r}: use 'first' (smallest id), 'longest' or 'shortest' "
        "(by text length), or 'field:NAME' to keep the largest record[NAME], e.g. field:likes")


def choose_keep(members: Any, policy: str,
                records: Mapping[int, dict] | Callable[[int], dict] | None = None) -> int:
    """The id to keep in one cluster.

    first: first seen: the smallest id, or a promoted copy's arrival id (``record["_seen"]``)
    when ``records`` are given. longest / shortest: by ``len(record["text"])`` (missing
    text counts as ""). field:NAME: largest ``record[NAME]``; a missing, None or NaN value ranks
    below every present value. Every tie goes to the smallest id. ``records`` maps an id to its
    record, or is a function returning it; it is not needed for ``first``.
    """
    kind, field = parse_keep(policy)
    ids = sorted(int(m) for m in np.asarray(members).ravel())
    if not ids:
        raise ValueError("choose_keep needs at least one member")
    if kind == "first" and records is None:
        return ids[0]
    if records is None:
        raise ValueError(f"keep policy {policy!r} needs the members' records")
    get = records.__getitem__ if isinstance(records, Mapping) else records
    if kind == "first":
        return min(ids, key=lambda i: (int((get(i) or {}).get(SEEN, i)), i))
    if kind == "longest":
        return max(ids, key=lambda i: _text_len(get(i)))
    if kind == "shortest":
        return min(ids, key=lambda i: _text_len(get(i)))
    assert field is not None
    return _max_by_field(ids, field, get)


def _text_len(record: dict) -> int:
    return len(record.get("text") or "")


def _max_by_field(ids: list[int], field: str, get: Callable[[int], dict]) -> int:
    present = [(i, v) for i in ids if _present(v := get(i).get(field))]
    if not present:
        return ids[0]
    try:
        return max(present, key=lambda iv: iv[1])[0]  # max keeps the first (smallest id) tie
    except TypeError as exc:
        kinds = sorted({type(v).__name__ for _, v in present})
        raise ConfigError(f"keep policy field:{field}: values cannot be compared "
                          f"({', '.join(kinds)}); use a numeric field") from exc


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))
