"""Near-duplicate detection over collections, with planted duplicates (fake encoder)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bellm_search.collection.core import Collection
from bellm_search.dedup.job import find_clusters, run_dedup
from bellm_search.errors import ConfigError
from bellm_search.config import IndexConfig
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
    res = run_dedup(coll, THRESHOLD, k=5, output=out / "clusters.jsonl", emit="clusters")
    lines = [json.loads(x) for x in (out / "clusters.jsonl").read_text().splitlines()]
    assert [sorted(c["members"]) for c in lines] == [["e1", "e2", "e3", "r1"], ["s1", "s2"]]
    assert lines[0]["keep"] == "e1" and 0.9 <= lines[0]["min_score"] <= lines[0]["max_score"] <= 1.0
    weakest = lines[0]["weakest_link"]  # the link a person should look at first: e3's, at 0.95 to e1
    assert weakest["score"] == lines[0]["min_score"] and "e3" in (weakest["id1"], weakest["id2"])
    assert (res.documents, res.clusters, res.removed, res.removed_exact, res.removed_near) == (10, 2, 4, 1, 3)
    run_dedup(coll, THRESHOLD, k=5, output=out / "remove.txt", emit="remove")
    run_dedup(coll, THRESHOLD, k=5, output=out / "keep.txt", emit="keep")
    removed = (out / "remove.txt").read_text().split()
    kept = (out / "keep.txt").read_text().split()
    assert sorted(removed) == ["e2", "e3", "r1", "s2"]
    assert sorted(kept + removed) == sorted(d["id"] for d in planted()[1])
    run_dedup(coll, THRESHOLD, k=5, output=out / "pairs.jsonl", emit="pairs")
    pairs = [json.loads(x) for x in (out / "pairs.jsonl").read_text().splitlines()]
    assert {"id1", "id2", "probability", "duplicate", "cosine"} <= set(pairs[0])
    assert all(p["cosine"] >= THRESHOLD and p["duplicate"] for p in pairs)
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
    import bellm_search.dedup.candidates as job

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
    import bellm_search.dedup.candidates as job

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
    from bellm_search.dedup.candidates import dedup_nlist

    assert [dedup_nlist(n) for n in (1, 100, 50_000, 1_000_000)] == [1, 8, 256, 1024]


def test_blocked_pairs_against_brute_force():
    from bellm_search.dedup.candidates import blocked_pairs

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


# ----------------------------------------------------------------------------- the pair model
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
    records = [{"id": f"d{i}", "text": t} for i, t in enumerate(table)]
    return table, records


def lexical_model(floor=0.6):
    """cosine + 5-gram Jaccard, weights by hand: P >= 0.5 where 2 cosine + 10 Jaccard >= 8."""
    from bellm_search.pairs.model import PairModel

    return PairModel(("cosine", "jaccard5"), (2.0, 10.0), -8.0, 0.5, 20.0, -19.0, 0.95, cosine_floor=floor)


def decision(model):
    from bellm_search.dedup.calibration import Decision

    return Decision(model, model.threshold, "threshold", model.cosine_floor)


@pytest.mark.parametrize("blocked", [False, True])
def test_pair_model_links_lexical_copies_and_splits_lookalike_vectors(tmp_path, monkeypatch, blocked):
    import bellm_search.dedup.candidates as candidates

    if blocked:  # the k-means-blocked candidate search of large collections
        monkeypatch.setattr(candidates, "EXACT_SEARCH_MAX", 0)
    table, records = lexical_corpus()
    coll = Collection.create(tmp_path / "c", encoder=FakeEncoder(table), normalize_social=True)
    coll.ingest(records)
    cosine, _, _ = find_clusters(coll, 0.9, k=5)
    assert source_clusters(coll, cosine) == [["d2", "d3"]]  # cosine alone: the look-alike vectors only
    model = lexical_model()
    found, _, _ = find_clusters(coll, decision(model), k=5)
    # the retweeted copy (cosine 0.75, Jaccard 0.98) is in; the giveaway/car pair (cosine 0.95,
    # Jaccard 0) is out; the council pair (Jaccard 0.73) is under the cosine floor
    assert source_clusters(coll, found) == [["d0", "d1"]]
    i, j, p = found.pairs
    assert len(p) == 1 and p[0] == pytest.approx(1 / (1 + np.exp(-(2 * 0.75 + 10 * 0.98245614 - 8))), abs=1e-4)
    assert p[0] == pytest.approx(found.max_score[0])
    c = found.candidates
    assert set(c.features) == {"cosine", "jaccard5"} and len(c.i) >= 2 and c.duplicate.sum() == 1
    low_floor, _, _ = find_clusters(coll, decision(lexical_model(floor=0.45)), k=5)
    assert source_clusters(coll, low_floor) == [["d0", "d1"], ["d4", "d5"]]


def test_pair_model_probability_monotone_bounds_and_text_less_pairs():
    from bellm_search.pairs.model import PairModel, fit_pair_model

    m = lexical_model()
    X = np.array([[0.9, 1.0], [0.9, 0.0], [0.59, 1.0], [0.96, np.nan], [0.9, np.nan]])
    assert m.decide(X).tolist() == [True, False, False, True, False]  # floor; no text: cosine >= 0.95
    assert (m.score(X)[2] < 0) and m.score(X)[0] == pytest.approx(m.probability(X)[0])
    # the least cosine that can reach P = 0.5: 2c + 10 - 8 >= 0 -> c >= -1: the floor 0.6 binds
    assert m.candidate_cosine() == 0.6
    assert PairModel.from_dict(m.to_dict()) == m
    with pytest.raises(ConfigError):
        PairModel(("cosine", "jaccard5"), (1.0, -1.0), 0.0, 0.5, 1.0, 0.0)  # a negative weight
    with pytest.raises(ConfigError):
        PairModel.from_dict({"features": ["cosine"]})
    rng = np.random.default_rng(0)
    X = np.column_stack([0.65 + 0.35 * rng.random(3000), rng.random(3000), rng.random(3000)])
    y = (2 * X[:, 0] + X[:, 1] + 0.2 * rng.standard_normal(3000) > 2.3).astype(float)  # col 2 is noise
    fitted = fit_pair_model(X, y, ["cosine", "jaccard5", "containment"])
    assert fitted.weights[0] > fitted.weights[1] > 0 and fitted.weights[2] < 0.2 * fitted.weights[1]
    assert all(w >= 0 for w in fitted.weights)


def test_batch_jaccard_matches_pairwise_and_features_from_texts():
    from bellm_search.pairs.features import FEATURES, text_pair_features
    from bellm_search.pairs.shingles import batch_jaccard, hashed_jaccard, shingle_hashes

    texts = ["hello world this is", "hello world that is", "", "abc", "RT @x: hello world this is http://t.co/a"]
    S = [shingle_hashes(t) for t in texts]
    a, b = np.meshgrid(range(5), range(5))
    got = batch_jaccard([S[i] for i in a.ravel()], [S[j] for j in b.ravel()])
    assert got.tolist() == [hashed_jaccard(S[i], S[j]) for i, j in zip(a.ravel(), b.ravel())]
    X = text_pair_features(np.array([0.9, 0.8, 0.7]), [texts[0], texts[4], None], [texts[4], texts[1], texts[1]])
    row = dict(zip(FEATURES, X[0]))  # a retweet: the same text after social normalisation
    assert row["jaccard5"] == row["containment"] == row["length_ratio"] == row["retweet"] == row["word_jaccard"] == 1.0
    row = dict(zip(FEATURES, X[1]))
    assert 0 < row["jaccard5"] < row["containment"] < 1 and row["retweet"] == 0 and row["word_jaccard"] == 0.6
    assert X[2, 0] == 0.7 and np.isnan(X[2, 1:]).all()  # no text: only the cosine


# ----------------------------------------------------------------------------- calibration and encoders
def test_dedup_refuses_a_calibration_made_for_another_encoder(tmp_path, capsys):
    """Defect 13.2.4: the shipped calibration (for the default adapter's sha256) must not be applied
    to a collection of another encoder: dedup needs --threshold, and says how to calibrate."""
    from bellm_search.cli.main import main

    coll = make(tmp_path)  # the fake encoder: no adapter
    coll.close()
    with pytest.raises(SystemExit) as exc:
        main(["dedup", "-c", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and "--threshold" in err and "bellm-search calibrate" in err
    main(["dedup", "-c", str(tmp_path / "c"), "--threshold", str(THRESHOLD), "--score", "cosine", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert (out["clusters"], out["removed"], out["score"]) == (2, 4, "cosine")


def test_decision_for_uses_the_collections_own_calibration_only_for_its_encoder(tmp_path, caplog):
    from bellm_search.dedup.calibration import CalibrationMismatch, decision_for

    coll = make(tmp_path)
    with pytest.raises(CalibrationMismatch, match="bellm-search label"):
        decision_for(coll)
    loose = decision_for(coll, strict=False)
    assert loose.model is None and loose.warning and "calibrate" in caplog.text
    assert decision_for(coll, threshold=0.8).threshold == 0.8
    enc = coll.manifest["encoder"]
    record = {"model": lexical_model().to_dict(), "adapter_sha256": enc.get("adapter_sha256"),
              "encoder": {"model": enc["model"], "adapter_sha256": enc.get("adapter_sha256")}}
    (tmp_path / "c" / "calibration.json").write_text(json.dumps(record))
    d = decision_for(coll)
    assert d.source == "collection" and d.model == lexical_model() and d.threshold == 0.5
    assert decision_for(coll, pure_cosine=True).threshold == 0.95
    with pytest.raises(ConfigError, match="probability"):
        decision_for(coll, threshold=1.5)
    record["encoder"]["model"] = "another-model"
    (tmp_path / "c" / "calibration.json").write_text(json.dumps(record))
    with pytest.raises(CalibrationMismatch):
        decision_for(coll)


def test_shipped_calibration_records_a_pair_model_and_its_encoder():
    from bellm_search.collection.manifest import adapter_sha256
    from bellm_search.dedup.calibration import SHIPPED, read_calibration
    from bellm_search.encoder.resolve import default_adapter_dir
    from bellm_search.pairs.model import PairModel

    cal = read_calibration(SHIPPED)
    model = PairModel.from_dict(cal["model"])
    assert 0 < model.threshold < 1 and model.cosine_floor <= model.candidate_cosine() <= 1
    assert cal["adapter_sha256"] == cal["encoder"]["adapter_sha256"]
    if (default_adapter_dir() / "adapter_config.json").is_file():
        assert cal["adapter_sha256"] == adapter_sha256(str(default_adapter_dir()))


def test_output_to_a_directory_is_one_line_and_leaves_nothing(tmp_path):
    from bellm_search.errors import BellmError

    coll = make(tmp_path)
    (tmp_path / "outdir").mkdir()
    with pytest.raises(BellmError, match="is a directory"):
        run_dedup(coll, THRESHOLD, k=5, output=tmp_path / "outdir")
    with pytest.raises(BellmError, match="is a directory"):
        run_dedup(coll, THRESHOLD, k=5, report=tmp_path / "outdir")
    assert list((tmp_path / "outdir").iterdir()) == [] and not list(tmp_path.glob(".*tmp*"))


def test_report_html_is_self_contained(tmp_path):
    coll = make(tmp_path)
    run_dedup(coll, THRESHOLD, k=5, report=tmp_path / "r" / "report.html")
    page = (tmp_path / "r" / "report.html").read_text()
    assert page.startswith("<!doctype html>") and page.count("<svg") == 2
    assert not any(tag in page for tag in ("src=", "href=", "<script", "<link", "@import"))  # nothing loaded
    assert "cluster 0" in page and "Earthquake of magnitude 6.1" in page and "threshold 0.900" in page
