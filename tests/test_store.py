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
    with Store(tmp_path / "meta.lmdb", create=True, dim=DIM) as s:
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
    with Store(path, create=True) as s:
        fill(s, 5)
    with Store(path) as s:
        assert s.dim == DIM and s.count() == 5 and s.num_vectors() == 5
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
            raise RuntimeError("boom")
    assert store.next_id() == 2 and store.count() == 2 and store.num_vectors() == 2
    assert store.lookup_key("x") is None and store.lookup_hash(h("x")) is None
    assert store.get_doc(0) is not None and store.deleted_ids().tolist() == []
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
    with Store(path, create=True) as s:
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
    with Store(tmp_path / "other", create=True, dim=3) as s:
        assert s.dim == 3


def test_readonly_missing_store_and_readonly_writes(tmp_path):
    with pytest.raises(CollectionError, match="no store"):
        Store(tmp_path / "absent", readonly=True)
    assert not (tmp_path / "absent").exists()
    with Store(tmp_path / "db", create=True) as s:
        fill(s, 2)
    with Store(tmp_path / "db", readonly=True) as s:
        assert s.count() == 2
        with pytest.raises(CollectionError, match="readonly"):
            s.writer()


def test_map_growth_from_tiny_map(tmp_path):
    path = tmp_path / "meta.lmdb"
    rng = np.random.default_rng(1)
    vecs = unit(rng, 3000, dim=64)
    texts = ["x" * int(n) for n in rng.integers(50, 400, 3000)]
    with Store(path, create=True, map_size=64 << 10) as s:
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
    with Store(tmp_path / "meta.lmdb", create=True, map_size=64 << 10) as s:
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
    with Store(path, create=True, dim=DIM, map_size=64 << 10) as s:
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
    with Store(path, create=True, dim=DIM) as s:
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


# ---------------------------------------------------------------- shingle hashes

def sh(text: str) -> bytes:
    from bellm_search.pairs.shingles import shingle_hashes, to_bytes

    return to_bytes(shingle_hashes(text))


def test_shingles_stored_with_the_record(store):
    from bellm_search.pairs.shingles import shingle_hashes

    with store.writer() as w:
        a = w.add_doc("a", {"text": "hello world"}, shingles=sh("hello world"))
        b = w.add_doc("b", {"text": ""}, shingles=sh(""))
        c = w.add_doc("c", {"text": "x"})  # a caller that passes none
    got = store.shingles([b, a])
    assert got[0].dtype == np.dtype("<u8") and len(got[0]) == 0
    np.testing.assert_array_equal(got[1], shingle_hashes("hello world"))
    with pytest.raises(CollectionError, match=f"id {c}"):
        store.shingles([c])
    assert len(store.shingles([c], compute=lambda doc: sh(doc["text"]))[0]) == 1
    with store.writer() as w:
        w.delete(a)
    np.testing.assert_array_equal(store.shingles([a])[0], shingle_hashes("hello world"))  # kept, as vectors are


def test_old_stores_get_their_shingles_on_a_writable_open(tmp_path):
    import lmdb

    from bellm_search.pairs.shingles import shingle_hashes

    path = tmp_path / "meta.lmdb"
    with Store(path, create=True, dim=DIM) as s:
        fill(s, 7)
        with s.writer() as w:
            w.delete(3)
    env = lmdb.open(str(path), max_dbs=12)  # an older store: no shingles table
    with env.begin(write=True) as txn:
        txn.drop(env.open_db(b"shingles", txn=txn), delete=True)
    env.close()
    with Store(path, readonly=True) as s:  # read-only: no table, the caller computes
        with pytest.raises(CollectionError, match="no shingles"):
            s.shingles([0])
    calls = []

    def compute(doc: dict) -> bytes:
        calls.append(doc["text"])
        if len(calls) == 3:
            raise KeyboardInterrupt  # a crash in the middle of the migration
        return sh(doc["text"])

    with Store(path) as s, pytest.raises(KeyboardInterrupt):
        s.fill_shingles(compute, batch=2)
    with Store(path) as s:  # the first batch was committed; the re-run does the rest
        assert s.fill_shingles(lambda doc: calls.append(doc["text"]) or sh(doc["text"]), batch=2) == 5
        assert calls == ["t0", "t1", "t2", "t2", "t3", "t4", "t5", "t6"]
        assert s.fill_shingles(compute) == 0  # complete: nothing scanned
        for i, got in enumerate(s.shingles(range(7))):
            np.testing.assert_array_equal(got, shingle_hashes(f"t{i}"))


# ---------------------------------------------------------------- duplicate links, reversed

def test_linked_copies_follow_the_store(store):
    fill(store, 3)
    with store.writer() as w:
        c1 = w.add_doc("c1", {}, dup_of=(1, 1.0))
        near = w.add_doc("n", {}, dup_of=(1, 0.97))
        c2 = w.add_doc("c2", {}, dup_of=(1, 1.0))
        c0 = w.add_doc("c0", {}, dup_of=(0, 1.0))
    got = store.linked([1, 0, 2])
    assert [g.tolist() for g in got] == [[c1, c2], [c0], []]
    assert store.linked([1], min_score=0.9)[0].tolist() == [c1, near, c2]
    with store.writer() as w:
        w.delete(c1)
    assert store.linked([1])[0].tolist() == [c2]  # the cache follows the store


# ---------------------------------------------------------------- damaged or missing stores

def test_a_missing_store_is_not_created_on_open(tmp_path):
    with pytest.raises(CollectionError, match="no store .*restore it from a backup, or re-ingest"):
        Store(tmp_path / "gone", create=False)
    assert not (tmp_path / "gone").exists()


OPEN_AND_READ = """
import sys
from bellm_search.errors import CollectionError
from bellm_search.store import Store
try:
    with Store(sys.argv[1], readonly=sys.argv[2] == "ro", create=False) as s:
        print(sum(1 for _ in s.iter_docs()), len(list(s.iter_vectors())))
except CollectionError as exc:
    print("refused:", exc)
"""


@pytest.mark.parametrize("mode", ["ro", "rw"])
def test_a_truncated_store_is_refused_not_a_sigbus(tmp_path, mode):
    """A data file cut short used to be mapped as it was: the first read past its end killed the
    process with SIGBUS. Run in a subprocess, as a SIGBUS would kill pytest."""
    import subprocess
    import sys

    path = tmp_path / "meta.lmdb"
    with Store(path, create=True, dim=64) as s:
        rng = np.random.default_rng(3)
        with s.writer() as w:
            for i in range(3000):
                w.add_doc(f"s{i}", {"text": "x" * 100}, vector=unit(rng, 1, 64)[0])
    data = path / "data.mdb"
    size = data.stat().st_size
    os_truncate = __import__("os").truncate
    os_truncate(data, size // 2 // 4096 * 4096)
    proc = subprocess.run([sys.executable, "-c", OPEN_AND_READ, str(path), mode], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-500:])
    assert proc.stdout.startswith("refused: store") and "is damaged: data.mdb holds" in proc.stdout
    assert "\n" not in proc.stdout.strip()  # one line
    assert data.stat().st_size == size // 2 // 4096 * 4096  # nothing written


# ---------------------------------------------------------------- the read/write lock

def test_read_write_lock_writer_waits_for_readers_and_holds_back_new_ones():
    from bellm_search._sync import ReadWriteLock

    lock, events = ReadWriteLock(), []
    first_in, writer_waiting, release = threading.Event(), threading.Event(), threading.Event()

    def reader(name: str, hold: threading.Event | None) -> None:
        with lock.read():
            events.append(f"{name} in")
            if hold is not None:
                first_in.set()
                hold.wait(5)
            events.append(f"{name} out")

    def writer() -> None:
        writer_waiting.set()
        with lock.write():
            events.append("writer")

    r1 = threading.Thread(target=reader, args=("r1", release))
    r1.start()
    first_in.wait(5)
    w = threading.Thread(target=writer)
    w.start()
    writer_waiting.wait(5)
    while not lock._waiting:  # the writer is queued
        pass
    r2 = threading.Thread(target=reader, args=("r2", None))
    r2.start()
    r2.join(0.2)
    assert r2.is_alive()  # held back behind the waiting writer
    release.set()
    for t in (r1, w, r2):
        t.join(5)
    assert events == ["r1 in", "r1 out", "writer", "r2 in", "r2 out"]
