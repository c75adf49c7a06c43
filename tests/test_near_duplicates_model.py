"""Near duplicates at ingest and in the server by the calibrated pair model (not by cosine alone).

A toy calibration where a duplicate needs words in common: a paraphrase at cosine 0.92 is *not* a
duplicate (the calibration's pure-cosine threshold, 0.84, would say it is), a retweet at cosine 0.8
*is* (pure cosine would say it is not). The FakeEncoder plants the cosines.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from bellm_search.collection.core import Collection
from bellm_search.dedup.calibration import CalibrationMismatch, decision_for
from bellm_search.errors import ConfigError
from bellm_search.pairs.model import PairModel
from fakes import FakeEncoder, base_vector, near

DIM = 64  # random vectors of distinct posts stay far apart
# P(dup) = sigmoid(10 cos + 20 jaccard5 - 20): words in common matter; pure cosine: >= 0.84
TOY = PairModel(("cosine", "jaccard5"), (10.0, 20.0), -20.0, 0.5, 25.0, -21.0, 0.84, cosine_floor=0.7)
COSINE = TOY.cosine_threshold


def post(i: int) -> str:
    return f"Breaking: storm number {i} hits the coast of town {i}, officials confirm"


def paraphrase(i: int) -> str:
    return f"Town {i} officials say the weather situation changed today (update {i})"


def retweet(i: int) -> str:
    return f"RT @desk{i}: {post(i)} http://t.co/x{i}"


def table() -> dict[str, np.ndarray]:
    """post i: its own vector; paraphrase i at cosine 0.92 to it, retweet i at 0.8."""
    out = {}
    for i in range(4):
        v = base_vector(f"post{i}", DIM)
        out[post(i)] = v
        out[paraphrase(i)] = near(v, 0.92, f"para{i}")
        out[retweet(i)] = near(v, 0.80, f"rt{i}")
    return out


def calibrate(path, enc: dict, model: PairModel = TOY) -> None:
    (path / "calibration.json").write_text(json.dumps(
        {"model": model.to_dict(), "adapter_sha256": enc.get("adapter_sha256"),
         "encoder": {"model": enc["model"], "adapter_sha256": enc.get("adapter_sha256")}}))


def make(tmp_path, calibrated: bool = True, name: str = "c") -> Collection:
    coll = Collection.create(tmp_path / name, encoder=FakeEncoder(table(), dim=DIM))
    if calibrated:
        calibrate(coll.path, coll.manifest["encoder"])
    return coll


def doc_of(coll, sid: str) -> dict:
    return coll.store.get_doc(coll.store.lookup_key(sid))


def first_copy(coll, sid: str) -> str | None:
    doc = doc_of(coll, sid)
    return coll.store.get_doc(doc["dup_of"])["id"] if "dup_of" in doc else None


# ----------------------------------------------------------------------------- ingest
def test_ingest_follows_the_pair_model_where_cosine_alone_would_decide_otherwise(tmp_path):
    originals = [{"id": f"p{i}", "text": post(i)} for i in range(2)]
    new = [{"id": "para0", "text": paraphrase(0)}, {"id": "rt1", "text": retweet(1)}]
    with make(tmp_path) as coll:
        coll.ingest(originals)
        stats = coll.ingest(new, near_model=decision_for)
        assert stats.near_duplicates == 1 and stats.added == 1
        assert first_copy(coll, "para0") is None  # cosine 0.92, few words in common: kept, with its vector
        assert first_copy(coll, "rt1") == "p1"  # cosine 0.80, the same words: a duplicate, no vector
        assert coll.store.num_vectors() == 3
        doc = doc_of(coll, "rt1")
        _, prob = decision_for(coll).text_probabilities(np.array([0.8]), [retweet(1)], [post(1)])
        assert doc["dup_score"] == pytest.approx(float(prob[0]), abs=1e-5) and doc["dup_score"] > 0.99
        assert doc["dup_cosine"] == pytest.approx(0.8, abs=2e-3)
    with make(tmp_path, name="cos") as coll:  # the same documents by cosine: the other way round
        coll.ingest(originals)
        coll.ingest(new, skip_near_duplicates=COSINE)
        assert first_copy(coll, "para0") == "p0" and first_copy(coll, "rt1") is None


def test_ingest_within_one_chunk_and_dedup_sees_the_same_probability(tmp_path):
    """Earlier rows of the same chunk are candidates too; `dedup` re-scores the ingest-time link
    from its stored cosine and finds the probability ingest stored."""
    from bellm_search.dedup.job import find_clusters

    docs = [{"id": "p2", "text": post(2)}, {"id": "para2", "text": paraphrase(2)}, {"id": "rt2", "text": retweet(2)}]
    with make(tmp_path) as coll:
        stats = coll.ingest(docs, near_model=decision_for)
        assert (stats.added, stats.near_duplicates) == (2, 1)
        assert first_copy(coll, "rt2") == "p2" and first_copy(coll, "para2") is None
        found, _, _ = find_clusters(coll, decision_for(coll), k=5)
        rt, p = coll.store.lookup_key("rt2"), coll.store.lookup_key("p2")
        pi, pj, ps = found.pairs
        link = [float(s) for a, b, s in zip(pi, pj, ps) if {int(a), int(b)} == {rt, p}]
        assert link == [pytest.approx(doc_of(coll, "rt2")["dup_score"], abs=1e-5)]
        assert [sorted(coll.store.get_doc(int(i))["id"] for i in m) for m in found.members] == [["p2", "rt2"]]


def edit(i: int) -> str:
    return f"Breaking: storm number {i} hits the coast of town {i} tonight, police confirm"


def test_ingest_links_to_the_most_probable_candidate_not_the_nearest(tmp_path):
    """The retweet is nearest an edited copy (a duplicate too, but less probable) and less near the
    post it copies word for word: the pair model links it to the post, pure cosine to the edit."""
    tab = table()
    v = tab[post(3)]
    tab[edit(3)] = near(v, 0.95, "edit3")
    tab[retweet(3)] = near(tab[edit(3)], 0.97, "rt3-close")
    cos_post, cos_edit = float(tab[retweet(3)] @ v), float(tab[retweet(3)] @ tab[edit(3)])
    assert COSINE <= cos_post < cos_edit
    _, prob = decision_for_toy().text_probabilities(np.array([cos_post, cos_edit]), [retweet(3)] * 2, [post(3), edit(3)])
    assert prob[0] > prob[1] >= TOY.threshold  # both duplicates; the post the more probable
    for name, rule, expected in (("model", {"near_model": decision_for}, "p3"),
                                 ("cos", {"skip_near_duplicates": COSINE}, "edit3")):
        with Collection.create(tmp_path / name, encoder=FakeEncoder(tab, dim=DIM)) as coll:
            calibrate(coll.path, coll.manifest["encoder"])
            coll.ingest([{"id": "p3", "text": post(3)}, {"id": "edit3", "text": edit(3)}])
            coll.ingest([{"id": "rt3", "text": retweet(3)}], **rule)
            assert first_copy(coll, "rt3") == expected, name
            if name == "model":
                assert doc_of(coll, "rt3")["dup_score"] == pytest.approx(float(prob[0]), abs=1e-4)


def decision_for_toy():
    from bellm_search.dedup.calibration import Decision

    return Decision(TOY, TOY.threshold, "collection", TOY.cosine_floor)


def test_ingest_refuses_both_rules_and_a_missing_calibration(tmp_path):
    with make(tmp_path) as coll:
        with pytest.raises(ConfigError, match="not both"):
            coll.ingest([{"id": "x", "text": post(0)}], skip_near_duplicates=0.9, near_model=decision_for)
        assert coll.store.count() == 0
    with make(tmp_path, calibrated=False, name="bare") as coll:
        with pytest.raises(CalibrationMismatch, match="bellm-search label"):
            coll.ingest([{"id": "x", "text": post(0)}], near_model=decision_for)
        assert coll.store.count() == 0


def test_a_near_link_at_cosine_one_is_not_taken_for_an_exact_copy(tmp_path):
    """Two different texts with the same vector: a near duplicate (link score < 1), not an exact copy
    (which `dedup` would not re-score, and search would collapse as a copy)."""
    e1 = np.eye(DIM, dtype=np.float32)[0]
    enc = FakeEncoder({"alpha words here": e1, "other words entirely": e1}, dim=DIM)
    with Collection.create(tmp_path / "c", encoder=enc) as coll:
        stats = coll.ingest([{"id": "a", "text": "alpha words here"}])
        stats = coll.ingest([{"id": "b", "text": "other words entirely"}], skip_near_duplicates=0.99)
        assert stats.near_duplicates == 1 and first_copy(coll, "b") == "a"
        _, _, scores = coll.store.dup_links()
        assert scores.tolist() and (scores < 1.0).all()
        assert doc_of(coll, "b")["dup_score"] < 1.0
        assert coll.query("alpha words here", k=1)[0].copies == 0


def run_cli(capsys, *args: str) -> tuple[int, str]:
    from bellm_search.cli.main import main

    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def test_ingest_command_refuses_both_flags_and_names_how_to_calibrate(tmp_path, capsys):
    corpus = tmp_path / "in.jsonl"
    corpus.write_text(json.dumps({"id": "x", "text": post(0)}) + "\n")
    with make(tmp_path, calibrated=False) as coll:
        path = str(coll.path)
    code, err = run_cli(capsys, "ingest", str(corpus), "-c", path, "--near-duplicates", "--near-duplicate-threshold", "0.9")
    assert code == 1 and "not both" in err, err
    code, err = run_cli(capsys, "ingest", str(corpus), "-c", path, "--near-duplicates")
    assert code == 1 and "--near-duplicates" in err and f"bellm-search label -c {path}" in err, err
    assert "bellm-search calibrate" in err and "--near-duplicate-threshold" in err, err
    with Collection.open(path, readonly=True, encoder=FakeEncoder(dim=DIM)) as coll:
        assert coll.store.count() == 0


# ----------------------------------------------------------------------------- the server
@pytest.fixture
def client(tmp_path):
    from starlette.testclient import TestClient

    from bellm_search.serve.app import ServerSettings, create_app

    def start(calibrated: bool):
        coll = make(tmp_path, calibrated, name=f"srv-{calibrated}")
        coll.ingest([{"id": f"p{i}", "text": post(i)} for i in range(4)])
        opened.append(coll)
        return TestClient(create_app(coll, ServerSettings()), raise_server_exceptions=False)

    opened: list = []
    yield start
    for coll in opened:
        coll.close()


def test_server_near_duplicates_apply_the_pair_model_unless_a_threshold_is_given(client):
    with client(True) as c:
        body = c.post("/near-duplicates", json={"texts": [retweet(0), paraphrase(1)], "k": 4}).json()
        assert body["threshold_source"] == "calibration" and body["threshold"] == TOY.threshold
        rt, para = body["results"]
        assert [h["id"] for h in rt] == ["p0"] and para == []
        assert rt[0]["probability"] > 0.99 and rt[0]["score"] == pytest.approx(0.8, abs=2e-3)
        by_cosine = c.post("/near-duplicates", json={"texts": [retweet(0), paraphrase(1)], "threshold": COSINE}).json()
        assert by_cosine["threshold_source"] == "request"
        assert by_cosine["results"][0] == [] and [h["id"] for h in by_cosine["results"][1]] == ["p1"]
        assert by_cosine["results"][1][0]["probability"] is None
        assert c.post("/query", json={"text": post(0), "k": 1}).json()["results"][0][0].keys() == {
            "id", "score", "text", "metadata", "copies"}  # /query has no probability


def test_server_add_documents_with_the_pair_model(client):
    with client(True) as c:
        docs = [{"id": "rt0", "text": retweet(0)}, {"id": "para1", "text": paraphrase(1)}]
        both = c.post("/documents", json={"documents": docs, "near_duplicates": True, "skip_near_duplicates": 0.9})
        assert both.status_code == 422 and "not both" in both.json()["error"]
        res = c.post("/documents", json={"documents": docs, "near_duplicates": True}).json()
        assert (res["added"], res["near_duplicates"]) == (1, 1)
        found = c.post("/near-duplicates", json={"text": retweet(0), "threshold": 0.99}).json()["results"][0]
        assert [h["id"] for h in found] == []  # rt0 has no vector: stored as p0's duplicate
        assert [h["id"] for h in c.post("/query", json={"text": paraphrase(1), "k": 1}).json()["results"][0]] == ["para1"]


def test_server_without_calibration_asks_for_a_cosine(client):
    with client(False) as c:
        res = c.post("/near-duplicates", json={"text": retweet(0)})
        assert res.status_code == 422 and 'give "threshold"' in res.json()["error"]
        add = c.post("/documents", json={"documents": [{"id": "rt0", "text": retweet(0)}], "near_duplicates": True})
        assert add.status_code == 422 and 'give "skip_near_duplicates"' in add.json()["error"], add.text
        assert "bellm-search calibrate" in add.json()["error"]
        assert c.get("/info").json()["server"]["near_duplicates_calibrated"] is False
        assert c.get("/info").json()["documents"] == 4


def test_ingest_from_embeddings_with_near_duplicates(tmp_path, capsys):
    """`ingest --from-embeddings DIR --near-duplicates`: the shards' vectors, judged by the pair model."""
    shards = pytest.importorskip("bellm_search.distributed.shards")
    pytest.importorskip("pyarrow.parquet")
    with make(tmp_path) as coll:
        coll.ingest([{"id": "p0", "text": post(0)}])
        encoder, path = coll.manifest["encoder"], str(coll.path)
    texts = [paraphrase(0), retweet(0)]
    rows = shards.ShardRows(np.stack([table()[t] for t in texts]), ["para0", "rt0"], texts, ["{}", "{}"],
                            ["in.jsonl"] * 2, np.array([1, 2]))
    shards.write_shard(tmp_path / "emb", 0, rows)
    shards.write_config(tmp_path / "emb", {"encoder": encoder, "dim": DIM, "shards": 1, "rows": 2})
    code, err = run_cli(capsys, "ingest", "--from-embeddings", str(tmp_path / "emb"), "-c", path, "--near-duplicates")
    assert code == 0, err
    with Collection.open(path, readonly=True, encoder=FakeEncoder(dim=DIM)) as coll:
        assert first_copy(coll, "rt0") == "p0" and first_copy(coll, "para0") is None
