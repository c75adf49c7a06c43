"""A dedup run over a collection: candidate pairs -> the pair model's decision -> union-find
clusters with the ingest-time duplicate links -> a kept member per cluster -> outputs (clusters,
keep / remove lists, or every candidate pair with its features and probability), written atomically.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from bellm_search._fs import atomic_write, check_output_path, remove_stale_temps
from bellm_search.corpus import SEEN
from bellm_search.dedup.calibration import Decision, decision_for
from bellm_search.dedup.calibration import default_cosine_threshold  # noqa: F401  (serve/ imports it from here)
from bellm_search.dedup.candidates import knn_pairs, stored_links
from bellm_search.dedup.graph import all_cluster_scores, clusters_from_pairs, weakest_links
from bellm_search.dedup.keep import choose_keep, parse_keep
from bellm_search.errors import BellmError

log = logging.getLogger(__name__)
Emit = Literal["clusters", "keep", "remove", "pairs"]
EMITS = ("clusters", "keep", "remove", "pairs")


@dataclass
class DedupResult:
    documents: int
    clusters: int
    removed: int
    removed_exact: int
    removed_near: int
    pairs: int
    candidates: int
    seconds: float
    threshold: float
    k: int
    score: str = "cosine"
    decision: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Candidates:
    """Every candidate pair (int ids) with its features, probability and decision."""

    i: np.ndarray
    j: np.ndarray
    X: np.ndarray
    probability: np.ndarray
    duplicate: np.ndarray
    features: tuple[str, ...]


@dataclass
class Clusters:
    """The outcome: clusters of int ids with their kept member and edge scores (probabilities
    with the pair model, cosines in pure-cosine mode; an exact copy's link scores 1)."""

    members: list[np.ndarray]
    keep: list[int]
    max_score: np.ndarray
    min_score: np.ndarray
    weakest: np.ndarray                                # per cluster: index into pairs, -1 none
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray]  # (i, j, score) int ids
    candidates: Candidates | None = None


def as_decision(coll: Any, decision: Decision | float | None) -> Decision:
    """A Decision from a Decision, a bare cosine threshold (pure cosine), or None (calibrated)."""
    if isinstance(decision, Decision):
        return decision
    if decision is None:
        return decision_for(coll)
    return Decision(None, float(decision), "threshold", float(decision))


def score_candidates(coll: Any, decision: Decision, k: int, nprobe: int | None) -> Candidates:
    ci, cj, cos = knn_pairs(coll, decision.candidate_cosine, k, nprobe)
    X, prob = decision.probabilities(coll, ci, cj, cos)
    dup = decision.judge(X)[1]
    return Candidates(ci, cj, X, prob, dup, decision.features)


def find_clusters(coll: Any, threshold: Decision | float | None = None, k: int = 10, keep: str = "first",
                  nprobe: int | None = None) -> tuple[Clusters, np.ndarray, np.ndarray]:
    """Clusters over the live documents; returns (clusters, live ids, ids linked exactly).

    ``threshold``: how pairs are judged: a ``Decision`` (see ``decision_for``), a float (pure
    cosine at that threshold), or None (the collection's calibration). Candidates are the cosine k-NN pairs at or above
    ``decision.candidate_cosine``; ingest-time links (exact copies, near duplicates rejected at
    ingest) always join their first copy."""
    parse_keep(keep)
    decision = as_decision(coll, threshold)
    live, ei, ej, es, exact = stored_links(coll)
    cand = score_candidates(coll, decision, k, nprobe)
    es = es.astype(np.float64)
    near = ~exact
    if near.any():  # a link made at ingest by cosine: report its probability
        es[near] = decision.probabilities(coll, ei[near], ej[near], es[near])[1]
    d = cand.duplicate
    pi, pj = np.concatenate([ei, cand.i[d]]), np.concatenate([ej, cand.j[d]])
    ps = np.concatenate([es, cand.probability[d]])
    members = clusters_from_pairs(live, pi, pj)
    mx, mn = all_cluster_scores(members, pi, pj, ps) if members else (np.zeros(0), np.zeros(0))
    weakest = weakest_links(members, pi, pj, ps) if members else np.zeros(0, dtype=np.int64)
    docs = _doc_getter(coll, members)
    kept = [choose_keep(m, keep, docs) for m in members]
    _say_if_field_missing(keep, members, docs)
    return Clusters(members, kept, mx, mn, weakest, (pi, pj, ps), cand), live, ej[exact]


def _say_if_field_missing(keep: str, members: list, docs: Any) -> None:
    """``--keep field:NAME`` where no cluster member has NAME keeps the first of each: say so once."""
    kind, field = parse_keep(keep)
    if kind == "field" and members and all(docs(int(i)).get(field) is None for m in members for i in m):
        log.warning("--keep field:%s: no duplicate has a field %r; kept the smallest id of each cluster", field, field)


def _doc_getter(coll: Any, members: list[np.ndarray]) -> Any:
    """The keep policies' view of each cluster member's record, all read in one pass."""
    ids = np.concatenate(members).tolist() if members else []
    cache: dict[int, dict] = {}
    for int_id, doc in zip(ids, coll.store.get_docs(ids)):
        doc = doc or {}
        cache[int_id] = {"text": doc.get("text", ""), **doc.get("meta", {})}
        if SEEN in doc:  # a promoted copy: its arrival order (see choose_keep)
            cache[int_id][SEEN] = doc[SEEN]
    return lambda int_id: cache[int(int_id)]


def check_output(path: Path | None) -> None:
    """Refuse an output path that cannot be written, before any work; a missing folder is created."""
    if path is not None:
        check_output_path(path, create_folder=True)


def run_dedup(coll: Any, threshold: Decision | float | None = None, k: int = 10, keep: str = "first",
              nprobe: int | None = None, output: Path | None = None, emit: Emit = "clusters",
              report: Path | None = None) -> DedupResult:
    """Find clusters and write the chosen output and report (atomically); return the summary.
    ``threshold`` as for ``find_clusters``."""
    if emit not in EMITS:
        raise BellmError(f"--emit {emit!r}: use {', '.join(EMITS)}")
    check_output(output)
    check_output(report)
    start = time.perf_counter()
    decision = as_decision(coll, threshold)
    found, live, exact_ids = find_clusters(coll, decision, k, keep, nprobe)
    removed = [m[m != kp] for m, kp in zip(found.members, found.keep)]
    removed_all = np.concatenate(removed) if removed else np.zeros(0, dtype=np.int64)
    n_exact = int(np.isin(removed_all, exact_ids).sum())
    source = _source_ids(coll)
    if output is not None:
        write_output(found, live, removed_all, output, emit, source)
    if report is not None:
        from bellm_search.dedup.report import write_report

        write_report(report, coll, found, decision, source)
    return DedupResult(
        documents=len(live), clusters=len(found.members), removed=len(removed_all),
        removed_exact=n_exact, removed_near=len(removed_all) - n_exact, pairs=len(found.pairs[0]),
        candidates=len(found.candidates.i) if found.candidates else 0,
        seconds=round(time.perf_counter() - start, 3), threshold=decision.threshold, k=k,
        score="probability" if decision.model else "cosine", decision=decision.describe(),
    )


# ----------------------------------------------------------------------------- output
def write_output(found: Clusters, live: np.ndarray, removed: np.ndarray, path: Path, emit: Emit, source: Any) -> None:
    """JSONL clusters/pairs or one source id per line, complete or absent (temp file + rename);
    temp files of killed earlier runs are removed."""
    remove_stale_temps(Path(path))

    def write(fh: Any) -> None:
        for line in _lines(found, live, removed, emit, source):
            fh.write(line + "\n")

    atomic_write(Path(path), write)


def _lines(found: Clusters, live: np.ndarray, removed: np.ndarray, emit: Emit, source: Any):
    if emit == "clusters":
        yield from _cluster_lines(found, source)
    elif emit == "pairs":
        c = found.candidates
        for r in range(len(c.i) if c else 0):
            feats = {name: _round(v) for name, v in zip(c.features, c.X[r])}
            yield json.dumps({"id1": source(c.i[r]), "id2": source(c.j[r]), "probability": _round(c.probability[r]),
                              "duplicate": bool(c.duplicate[r]), **feats}, ensure_ascii=False)
    else:
        gone = set(removed.tolist())
        for int_id in live.tolist():
            if (int_id in gone) == (emit == "remove"):
                yield source(int_id)


def _cluster_lines(found: Clusters, source: Any):
    pi, pj, ps = found.pairs
    for n, (members, kept) in enumerate(zip(found.members, found.keep)):
        w = int(found.weakest[n])
        weakest = None if w < 0 else {"id1": source(pi[w]), "id2": source(pj[w]), "score": _round(ps[w])}
        yield json.dumps({"cluster": n, "keep": source(kept), "members": [source(m) for m in members],
                          "size": len(members), "max_score": _round(found.max_score[n]),
                          "min_score": _round(found.min_score[n]), "weakest_link": weakest}, ensure_ascii=False)


def _round(x: float) -> float | None:
    return None if np.isnan(x) else round(float(x), 6)


def _source_ids(coll: Any) -> Any:
    def source(int_id: int) -> str:
        doc = coll.store.get_doc(int(int_id))
        return doc["id"] if doc else str(int_id)

    return source
