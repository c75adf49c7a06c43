"""Cheap pair features for the duplicate model, each monotone in "more alike":

- ``cosine``: of the two encoder vectors (given);
- ``jaccard5``: Jaccard of the character 5-grams of the social-normalised texts (hashed shingles);
- ``containment``: the shorter text's 5-grams found in the longer (|A & B| / min(|A|, |B|));
- ``length_ratio``: min / max of the two shingle counts (~ normalised text lengths);
- ``retweet``: 1 when the shorter text lies wholly inside the longer after social normalisation
  (a retweet, a quote, "text via @user"), with at least ``RETWEET_MIN_SHINGLES`` 5-grams;
- ``word_jaccard``: Jaccard of the normalised word sets (needs the text, not only stored shingles);
- ``word_containment``: the shorter text's words found in the longer (needs the text).

Everything but ``cosine`` comes from per-document hash arrays, so dedup computes a document's
shingles once (or reads them from the store) and pair features in vectorised batches. Pure numpy.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bellm_search.pairs.normalize import normalize_text
from bellm_search.pairs.shingles import EMPTY, SHINGLE, batch_overlaps, normalized_shingle_hashes, to_bytes

FEATURES = ("cosine", "jaccard5", "containment", "length_ratio", "retweet", "word_jaccard", "word_containment")
TEXT_FEATURES = frozenset({"word_jaccard", "word_containment"})  # need the text itself; the others need only shingles
RETWEET_MIN_SHINGLES = 5
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class DocSide:
    """What the features need of one document: its 5-gram hashes, and (optionally) word hashes."""

    shingles: np.ndarray
    words: np.ndarray | None = None


def word_hashes(norm: str) -> np.ndarray:
    """Sorted unique uint64 hashes (stable: BLAKE2b, 8 bytes) of the words of a normalised text."""
    words = set(_WORD.findall(norm))
    if not words:
        return EMPTY
    raw = b"".join(hashlib.blake2b(w.encode("utf-8"), digest_size=8).digest() for w in words)
    return np.unique(np.frombuffer(raw, dtype="<u8"))


def doc_side(text: str | None, with_words: bool = True, shingles: np.ndarray | None = None) -> DocSide | None:
    """A document's feature inputs from its text (None: no text); the text is normalised once.
    ``shingles``: its 5-gram hashes already known (stored at ingest): only the words are computed."""
    if not isinstance(text, str):
        return None
    norm = normalize_text(text, social=True)
    if shingles is None:
        shingles = normalized_shingle_hashes(norm, SHINGLE)
    return DocSide(shingles, word_hashes(norm) if with_words else None)


def record_hash_bytes(record: Mapping[str, Any]) -> dict[str, bytes]:
    """What the store keeps of a record's text (``Writer.add_doc`` keywords): its 5-gram hashes and
    its word hashes as bytes (b"" each without text); the text is normalised once."""
    text = record.get("text")
    if not isinstance(text, str):
        return {"shingles": b"", "words": b""}
    norm = normalize_text(text, social=True)
    return {"shingles": to_bytes(normalized_shingle_hashes(norm, SHINGLE)), "words": to_bytes(word_hashes(norm))}


def record_shingle_bytes(record: Mapping[str, Any]) -> bytes:
    """A record's stored 5-gram hashes (b"" without text): the migration of older stores."""
    text = record.get("text")
    return to_bytes(normalized_shingle_hashes(normalize_text(text, social=True), SHINGLE)) if isinstance(text, str) else b""


def record_word_bytes(record: Mapping[str, Any]) -> bytes:
    """A record's stored word hashes (b"" without text): the migration of older stores."""
    text = record.get("text")
    return to_bytes(word_hashes(normalize_text(text, social=True))) if isinstance(text, str) else b""


def stored_sides(store: Any, ids: Sequence[int]) -> list[DocSide | None]:
    """Each document's side (5-grams and words) from the hashes stored at ingest: no text is read
    or normalised (a store from before they were stored: computed from the record). Equal to
    ``doc_side(record["text"])``: None without text; a document with neither hash (no text, or a
    text without a word or shingle) is told apart by reading its record."""
    ids = [int(i) for i in ids]
    shingles = store.shingles(ids, compute=record_shingle_bytes)
    words = store.shingles(ids, compute=record_word_bytes, db_name="words")
    blank = [i for i, s, w in zip(ids, shingles, words) if not (len(s) or len(w))]
    has_text = {i: isinstance((d or {}).get("text"), str) for i, d in zip(blank, store.get_docs(blank))}
    return [DocSide(s, w) if len(s) or len(w) or has_text[i] else None for i, s, w in zip(ids, shingles, words)]


def pair_features(cosine: np.ndarray, a: Sequence[DocSide | None], b: Sequence[DocSide | None],
                  names: Sequence[str] = FEATURES) -> np.ndarray:
    """(n, len(names)) float64 feature matrix. A pair with a side missing (no text, no shingles)
    gets NaN in every feature but ``cosine``; ``word_jaccard`` is NaN where words are missing."""
    cos = np.asarray(cosine, dtype=np.float64).ravel()
    if not len(cos) == len(a) == len(b):
        raise ValueError(f"{len(cos)} cosines for {len(a)} and {len(b)} documents")
    have = np.array([x is not None and y is not None for x, y in zip(a, b)], dtype=bool)
    cols = {"cosine": cos}
    sa = [x.shingles if ok else EMPTY for x, ok in zip(a, have)]
    sb = [y.shingles if ok else EMPTY for y, ok in zip(b, have)]
    inter, na, nb = batch_overlaps(sa, sb)
    lo, hi = np.minimum(na, nb), np.maximum(na, nb)
    union = na + nb - inter
    cols["jaccard5"] = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    cols["containment"] = np.where(lo > 0, inter / np.maximum(lo, 1), (hi == 0).astype(np.float64))
    cols["length_ratio"] = np.where(hi > 0, lo / np.maximum(hi, 1), 1.0)
    cols["retweet"] = ((inter == lo) & (lo >= RETWEET_MIN_SHINGLES)).astype(np.float64)
    if TEXT_FEATURES & set(names):
        cols["word_jaccard"], cols["word_containment"] = _word_overlaps(a, b, have)
    out = np.column_stack([cols[n] for n in names]) if len(cos) else np.zeros((0, len(names)))
    lexical = [k for k, n in enumerate(names) if n != "cosine"]
    out[np.ix_(~have, lexical)] = np.nan
    return out


def _word_overlaps(a: Sequence[DocSide | None], b: Sequence[DocSide | None],
                   have: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(word Jaccard, word containment) per pair; NaN where a side has no words."""
    ok = np.array([h and x.words is not None and y.words is not None for x, y, h in zip(a, b, have)], dtype=bool)
    inter, na, nb = batch_overlaps([x.words if k else EMPTY for x, k in zip(a, ok)],
                                   [y.words if k else EMPTY for y, k in zip(b, ok)])
    union, lo = na + nb - inter, np.minimum(na, nb)
    jac = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    contained = np.where(lo > 0, inter / np.maximum(lo, 1), (np.maximum(na, nb) == 0).astype(np.float64))
    return np.where(ok, jac, np.nan), np.where(ok, contained, np.nan)


def text_pair_features(cosine: np.ndarray, texts_a: Sequence[str | None], texts_b: Sequence[str | None],
                       names: Sequence[str] = FEATURES) -> np.ndarray:
    """``pair_features`` from texts, each distinct text normalised once."""
    with_words = bool(TEXT_FEATURES & set(names))
    cache: dict[str, DocSide | None] = {}

    def side(t: str | None) -> DocSide | None:
        if t is None:
            return None
        if t not in cache:
            cache[t] = doc_side(t, with_words)
        return cache[t]

    return pair_features(cosine, [side(t) for t in texts_a], [side(t) for t in texts_b], names)
