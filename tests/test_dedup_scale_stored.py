"""Dedup at scale reads what ingest stored: each document's 5-gram and word hashes (no text is read
or normalised at dedup time), an older collection without word hashes dedups identically and is
migrated on a writable open, and the keep step reads its records in one pass."""
from __future__ import annotations

import lmdb
import numpy as np
import pytest

import bellm_search.pairs.features as features
from bellm_search.collection.core import Collection
from bellm_search.dedup.job import find_clusters
from fakes import FakeEncoder

TEXTS = ["RT @a: Big quake hits Japan", "Big quake hits Japan!", "", "@bob http://t.co/x", "!!!",
         "other news today", "Other news, today."]


def shipped_decision():
    """The shipped pair model (all features, words included) for a collection of fake vectors."""
    from bellm_search.dedup.calibration import SHIPPED, Decision, read_calibration
    from bellm_search.pairs.model import PairModel

    model = PairModel.from_dict(read_calibration(SHIPPED)["model"])
    return Decision(model, model.threshold, "threshold", model.cosine_floor)


def corpus(monkeypatch, n: int = 600, dim: int = 32):
    """Synthetic tweets with planted retweets and paraphrases (the scale benchmark's), plus texts
    that normalise to nothing or have no word."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "scripts"))
    import bench_dedup

    vecs, texts = bench_dedup.synthetic(n, dim, seed=3)
    for r, t in zip(range(0, n, 97), ["@bob http://t.co/x", "!!!", "@amy", "?!"]):
        texts[r], texts[r + 1] = t, t + " "  # two near copies each
        vecs[r + 1] = vecs[r]
    return vecs, texts


def build(path, vecs, texts) -> Collection:
    coll = Collection.create(path, encoder=FakeEncoder(dim=vecs.shape[1]), normalize_social=True)
    coll.ingest(({"id": f"d{i}", "text": t} for i, t in enumerate(texts)), vectors=vecs)
    return coll


def outcome(coll):
    found, _, _ = find_clusters(coll, shipped_decision(), k=10, keep="first")
    c = found.candidates
    return ([m.tolist() for m in found.members], found.keep, c.i.tolist(), c.j.tolist(),
            np.nan_to_num(c.X, nan=-7.0), c.probability)


def same(a, b) -> None:
    assert a[:4] == b[:4]
    np.testing.assert_array_equal(a[4], b[4])
    np.testing.assert_array_equal(a[5], b[5])


def test_stored_sides_equal_the_text_sides_without_normalising(tmp_path, monkeypatch):
    from bellm_search.store import Store

    docs = [{"text": t} for t in TEXTS] + [{}]  # the last one has no text
    with Store(tmp_path / "meta.lmdb", create=True, dim=4) as s:
        with s.writer() as w:
            for i, doc in enumerate(docs):
                w.add_doc(f"s{i}", doc, vector=np.ones(4, np.float32), **features.record_hash_bytes(doc))
        want = [features.doc_side(d.get("text")) for d in docs]
        monkeypatch.setattr(features, "normalize_text", lambda *a, **k: pytest.fail("a text was normalised"))
        got = features.stored_sides(s, range(len(docs)))
    assert [g is None for g in got] == [w is None for w in want] == [False] * len(TEXTS) + [True]
    for g, w in zip(got, want):
        if w is not None:
            np.testing.assert_array_equal(g.shingles, w.shingles)
            np.testing.assert_array_equal(g.words, w.words)


def test_dedup_reads_no_text_and_no_record_per_pair(tmp_path, monkeypatch):
    """The features come from the stored hashes: nothing is normalised at dedup time, and records
    are read in one pass for the keep step (the blank-text check reads only those documents)."""
    vecs, texts = corpus(monkeypatch)
    coll = build(tmp_path / "c", vecs, texts)
    want = outcome(coll)
    assert len(want[2]) > 100 and 0 < len(want[0])
    import bellm_search.pairs.normalize as normalize

    monkeypatch.setattr(features, "normalize_text", lambda *a, **k: pytest.fail("a text was normalised"))
    monkeypatch.setattr(normalize, "normalize_text", lambda *a, **k: pytest.fail("a text was normalised"))
    calls = []
    get_docs = coll.store.get_docs
    monkeypatch.setattr(coll.store, "get_docs", lambda ids: calls.append(list(ids)) or get_docs(ids))
    monkeypatch.setattr(coll.store, "get_doc", lambda i: pytest.fail("one record read"))
    same(outcome(coll), want)
    blank = sum(t.strip() in ("", "@bob http://t.co/x", "@amy") for t in texts)
    assert len(calls) <= 2 and sum(map(len, calls)) <= blank + sum(len(m) for m in want[0])


def _drop_words(coll_path) -> None:
    """Make the collection look like one written before word hashes were stored."""
    env = lmdb.open(str(coll_path / "meta.lmdb"), max_dbs=16)
    with env.begin(write=True) as txn:
        txn.drop(env.open_db(b"words", txn=txn), delete=True)
    env.close()


def test_an_old_collection_dedups_identically_and_is_migrated(tmp_path, monkeypatch):
    vecs, texts = corpus(monkeypatch)
    coll = build(tmp_path / "c", vecs, texts)
    want = outcome(coll)
    stored = coll.store.shingles(range(len(texts)), db_name="words")
    coll.close()
    _drop_words(tmp_path / "c")
    with Collection.open(tmp_path / "c", readonly=True) as old:
        assert old.store._dbs.get("words") is None
        same(outcome(old), want)  # word hashes computed from the records
    with Collection.open(tmp_path / "c") as migrated:  # a writable open stores them
        with migrated.store._txn() as txn:
            assert txn.stat(migrated.store._dbs["words"])["entries"] == len(texts)
        for a, b in zip(migrated.store.shingles(range(len(texts)), db_name="words"), stored):
            np.testing.assert_array_equal(a, b)
        same(outcome(migrated), want)


def test_overlaps_in_chunks_over_threads_equal_one_sort(monkeypatch):
    import bellm_search.pairs.shingles as sh

    rng = np.random.default_rng(7)
    pool = rng.integers(0, 2**63, 300, dtype=np.int64).astype(np.uint64)
    docs = [np.unique(rng.choice(pool, rng.integers(0, 40))) for _ in range(200)]
    a = [docs[i] for i in rng.integers(0, 200, 2500)]
    b = [docs[i] for i in rng.integers(0, 200, 2500)]
    whole = sh.batch_overlaps(a, b)
    want = np.array([len(np.intersect1d(x, y)) for x, y in zip(a, b)])
    np.testing.assert_array_equal(whole[0], want)
    monkeypatch.setattr(sh, "OVERLAP_CHUNK", 7)  # many chunks, the last one short
    for got, exp in zip(sh.batch_overlaps(a, b), whole):
        np.testing.assert_array_equal(got, exp)


@pytest.mark.parametrize("rows", [0, 7])
def test_a_block_multiplies_its_own_rows_once_and_visitors_against_them_only(rows):
    """Each pair of a block's own vectors once (upper triangle), each visitor against every own
    vector, never two visitors; in chunks of any size."""
    import bellm_search.dedup.candidates as cand

    rng = np.random.default_rng(8)
    x = rng.standard_normal((80, 16)).astype(np.float32)
    members = np.sort(rng.choice(80, 50, replace=False))
    own, visitors = members[:30], members[30:]
    block = cand.Block(np.concatenate([own, visitors]), len(own))
    i, j, s = cand._block_pairs(block, x, -np.inf, k=10**6, rows=rows)
    got = [tuple(sorted(p)) for p in zip(i.tolist(), j.tolist())]
    want = {(a, b) for a in own.tolist() for b in own.tolist() if a < b}
    want |= {tuple(sorted((v, o))) for v in visitors.tolist() for o in own.tolist()}
    assert len(got) == len(set(got)) == len(want) and set(got) == want
    np.testing.assert_allclose(s, np.einsum("ij,ij->i", x[i], x[j]), rtol=1e-5, atol=1e-5)


def test_a_promoted_copy_keeps_its_stored_hashes(tmp_path):
    """Deleting a first copy re-adds its earliest exact copy under a new id: its 5-gram and word
    hashes go with it (read without computing them)."""
    coll = Collection.create(tmp_path / "c", encoder=FakeEncoder(), normalize_social=True)
    coll.ingest([{"id": "a", "text": "Big sale today!"}, {"id": "b", "text": "RT @shop: big sale today!"},
                 {"id": "z", "text": "something else"}])
    coll.delete(["a"])
    new = coll.store.lookup_key("b")
    want = features.record_hash_bytes(coll.store.get_doc(new))
    assert new == 3 and want["words"]
    for name in ("shingles", "words"):
        assert coll.store.shingles([new], db_name=name)[0].tobytes() == want[name]
    coll.close()
