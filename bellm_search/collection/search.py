"""Search a collection: top-k over the index (IVF candidates re-ranked exactly with the stored
vectors), metadata filters (``--where FIELD=VALUE``), and the hits with their records."""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from bellm_search.collection.copies import with_copies
from bellm_search.errors import CollectionError


@dataclass
class Hit:
    id: str
    score: float
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    copies: int = 0  # exact copies (same text) that also match, collapsed under this one

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_where(items: Iterable[str]) -> dict[str, str]:
    """["lang=en", "user=bob"] -> {"lang": "en", "user": "bob"}."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CollectionError(f"--where {item!r}: expected FIELD=VALUE")
        out[key] = value
    return out


def matches(meta: dict[str, Any], where: dict[str, str]) -> bool:
    """Metadata filter: the field's value equals the given text (numbers and booleans as JSON)."""
    for key, want in where.items():
        if key not in meta:
            return False
        have = meta[key]
        if (have if isinstance(have, str) else json.dumps(have)) != want:
            return False
    return True


def search_vectors(index: Any, store: Any, rerank_factor: int, xq: np.ndarray, k: int,
                   nprobe: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, int ids); IVF candidates over-fetched ``rerank_factor`` times and re-ranked
    exactly with the stored vectors."""
    from bellm_search.index.rerank import rerank

    if not index.is_ivf:
        return index.search(xq, k)
    _, cand = index.search(xq, k * rerank_factor, nprobe)
    return rerank(xq, cand, store.get_vectors, k)


def query_vectors(index: Any, store: Any, rerank_factor: int, xq: np.ndarray, k: int, nprobe: int | None,
                  where: dict[str, str] | None, list_copies: bool = False) -> list[list[Hit]]:
    """The k best live hits per query row; with a filter, fetch more until k match (or all seen).
    ``list_copies``: each matching exact copy is a hit of its own (else counted in ``copies``)."""
    if k < 1:
        raise CollectionError("k must be >= 1")
    total = max(index.ntotal, 1)
    fetch = k if not where else min(total, k * 10)
    while True:
        D, I = search_vectors(index, store, rerank_factor, np.asarray(xq, np.float32), fetch, nprobe)
        results = [hits(store, D[i], I[i], k, where, list_copies) for i in range(len(I))]
        if all(len(r) >= k for r in results) or fetch >= total:
            return results
        fetch = min(total, fetch * 4)


def hits(store: Any, scores: np.ndarray, ids: np.ndarray, k: int, where: dict[str, str] | None,
         list_copies: bool = False) -> list[Hit]:
    """Each index hit stands for its document and that document's exact copies (stored without a
    vector): each is filtered by its own metadata; the first that matches is the hit."""
    live = [(int(i), float(s)) for i, s in zip(ids, scores) if i >= 0]
    found_ids = [i for i, _ in live]
    if where or list_copies:
        groups, unread = with_copies(store, found_ids), [0] * len(live)
    else:  # no filter: the first copy and a count, without reading every copy (a viral post has thousands)
        groups = [[(i, d)] if d is not None else [] for i, d in zip(found_ids, store.get_docs(found_ids))]
        unread = [len(c) for c in store.linked(found_ids)]
    out: list[Hit] = []
    for (_, score), group, more in zip(live, groups, unread):
        found = [doc for _, doc in group if not where or matches(doc.get("meta", {}), where)]
        if not found:
            continue  # deleted, or filtered out
        shown = found if list_copies else found[:1]
        out.extend(Hit(d["id"], score, d["text"], d.get("meta", {})) for d in shown)
        if not list_copies:
            out[-1].copies = len(found) - 1 + more
        if len(out) >= k:
            break
    return out[:k]
