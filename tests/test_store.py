"""Tests for the LMDB store: round trips, pending view, atomic commits, tombstones, vectors,
map growth and a reader in another process."""
from __future__ import annotations

import hashlib
import multiprocessing as mp
import threading

import numpy as np
import pytest

from bellm_search.errors import CollectionError
from bellm_search.store import Store

DIM = 8


def h(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "meta.lmdb", dim=DIM) as s:
        yield s


def fill(store: Store, n: int, seed: int = 0, every_vec: int = 1) -> np.ndarray:
    """Add n docs (vector on ids divisible by every_vec); return the vectors given."""
    vecs = unit(np.random.default_rng(seed), n)
    with store.writer() as w:
        for i in range(n):
            vec = vecs[i] if i % every_vec == 0 else None
            w.add_doc(f"s{i}", {"text": f"t{i}"}, text_hash=h(f"t{i}"), vector=vec)
    return vecs


def test_records_round_trip_and_ids_in_order(store):
    records = [
        {"text": "naïve café 🚀 — 北京", "meta": {"tags": ["a", "ü"], "n": 1.5, "x": None, "b": True}},
        {"text": "", "meta": {"deep": {"list": [[1, 2], {"k": "v"}]}}, "id": "overwritten"},
        {"text": "plain"},
    ]
    with store.writer() as w:
        ids = [w.add_doc(f"src-{i}", r) for i, r in enumerate(records)]
    assert ids == [0, 1, 2]
    assert store.next_id() == 3 and store.count() == 3 and store.num_vectors() == 0
    for i, r in enumerate(records):
        assert store.get_doc(i) == {**r, "id": f"src-{i}"}
    assert store.get_docs([2, 7, 0]) == [store.get_doc(2), None, store.get_doc(0)]
    with store.writer() as w:
        assert w.add_doc("next", {}) == 3
    assert [i for i, _ in store.iter_docs(batch=2)] == [0, 1, 2, 3]


def test_reopen_keeps_data_and_continues_ids(tmp_path):
    path = tmp_path / "meta.lmdb"
    with Store(path) as s:
        fill(s, 5)
        with s.writer() as w:
            w.set_state("indexed_upto", {"id": 4, "note": "é"})
    with Store(path) as s:
        assert s.dim == DIM and s.count() == 5 and s.num_vectors() == 5
        assert s.get_state("indexed_upto") == {"id": 4, "note": "é"}
        assert s.get_state("missing", 7) == 7
        with s.writer() as w:
            assert w.add_doc("new", {}) == 5


def test_lookups_and_pending_view(store):
    fill(store, 3)
    with store.writer() as w:
        assert w.lookup_key("s1") == 1 and w.lookup_hash(h("t2")) == 2
        new = w.add_doc("fresh", {"text": "t9"}, text_hash=h("t9"))
        assert w.lookup_key("fresh") == new and w.lookup_hash(h("t9")) == new
        dup = w.add_doc("copy", {"text": "t9", "dup_of": "fresh"}, text_hash=h("t9"))
        assert w.lookup_hash(h("t9")) == new  # the first owner keeps the hash
        assert store.lookup_key("fresh") is None and store.lookup_hash(h("t9")) is None
        with pytest.raises(CollectionError, match="already"):
            w.add_doc("fresh", {})
    assert store.lookup_keys(["s0", "nope", "copy", "fresh"]) == [0, None, dup, new]
    assert store.lookup_hash(h("t9")) == new and store.count() == 5
    assert store.lookup_hash(h("unknown")) is None


def test_long_source_ids(store):
    long_a, long_b = "a" * 600, "a" * 599 + "b"
    with store.writer() as w:
        ia, ib = w.add_doc(long_a, {}), w.add_doc(long_b, {})
    assert store.lookup_keys([long_a, long_b]) == [ia, ib]
    assert store.get_doc(ia)["id"] == long_a
    with pytest.raises(CollectionError, match="non-empty"):
        store.lookup_key("")


def test_writer_that_raises_commits_nothing(store):
    fill(store, 2)
    with pytest.raises(RuntimeError):
        with store.writer() as w:
            w.add_doc("x", {"a": 1}, text_hash=h("x"), vector=np.ones(DIM))
            w.delete(0)
            w.set_state("k", 1)
            raise RuntimeError("boom")
    assert store.next_id() == 2 and store.count() == 2 and store.num_vectors() == 2
    assert store.lookup_key("x") is None and store.lookup_hash(h("x")) is None
    assert not store.is_deleted(0) and store.get_state("k") is None
    with store.writer() as w:  # the write lock was released
        assert w.add_doc("x", {}) == 2
    with pytest.raises(CollectionError, match="inside"):
        w.add_doc("late", {})


def test_delete_tombstones(store):
    fill(store, 6, every_vec=2)  # vectors on 0, 2, 4
    with store.writer() as w:
        assert w.delete(2) and w.delete(3)
        assert not w.delete(2) and not w.delete(99) and not w.delete(-1)
        assert w.lookup_hash(h("t2")) is None
        pending = w.add_doc("p", {}, text_hash=h("tp"), vector=np.ones(DIM))
        assert w.delete(pending) and w.lookup_hash(h("tp")) is None
    assert not store.get_doc(2) and store.get_doc(1)["text"] == "t1"
    assert store.is_deleted(2) and store.is_deleted(pending) and not store.is_deleted(0)
    assert store.deleted_ids().tolist() == [2, 3, pending]
    assert store.deleted_ids().dtype == np.int64
    assert store.count() == 4 and store.num_vectors() == 2
    assert store.lookup_key("s2") == 2  # resume: a deleted source id stays known
    assert store.lookup_hash(h("t2")) is None and store.lookup_hash(h("t1")) == 1
    assert [i for i, _ in store.iter_docs()] == [0, 1, 4, 5]
    assert np.concatenate([i for i, _ in store.iter_vectors()]).tolist() == [0, 4]
    every = np.concatenate([i for i, _ in store.iter_vectors(include_deleted=True)])
    assert every.tolist() == [0, 2, 4, pending]
    with store.writer() as w:
        assert not w.delete(2)
        new = w.add_doc("again", {}, text_hash=h("t2"))  # the freed hash gets a new owner
    assert store.lookup_hash(h("t2")) == new


def test_vectors_fp16_precision_and_missing(store):
    vecs = fill(store, 10, every_vec=3)  # vectors on 0, 3, 6, 9
    got = store.get_vectors(np.array([9, 0, 6]))
    assert got.dtype == np.float32 and got.shape == (3, DIM)
    np.testing.assert_allclose(got, vecs[[9, 0, 6]], atol=1e-3)
    assert not np.array_equal(got, vecs[[9, 0, 6]])  # really went through fp16
    assert store.get_vectors([]).shape == (0, DIM)
    with pytest.raises(CollectionError, match="id 1"):
        store.get_vectors([0, 1])
    with pytest.raises(CollectionError, match="id 50"):
        store.get_vectors([50])


def test_iter_vectors_ranges_and_batches(store):
    vecs = fill(store, 23, every_vec=2)  # vectors on even ids
    batches = list(store.iter_vectors(batch=5))
    assert [len(i) for i, _ in batches] == [5, 5, 2]
    ids = np.concatenate([i for i, _ in batches])
    assert ids.tolist() == list(range(0, 23, 2)) and ids.dtype == np.int64
    np.testing.assert_allclose(np.concatenate([v for _, v in batches]), vecs[ids], atol=1e-3)
    ranged = list(store.iter_vectors(start=3, stop=13, batch=2))
    assert [i.tolist() for i, _ in ranged] == [[4, 6], [8, 10], [12]]
    assert all(v.shape == (len(i), DIM) and v.dtype == np.float32 for i, v in ranged)
    assert list(store.iter_vectors(start=30)) == [] and list(store.iter_vectors(stop=0)) == []


def test_dim_checks(tmp_path):
    path = tmp_path / "meta.lmdb"
    with Store(path) as s:
        assert s.dim is None
        with s.writer() as w:
            w.add_doc("a", {}, vector=np.zeros(4))
        assert s.dim == 4
        with pytest.raises(CollectionError, match=r"shape \(5,\)"):
            with s.writer() as w:
                w.add_doc("b", {}, vector=np.zeros(5))
        with pytest.raises(CollectionError, match="NaN"):
            with s.writer() as w:
                w.add_doc("b", {}, vector=np.array([0, 1, np.nan, 0]))
        with pytest.raises(CollectionError, match="fp16"):
            with s.writer() as w:
                w.add_doc("b", {}, vector=np.array([0, 1e6, 0, 0]))
        assert s.count() == 1
    with pytest.raises(CollectionError, match="4-d"):
        Store(path, dim=8)
    with pytest.raises(CollectionError, match="4-d"):
        Store(path, readonly=True, dim=8)
    with Store(tmp_path / "other", dim=3) as s:
        assert s.dim == 3


def test_readonly_missing_store_and_readonly_writes(tmp_path):
    with pytest.raises(CollectionError, match="no store"):
        Store(tmp_path / "absent", readonly=True)
    assert not (tmp_path / "absent").exists()
    with Store(tmp_path / "db") as s:
        fill(s, 2)
    with Store(tmp_path / "db", readonly=True) as s:
        assert s.count() == 2
        with pytest.raises(CollectionError, match="readonly"):
            s.writer()


def test_state_keys_managed_by_store_are_protected(store):
    with store.writer() as w, pytest.raises(ValueError, match="next_id"):
        w.set_state("next_id", 0)


def test_map_growth_from_tiny_map(tmp_path):
    path = tmp_path / "meta.lmdb"
    rng = np.random.default_rng(1)
    vecs = unit(rng, 3000, dim=64)
    texts = ["x" * int(n) for n in rng.integers(50, 400, 3000)]
    with Store(path, map_size=64 << 10) as s:
        with s.writer() as w:  # one block far larger than the map
            for i in range(2000):
                w.add_doc(f"s{i}", {"text": texts[i]}, text_hash=h(texts[i] + str(i)), vector=vecs[i])
        for lo in range(2000, 3000, 250):  # more blocks growing it again
            with s.writer() as w:
                for i in range(lo, lo + 250):
                    w.add_doc(f"s{i}", {"text": texts[i]}, vector=vecs[i])
        assert s.get_state("map_size") > 64 << 10
    with Store(path, readonly=True, map_size=64 << 10) as s:
        assert s.count() == 3000 and s.num_vectors() == 3000
        assert [d["text"] for _, d in s.iter_docs()] == texts
        got = np.concatenate([v for _, v in s.iter_vectors(batch=1000)])
        np.testing.assert_allclose(got, vecs, atol=1e-3)
        assert s.lookup_hash(h(texts[7] + "7")) == 7


def test_reads_from_threads_while_map_grows(tmp_path):
    errors: list[BaseException] = []
    stop = threading.Event()
    with Store(tmp_path / "meta.lmdb", map_size=64 << 10) as s:
        fill(s, 10)

        def read() -> None:
            try:
                while not stop.is_set():
                    assert s.get_vectors(np.arange(10)).shape == (10, DIM)
                    assert s.get_doc(3)["text"] == "t3"
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=read) for _ in range(3)]
        for t in threads:
            t.start()
        for b in range(4):
            with s.writer() as w:
                for i in range(400):
                    w.add_doc(f"b{b}-{i}", {"text": "y" * 300})
        stop.set()
        for t in threads:
            t.join()
        assert not errors and s.count() == 1610


def _reader(path: str, requests, replies) -> None:
    """Child process: open readonly once, answer (count, doc 0 text, vector rows) per request."""
    with Store(path, readonly=True, map_size=64 << 10) as s:
        while (last := requests.get()) is not None:
            ids, vecs = zip(*s.iter_vectors()) if s.num_vectors() else ((), ())
            replies.put((s.count(), s.get_doc(last)["text"], sum(map(len, ids))))


def test_reader_in_another_process_sees_commits(tmp_path):
    path = tmp_path / "meta.lmdb"
    ctx = mp.get_context("spawn")
    requests, replies = ctx.Queue(), ctx.Queue()
    with Store(path, dim=DIM, map_size=64 << 10) as s:
        fill(s, 3)
        proc = ctx.Process(target=_reader, args=(str(path), requests, replies), daemon=True)
        proc.start()
        try:
            requests.put(2)
            assert replies.get(timeout=20) == (3, "t2", 3)
            rng = np.random.default_rng(2)
            with s.writer() as w:  # grows the map past the reader's mapping
                for i in range(3, 2003):
                    w.add_doc(f"s{i}", {"text": "z" * 200}, vector=unit(rng, 1)[0])
            requests.put(2002)
            assert replies.get(timeout=20) == (2003, "z" * 200, 2003)
        finally:
            requests.put(None)
            proc.join(timeout=30)
    assert proc.exitcode == 0


def test_dup_links_and_live_ids(store):
    fill(store, 4)
    with store.writer() as w:
        a = w.add_doc("d1", {"text": "t0 copy", "dup_of": 0, "dup_score": 1.0}, dup_of=(0, 1.0))
        b = w.add_doc("d2", {"text": "t1 near", "dup_of": 1, "dup_score": 0.93}, dup_of=(1, 0.93))
    dup, first, score = store.dup_links()
    assert dup.tolist() == [a, b] and first.tolist() == [0, 1]
    assert score.tolist() == pytest.approx([1.0, 0.93])
    assert store.live_ids().tolist() == [0, 1, 2, 3, a, b]
    assert store.live_ids(with_vectors=True).tolist() == [0, 1, 2, 3]
    with store.writer() as w:
        w.delete(a)
        w.delete(2)
    assert store.dup_links()[0].tolist() == [b]  # a deleted duplicate drops its link
    assert store.live_ids().tolist() == [0, 1, 3, b]
    assert store.live_ids(with_vectors=True).tolist() == [0, 1, 3]


def test_stores_without_the_link_table_are_migrated(tmp_path):
    import lmdb

    path = tmp_path / "meta.lmdb"
    with Store(path, dim=DIM) as s:
        fill(s, 3)
        with s.writer() as w:
            dup = w.add_doc("d", {"text": "t0!", "dup_of": 0, "dup_score": 0.95}, dup_of=(0, 0.95))
    env = lmdb.open(str(path), max_dbs=12)  # an older store: no dupof table, no migration flag
    with env.begin(write=True) as txn:
        txn.drop(env.open_db(b"dupof", txn=txn), delete=True)
        txn.delete(b"dupof_indexed", db=env.open_db(b"state", txn=txn))
    env.close()
    with Store(path, readonly=True) as s:  # read-only: read from the records
        assert s.dup_links()[0].tolist() == [dup]
    with Store(path) as s:  # writable: back-filled once
        assert s.get_state("dupof_indexed") == 1
        dup_ids, first, score = s.dup_links()
        assert dup_ids.tolist() == [dup] and first.tolist() == [0] and score.tolist() == pytest.approx([0.95])
