"""Exact copies: documents whose normalised text equals a stored one are kept without a vector,
linked to their first copy (link score 1.0). The two policies about them live here:

- delete: a deleted first copy hands its vector to its earliest live exact copy (promote);
- search: a hit stands for its first copy and every exact copy; each is filtered by its own
  metadata, and the matching ones are collapsed under the first (a ``copies`` count) or listed.
"""
from __future__ import annotations

from typing import Any

from bellm_search.corpus import SEEN

EXACT = 1.0  # the link score of an exact copy


def promote_first_copies(w: Any, store: Any, firsts: list[int]) -> list[tuple[int, int]]:
    """The documents ``firsts`` were deleted in the writer ``w``: each hands its vector to its
    earliest live exact copy, re-added under a new int id (with its own text hash, else the first
    copy's; its arrival order kept in ``SEEN`` for ``--keep first``), and its other duplicates are
    linked to that id. Returns (old id, new id) of each promoted copy."""
    from bellm_search.pairs.features import record_shingle_bytes, record_word_bytes

    gone = set(firsts)
    dups: dict[int, list[tuple[int, float]]] = {}
    for d, f, sc in zip(*store.dup_links()):
        if int(f) in gone and w.is_live(int(d)):
            dups.setdefault(int(f), []).append((int(d), float(sc)))
    promoted = []
    for first, mine in dups.items():
        exact = [d for d, sc in mine if sc >= EXACT]
        record = store.get_doc(min(exact)) if exact else None
        if record is None:
            continue
        old = min(exact)
        h = store.text_hash(old) or store.text_hash(first)
        shingles = store.shingles([old], compute=record_shingle_bytes)[0].tobytes()
        words = store.shingles([old], compute=record_word_bytes, db_name="words")[0].tobytes()
        source_id = record.pop("id")
        record.pop("dup_of", None)
        record.pop("dup_score", None)
        record[SEEN] = int(record.get(SEEN, old))
        vector = store.get_vectors([first])[0]
        w.delete(old)
        new = w.add_doc(source_id, record, text_hash=h, vector=vector, shingles=shingles, words=words,
                        replaces=old)
        for d, sc in mine:
            doc = store.get_doc(d) if d != old else None
            if doc is not None:
                doc["dup_of"] = new
                w.put_record(d, doc)
                w.link(d, new, sc)
        promoted.append((old, new))
    return promoted


def with_copies(store: Any, ids: list[int]) -> list[list[tuple[int, dict]]]:
    """For each (live, indexed) id: (int id, record) of itself and of its live exact copies, in id order."""
    groups = [[i, *c.tolist()] for i, c in zip(ids, store.linked(ids, min_score=EXACT))]
    docs = iter(store.get_docs([i for g in groups for i in g]))
    return [[(i, doc) for i in g if (doc := next(docs)) is not None] for g in groups]
