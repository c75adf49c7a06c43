"""Near-duplicate detection over collections, with planted duplicates (fake encoder)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bellm_search.collection.core import Collection
from bellm_search.dedup.job import find_clusters, run_dedup
from bellm_search.errors import ConfigError
from bellm_search.index.faiss_index import IndexConfig
from fakes import FakeEncoder, base_vector, near

THRESHOLD = 0.9


def planted():
    """Two near-duplicate groups, one exact group, a tricky pair below threshold, and singles."""
    a, b, t = base_vector("A"), base_vector("B"), base_vector("T")
    table = {
        "Earthquake of magnitude 6.1 hits northern Japan": a,
        "Magnitude 6.1 earthquake hits northern Japan": near(a, 0.97, "a1"),
        "Northern Japan hit by a 6.1 magnitude quake": near(a, 0.95, "a2"),
        "Free iPhone giveaway click the link now": b,
        "FREE iphone giveaway - click the link now!!": near(b, 0.98, "b1"),
        "The dog bit the man": t,
        "The man bit the dog": near(t, 0.80, "t1"),  # same words, different meaning
    }
    rows = [("e1", "Earthquake of magnitude 6.1 hits northern Japan", 5),
            ("e2", "Magnitude 6.1 earthquake hits northern Japan", 50),
            ("s1", "Free iPhone giveaway click the link now", 1),
            ("x1", "The dog bit the man", 0),
            ("e3", "Northern Japan hit by a 6.1 magnitude quake", 7),
            ("s2", "FREE iphone giveaway - click the link now!!", 3),
            ("x2", "The man bit the dog", 0),
            ("r1", "RT @news: Earthquake of magnitude 6.1 hits northern Japan http://t.co/x", 0),
            ("u1", "completely unrelated post about cooking pasta", 0),
            ("u2", "another unrelated one about football", 0)]
    return table, [{"id": i, "text": t, "likes": n} for i, t, n in rows]


def make(tmp_path, index_config=None, **ingest):
    table, records = planted()
    coll = Collection.create(tmp_path / "c", encoder=FakeEncoder(table), normalize_social=True,
                             index_config=index_config)
    coll.ingest(records, **ingest)
    return coll


def source_clusters(coll, found):
    name = lambda i: coll.store.get_doc(int(i))["id"]  # noqa: E731
    return sorted(sorted(name(m) for m in members) for members in found.members)


def test_planted_clusters_exactly(tmp_path):
    coll = make(tmp_path)
    found, live, exact = find_clusters(coll, THRESHOLD, k=5)
    assert source_clusters(coll, found) == [["e1", "e2", "e3", "r1"], ["s1", "s2"]]
    assert len(live) == 10
    assert [coll.store.get_doc(int(i))["id"] for i in exact] == ["r1"]


def test_keep_policies(tmp_path):
    coll = make(tmp_path)
    name = lambda i: coll.store.get_doc(int(i))["id"]  # noqa: E731
    for keep, expect in [("first", {"e1", "s1"}), ("field:likes", {"e2", "s2"}),
                         ("shortest", {"e3", "s1"}), ("longest", {"r1", "s2"})]:
        found, _, _ = find_clusters(coll, THRESHOLD, k=5, keep=keep)
        assert {name(k) for k in found.keep} == expect, keep


def test_outputs_parse_back(tmp_path):
    coll = make(tmp_path)
    out = tmp_path / "out"
    res = run_dedup(coll, THRESHOLD, k=5, output=out / "clusters.jsonl", emit="clusters", lexical_weight=0.0)
    lines = [json.loads(x) for x in (out / "clusters.jsonl").read_text().splitlines()]
    assert [sorted(c["members"]) for c in lines] == [["e1", "e2", "e3", "r1"], ["s1", "s2"]]
    assert lines[0]["keep"] == "e1" and 0.9 <= lines[0]["min_score"] <= lines[0]["max_score"] <= 1.0
    assert (res.documents, res.clusters, res.removed, res.removed_exact, res.removed_near) == (10, 2, 4, 1, 3)
    run_dedup(coll, THRESHOLD, k=5, output=out / "remove.txt", emit="remove", lexical_weight=0.0)
    run_dedup(coll, THRESHOLD, k=5, output=out / "keep.txt", emit="keep", lexical_weight=0.0)
    removed = (out / "remove.txt").read_text().split()
    kept = (out / "keep.txt").read_text().split()
    assert sorted(removed) == ["e2", "e3", "r1", "s2"]
    assert sorted(kept + removed) == sorted(d["id"] for d in planted()[1])
    run_dedup(coll, THRESHOLD, k=5, output=out / "pairs.jsonl", emit="pairs", lexical_weight=0.0)
    pairs = [json.loads(x) for x in (out / "pairs.jsonl").read_text().splitlines()]
    assert {"id1", "id2", "score"} <= set(pairs[0]) and all(p["score"] >= THRESHOLD for p in pairs)
    assert not any({p["id1"], p["id2"]} == {"x1", "x2"} for p in pairs)
    assert not list(out.glob(".*tmp*"))


def test_deleted_documents_never_appear(tmp_path):
    coll = make(tmp_path)
    coll.delete(["e2", "s1"])
    found, live, _ = find_clusters(coll, THRESHOLD, k=5)
    assert source_clusters(coll, found) == [["e1", "e3", "r1"]]
    assert len(live) == 8


@pytest.mark.parametrize("budget", [0, 1 << 30])  # 0: the collection's IVF-PQ index; else in-memory IVF-Flat
def test_works_on_ivfpq_collection(tmp_path, monkeypatch, budget):
    import bellm_search.dedup.job as job

    monkeypatch.setattr(job, "MEMORY_BUDGET", budget)
    table, records = planted()
    filler = [{"id": f"f{i}", "text": f"filler post {i}"} for i in range(3000)]
    coll = Collection.create(tmp_path / "c", encoder=FakeEncoder(table), normalize_social=True,
                             index_config=IndexConfig(factory="IVF16,PQ4", nprobe=16))
    coll.ingest(filler[:1000])
    coll.reindex(factory="IVF16,PQ4")
    coll.ingest(records + filler[1000:])
    found, _, _ = find_clusters(coll, THRESHOLD, k=5, nprobe=16)
    assert source_clusters(coll, found) == [["e1", "e2", "e3", "r1"], ["s1", "s2"]]


def test_blocked_path_matches_exact(tmp_path, monkeypatch):
    import bellm_search.dedup.job as job

    coll = make(tmp_path)
    exact, _, _ = find_clusters(coll, THRESHOLD, k=5)
    monkeypatch.setattr(job, "EXACT_SEARCH_MAX", 0)
    monkeypatch.setattr(job, "dedup_nlist", lambda n: 1)
    approx, _, _ = find_clusters(coll, THRESHOLD, k=5)
    assert source_clusters(coll, approx) == source_clusters(coll, exact)


def test_streaming_rejects_planted_near_duplicates(tmp_path):
    coll = make(tmp_path, skip_near_duplicates=THRESHOLD)
    assert coll.index.ntotal == 6  # e1, s1, x1, x2, u1, u2
    e2 = coll.store.get_doc(coll.store.lookup_key("e2"))
    assert e2["dup_of"] == coll.store.lookup_key("e1") and 0.96 < e2["dup_score"] < 0.98
    stats = coll.ingest([{"id": "late", "text": "Magnitude 6.1 earthquake hits northern Japan"},
                         {"id": "new", "text": "fresh news"}], skip_near_duplicates=THRESHOLD)
    assert (stats.added, stats.exact_duplicates) == (1, 1)
    found, _, _ = find_clusters(coll, THRESHOLD, k=5)
    assert source_clusters(coll, found) == [["e1", "e2", "e3", "late", "r1"], ["s1", "s2"]]


def test_dedup_nlist_is_about_sqrt_n():
    from bellm_search.dedup.job import dedup_nlist

    assert [dedup_nlist(n) for n in (1, 100, 50_000, 1_000_000)] == [1, 8, 256, 1024]


def test_blocked_pairs_against_brute_force():
    from bellm_search.dedup.job import blocked_pairs

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 32)).astype(np.float32)
    x = centres[rng.integers(0, 40, 3000)] + 0.25 * rng.standard_normal((3000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(3000, dtype=np.int64) * 7 + 3  # ids are not positions
    G = x @ x.T
    np.fill_diagonal(G, -1)
    ti, tj = np.nonzero(np.triu(G >= 0.97))
    truth = set(zip((ids[ti]).tolist(), (ids[tj]).tolist()))
    pi, pj, ps = blocked_pairs(ids, x, 0.97, k=50, probes=2)
    got = set(zip(pi.tolist(), pj.tolist()))
    assert got <= truth and len(got) >= 0.98 * len(truth) > 0
    assert np.all(ps >= 0.97) and np.all(pi < pj)


# ----------------------------------------------------------------------------- mixed lexical score
def test_pair_score_mixes_cosine_and_jaccard_above_the_floor_only():
    from bellm_search.pairs.score import PairScore

    s = PairScore(0.6, cosine_floor=0.6)
    got = s.combine([0.9, 0.9, 0.59, 0.9], [1.0, 0.0, 1.0, np.nan])
    # 0.4*0.9 + 0.6*1; 0.4*0.9 + 0; below the floor: cosine - 1 (< 0, never a duplicate); no text: cosine
    assert got == pytest.approx([0.96, 0.36, -0.41, 0.9])
    assert s.candidate_threshold(0.41) == 0.6  # the floor binds
    assert s.candidate_threshold(0.9) == pytest.approx(0.75)  # 0.4*c + 0.6*1 >= 0.9  <=>  c >= 0.75
    assert PairScore(0.0).candidate_threshold(0.83) == 0.83 and PairScore(0.0).combine([0.3], [1.0]) == [0.3]
    for bad in ({"lexical_weight": 1.0}, {"lexical_weight": -0.1}, {"lexical_weight": 0.5, "cosine_floor": 0.0}):
        with pytest.raises(ConfigError):
            PairScore(**bad)


def lexical_corpus():
    """Pairs whose cosine and lexical overlap disagree (fake vectors with chosen cosines)."""
    a, b, c = base_vector("LA"), base_vector("LB"), base_vector("LC")
    table = {
        "Earthquake of magnitude 6.1 hits northern Japan this morning": a,
        "RT @news: EARTHQUAKE of magnitude 6.1 hits northern Japan this morning!! http://t.co/q": near(a, 0.75, "la"),
        "Free iPhone giveaway, click the link now": b,
        "Win a brand new car, enter today": near(b, 0.95, "lb"),  # close vectors, other words
        "The council meeting was moved to Thursday evening": c,
        "The council meeting was moved to Thursday morning": near(c, 0.5, "lc"),  # same words, far vectors
    }
    texts = list(table)
    records = [{"id": f"d{i}", "text": t} for i, t in enumerate(texts)]
    return table, records


@pytest.mark.parametrize("blocked", [False, True])
def test_mixed_score_links_lexical_copies_and_splits_lookalike_vectors(tmp_path, monkeypatch, blocked):
    import bellm_search.dedup.job as job
    from bellm_search.pairs.score import PairScore

    if blocked:  # the k-means-blocked candidate search of large collections
        monkeypatch.setattr(job, "EXACT_SEARCH_MAX", 0)
    table, records = lexical_corpus()
    coll = Collection.create(tmp_path / "c", encoder=FakeEncoder(table), normalize_social=True)
    coll.ingest(records)
    cosine, _, _ = find_clusters(coll, 0.9, k=5)
    assert source_clusters(coll, cosine) == [["d2", "d3"]]  # cosine alone: the look-alike vectors only
    mixed, _, _ = find_clusters(coll, 0.6, k=5, score=PairScore(0.6, cosine_floor=0.6))
    # the retweeted copy (cosine 0.75, Jaccard 0.98: 0.89) is in; the giveaway/car pair (cosine
    # 0.95, Jaccard 0: 0.38) is out; the council pair (Jaccard 0.73) would score 0.64 but its
    # cosine 0.5 is under the floor
    assert source_clusters(coll, mixed) == [["d0", "d1"]]
    (i, j, s) = mixed.pairs
    assert len(s) == 1 and s[0] == pytest.approx(0.4 * 0.75 + 0.6 * 0.98245614, abs=1e-4)
    assert s[0] == pytest.approx(mixed.max_score[0])
    no_floor, _, _ = find_clusters(coll, 0.6, k=5, score=PairScore(0.6, cosine_floor=0.45))
    assert source_clusters(coll, no_floor) == [["d0", "d1"], ["d4", "d5"]]


def test_run_dedup_uses_the_calibrated_pair_score_and_refuses_uncalibrated_weights(tmp_path):
    from bellm_search.pairs.score import PairScore
    from bellm_search.dedup.job import default_cosine_threshold, default_score, default_threshold, resolve_scoring

    cal = json.loads((Path(job_file()).resolve().parent.parent / "calibration.json").read_text())
    assert default_score().lexical_weight == cal["lexical_weight"] and default_threshold() == cal["threshold"]
    assert resolve_scoring(None, None) == (cal["threshold"], default_score())
    t, s = resolve_scoring(None, 0.0)  # pure cosine has its own calibrated threshold
    assert (t, s.lexical_weight) == (default_cosine_threshold(), 0.0) == (cal["cosine_threshold"], 0.0)
    other = 0.45 if cal["lexical_weight"] != 0.45 else 0.55  # a weight without a calibrated threshold
    assert resolve_scoring(0.5, other) == (0.5, PairScore(other, cal["cosine_floor"]))
    with pytest.raises(ConfigError, match=f"--lexical-weight {other:g} has no calibrated threshold"):
        resolve_scoring(None, other)
    table, records = lexical_corpus()
    coll = Collection.create(tmp_path / "c", encoder=FakeEncoder(table), normalize_social=True)
    coll.ingest(records)
    res = run_dedup(coll, 0.7, k=5, lexical_weight=0.6)
    assert (res.clusters, res.removed, res.lexical_weight) == (1, 1, 0.6) and "jaccard5" in res.score


def job_file():
    import bellm_search.dedup.job as job

    return job.__file__


def test_rescore_is_the_same_when_the_shingle_cache_restarts(tmp_path, monkeypatch):
    import bellm_search.dedup.job as job
    from bellm_search.pairs.score import PairScore

    table, records = lexical_corpus()
    coll = Collection.create(tmp_path / "c", encoder=FakeEncoder(table), normalize_social=True)
    coll.ingest(records)
    pi, pj = np.array([0, 0, 2, 4, 1]), np.array([1, 3, 3, 5, 4])
    cos = np.array([0.75, 0.7, 0.95, 0.65, 0.9])
    score = PairScore(0.6, cosine_floor=0.6)
    whole = job.rescore(coll, pi, pj, cos, score)
    monkeypatch.setattr(job, "LEXICAL_CACHE_DOCS", 1)
    assert job.rescore(coll, pi, pj, cos, score, chunk=2).tolist() == whole.tolist()
    assert whole[0] == pytest.approx(0.4 * 0.75 + 0.6 * 0.98245614, abs=1e-4) and whole[2] == pytest.approx(0.38)
