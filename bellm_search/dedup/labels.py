"""The user's duplicate labels: a JSONL file in the collection, and which pairs to ask about next.

One object per answer, appended, flushed and fsynced at once (a crash loses nothing):
``{"a": source id, "b": source id, "duplicate": true | false | null, ...}`` (null: skipped, never
asked again). The pair is unordered; the last answer for a pair wins.

Which pairs to ask: uncertainty sampling over the collection's candidate pairs (the probability
nearest the decision threshold), half of each batch spread over the whole probability range so the
labels also cover the confident regions the current model might have wrong, no document twice in
a batch, and never a pair already answered.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from bellm_search.errors import ConfigError, CorpusError

LABELS_FILE = "labels.jsonl"


def labels_path(coll: Any) -> Path:
    return Path(coll.path) / LABELS_FILE


def pair_key(a: str, b: str) -> frozenset[str]:
    return frozenset((str(a), str(b)))


def append_label(path: Path, a: str, b: str, duplicate: bool | None, **extra: Any) -> dict[str, Any]:
    """Append one answer (and make it durable before returning)."""
    if duplicate not in (True, False, None):
        raise ValueError(f"duplicate must be True, False or None, got {duplicate!r}")
    record = {"a": str(a), "b": str(b), "duplicate": duplicate, **extra,
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a directory: give a labels file name")
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return record


def read_labels(path: Path) -> dict[frozenset[str], dict[str, Any]]:
    """The last answer for each pair (skips included: ``duplicate`` None). A missing file is empty;
    a line cut short by a crash (the last one, not valid JSON) is ignored; other bad lines raise
    with path:line."""
    path = Path(path)
    if not path.is_file():
        return {}
    lines = path.read_text(encoding="utf-8").split("\n")
    out: dict[frozenset[str], dict[str, Any]] = {}
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            if n >= len(lines) - 1:  # the torn last line of a crashed append
                continue
            raise CorpusError(str(path), n, "invalid JSON") from None
        if not isinstance(obj, dict) or not {"a", "b", "duplicate"} <= obj.keys() \
                or obj["duplicate"] not in (True, False, None):
            raise CorpusError(str(path), n, 'expected {"a": id, "b": id, "duplicate": true|false|null}')
        out[pair_key(obj["a"], obj["b"])] = obj
    return out


def answered(labels: dict[frozenset[str], dict[str, Any]]) -> list[dict[str, Any]]:
    """The labels that say yes or no (skips dropped)."""
    return [obj for obj in labels.values() if obj["duplicate"] is not None]


# ----------------------------------------------------------------------------- what to ask next
def pairs_to_label(coll: Any, path: Path, n: int = 10, k: int = 10, decision: Any = None,
                   seed: int = 0) -> list[dict[str, Any]]:
    """Up to ``n`` unanswered candidate pairs to show (see the module docstring)."""
    from bellm_search.dedup.calibration import decision_for
    from bellm_search.dedup.candidates import knn_pairs

    decision = decision or decision_for(coll, strict=False)
    floor = decision.cosine_floor if decision.model is not None else min(decision.threshold, decision.cosine_floor)
    pi, pj, cos = knn_pairs(coll, floor, k)
    if not len(pi):
        return []
    source = dict(zip(np.unique(np.r_[pi, pj]).tolist(), _source_ids(coll, np.unique(np.r_[pi, pj]))))
    done = read_labels(path)
    fresh = np.array([pair_key(source[a], source[b]) not in done for a, b in zip(pi.tolist(), pj.tolist())], dtype=bool)
    pi, pj, cos = pi[fresh], pj[fresh], cos[fresh]
    X, prob = decision.probabilities(coll, pi, pj, cos)
    order = _ask_order(prob, decision.threshold, seed)
    picked, seen = [], set()
    for r in order:
        a, b = int(pi[r]), int(pj[r])
        if a in seen or b in seen:
            continue
        seen.update((a, b))
        picked.append(r)
        if len(picked) == n:
            break
    return [_describe(coll, source, int(pi[r]), int(pj[r]), float(cos[r]), float(prob[r]), X[r], decision.features)
            for r in picked]


def _ask_order(prob: np.ndarray, threshold: float, seed: int) -> list[int]:
    """Rows alternating: the next most uncertain (nearest the threshold), then the next of a
    round-robin over ten probability bands, each band in a seeded random order (diversity)."""
    uncertain = np.argsort(np.abs(prob - threshold), kind="stable").tolist()
    rng = np.random.default_rng(seed)
    band = np.minimum((np.clip(prob, 0.0, 1.0) * 10).astype(int), 9)
    queues = [rng.permutation(np.flatnonzero(band == b)).tolist() for b in range(10)]
    spread = [q[i] for i in range(max(map(len, queues))) for q in queues if i < len(q)]
    out, used = [], set()
    for u, s in zip(uncertain, spread):
        for r in (u, s):
            if r not in used:
                used.add(r)
                out.append(int(r))
    return out


def _source_ids(coll: Any, ids: np.ndarray) -> list[str]:
    docs = coll.store.get_docs(ids.tolist())
    return [d["id"] if d else str(i) for d, i in zip(docs, ids.tolist())]


def _describe(coll: Any, source: dict, a: int, b: int, cos: float, prob: float, x: np.ndarray,
              names: tuple[str, ...]) -> dict[str, Any]:
    da, db = coll.store.get_docs([a, b])
    return {"a": source[a], "b": source[b], "text_a": (da or {}).get("text"), "text_b": (db or {}).get("text"),
            "cosine": round(cos, 6), "probability": round(prob, 6),
            "features": {name: (None if np.isnan(v) else round(float(v), 6)) for name, v in zip(names, x)}}
