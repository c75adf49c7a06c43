"""Collections: ingest/query/delete/reindex, resume, crash safety, concurrency (fake encoder)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bellm_search.collection.core import Collection
from bellm_search.collection.search import parse_where
from bellm_search.errors import CollectionError
from bellm_search.config import IndexConfig
from bellm_search.collection.index_state import IndexState
from fakes import FakeEncoder

HERE = Path(__file__).parent


def docs(n: int, prefix: str = "d"):
    return [{"id": f"{prefix}{i}", "text": f"post {prefix} {i}", "lang": "en" if i % 2 else "fr", "likes": i}
            for i in range(n)]


def make(tmp_path, n=50, **kw):
    enc = FakeEncoder()
    coll = Collection.create(tmp_path / "c", encoder=enc, **kw)
    coll.ingest(docs(n))
    return coll, enc


def test_ingest_query_round_trip(tmp_path):
    coll, _ = make(tmp_path)
    hits = coll.query("post d 7", k=3)
    assert hits[0].id == "d7" and hits[0].score == pytest.approx(1.0, abs=1e-3)
    assert hits[0].metadata == {"lang": "en", "likes": 7}
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    batch = coll.query(["post d 3", "post d 4"], k=1)
    assert [b[0].id for b in batch] == ["d3", "d4"]


def test_where_filter(tmp_path):
    coll, _ = make(tmp_path)
    hits = coll.query("post d 7", k=5, where=parse_where(["lang=fr"]))
    assert len(hits) == 5 and all(h.metadata["lang"] == "fr" for h in hits)
    assert coll.query("post d 7", k=5, where={"likes": "8"})[0].id == "d8"
    with pytest.raises(CollectionError):
        parse_where(["nolang"])


def test_reingest_is_a_noop_and_resumes(tmp_path):
    coll, enc = make(tmp_path)
    calls = enc.calls
    stats = coll.ingest(docs(60))
    assert (stats.added, stats.skipped_known) == (10, 50)
    assert coll.store.count() == 60 and coll.index.ntotal == 60
    assert enc.calls == calls + 1  # only the 10 new texts were encoded


def test_exact_duplicates_are_not_encoded(tmp_path):
    enc = FakeEncoder()
    coll = Collection.create(tmp_path / "c", encoder=enc, normalize_social=True)
    stats = coll.ingest([{"id": "a", "text": "Big sale today! http://t.co/1"},
                         {"id": "b", "text": "RT @shop: big sale today!!! http://t.co/2"},
                         {"id": "c", "text": "something else"},
                         {"id": "d", "text": "Big  SALE today!"}])
    assert (stats.added, stats.exact_duplicates) == (2, 2)
    assert coll.index.ntotal == 2 and coll.store.count() == 4
    assert coll.store.get_doc(coll.store.lookup_key("b"))["dup_of"] == coll.store.lookup_key("a")


def test_delete_never_comes_back(tmp_path):
    coll, _ = make(tmp_path)
    deleted, unknown = coll.delete(["d7", "nope"])
    assert (deleted, unknown) == (1, ["nope"])
    assert all(h.id != "d7" for h in coll.query("post d 7", k=50))
    coll.close()
    reopened = Collection.open(tmp_path / "c", encoder=FakeEncoder())
    assert all(h.id != "d7" for h in reopened.query("post d 7", k=50))
    assert reopened.store.count() == 49 and reopened.index.ntotal == 49
    reopened.ingest([{"id": "d7", "text": "post d 7"}])  # a deleted id stays deleted on re-ingest
    assert all(h.id != "d7" for h in reopened.query("post d 7", k=50))


@pytest.mark.parametrize("together", [False, True])
def test_deleting_a_first_copy_promotes_its_earliest_exact_copy(tmp_path, together):
    from bellm_search.dedup.job import run_dedup

    enc = FakeEncoder()
    coll = Collection.create(tmp_path / "c", encoder=enc, normalize_social=True)
    coll.ingest([{"id": "a", "text": "Big sale today!", "shop": "x"},
                 {"id": "b", "text": "RT @shop: big sale today!", "shop": "y"},
                 {"id": "c", "text": "big sale TODAY!"},
                 {"id": "z", "text": "something else"}])
    xq = enc.encode(["Big sale today!"])
    calls = enc.calls
    assert coll.delete(["a", "b"] if together else ["a"]) == ((2, []) if together else (1, []))
    first = "c" if together else "b"
    hit = coll.query_vectors(xq, k=1)[0][0]
    assert hit.id == first and hit.score == pytest.approx(1.0, abs=1e-3)  # still found
    assert hit.metadata == ({} if together else {"shop": "y"}) and enc.calls == calls  # nothing re-encoded
    assert coll.index.ntotal == 2 and coll.store.count() == (2 if together else 3)
    assert coll.check()["problems"] == []
    if not together:  # the other copy now points at the promoted one, which took a new int id but
        # keeps its arrival order: --keep first still keeps it, not the copy that came after it
        assert coll.store.get_doc(coll.store.lookup_key("c"))["dup_of"] == coll.store.lookup_key("b")
        assert coll.store.lookup_key("b") > coll.store.lookup_key("c")
        res = run_dedup(coll, 0.99, output=tmp_path / "out.jsonl")
        assert (res.clusters, res.removed) == (1, 1)
        assert '"keep": "b", "members": ["c", "b"]' in (tmp_path / "out.jsonl").read_text()
    coll.ingest([{"id": "x", "text": "BIG sale today!"}])  # the text hash moved with the vector
    assert coll.store.get_doc(coll.store.lookup_key("x"))["dup_of"] == coll.store.lookup_key(first)
    coll.close()
    with Collection.open(tmp_path / "c", encoder=FakeEncoder()) as again:  # durable, index consistent
        assert again.check()["problems"] == [] and again.load_index().ntotal == 2
        assert again.query_vectors(xq, k=1)[0][0].id == first


def test_reindex_ivfpq_from_stored_vectors_without_encoding(tmp_path):
    coll, enc = make(tmp_path, n=2000)
    calls = enc.calls
    desc = coll.reindex(factory="IVF16,PQ4")
    assert desc["ntotal"] == 2000 and "IVF16" in desc["factory"]
    assert enc.calls == calls
    hits = coll.query("post d 1234", k=5, nprobe=16)
    assert hits[0].id == "d1234" and hits[0].score == pytest.approx(1.0, abs=1e-3)  # exact re-rank
    coll.ingest(docs(2100)[2000:])  # incremental add to the trained index
    assert coll.index.ntotal == 2100 and coll.query("post d 2050", k=1, nprobe=16)[0].id == "d2050"
    coll.close()
    again = Collection.open(tmp_path / "c", encoder=FakeEncoder())
    assert again.load_index().ntotal == 2100 and "IVF16" in again.info()["index"]["factory"]


def test_automatic_growth_from_flat_to_ivfpq(tmp_path):
    enc = FakeEncoder()
    coll = Collection.create(tmp_path / "c", encoder=enc, index_config=IndexConfig(flat_max=1000))
    coll.ingest(docs(900))
    assert coll.info()["index"]["type"] == "Flat"
    coll.ingest(docs(2500))
    info = coll.info()
    assert "IVF" in info["index"]["factory"] and info["index"]["ntotal"] == 2500
    assert info["bytes_per_vector"] < 4 * enc.dim


def test_growth_happens_during_a_long_ingest_so_memory_holds_one_bounded_flat(tmp_path, monkeypatch):
    coll = Collection.create(tmp_path / "c", encoder=FakeEncoder(), index_config=IndexConfig(flat_max=1000))
    built_at = []
    build = IndexState.build
    monkeypatch.setattr(IndexState, "build", lambda self, **kw: built_at.append(self.store.num_vectors()) or build(self, **kw))
    coll.ingest(docs(5000), chunk_size=500)
    assert built_at[-1] == 1500  # the first chunk past flat_max, not the end of the ingest
    assert "IVF" in coll.index.factory and coll.index.ntotal == 5000 and coll.check()["problems"] == []


def test_other_encoder_refused(tmp_path):
    coll, _ = make(tmp_path)
    coll.close()
    with pytest.raises(CollectionError, match="different encoder"):
        Collection.open(tmp_path / "c", encoder=FakeEncoder(name="other-model"))


def test_open_missing_or_corrupt(tmp_path):
    with pytest.raises(CollectionError, match="not a collection"):
        Collection.open(tmp_path / "none")
    coll, _ = make(tmp_path)
    coll.close()
    (tmp_path / "c" / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(CollectionError, match="check --repair"):
        Collection.open(tmp_path / "c", encoder=FakeEncoder()).load_index()


def test_index_catches_up_after_crash_between_commit_and_save(tmp_path):
    coll, _ = make(tmp_path, n=20)
    # simulate: records committed to LMDB but the index never saved (process died)
    from bellm_search.collection.ingest import IngestStats, ingest_chunk, to_record

    ingest_chunk(coll, [to_record(d, i) for i, d in enumerate(docs(30)[20:])], IngestStats(), None)
    coll.close()
    again = Collection.open(tmp_path / "c", encoder=FakeEncoder())
    assert again.load_index().ntotal == 30 and again.query("post d 25", k=1)[0].id == "d25"


def _run_ingest(path, n, chunk, delay):
    return subprocess.Popen([sys.executable, str(HERE / "crash_ingest.py"), str(path), str(n), str(chunk), str(delay)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _stored(path) -> int:
    from bellm_search.store import Store

    try:
        with Store(path / "meta.lmdb", readonly=True) as s:
            return s.count()
    except Exception:
        return 0


@pytest.mark.parametrize("kill_after", [1, 3])
def test_sigkill_mid_ingest_then_resume(tmp_path, kill_after):
    path, n, chunk = tmp_path / "c", 400, 50
    proc = _run_ingest(path, n, chunk, 0.15)
    deadline = time.time() + 60
    while _stored(path) < kill_after * chunk and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    mid = _stored(path)
    assert 0 < mid < n
    proc = _run_ingest(path, n, chunk, 0.0)
    assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()
    coll = Collection.open(path, encoder=FakeEncoder())
    ids = [doc["id"] for _, doc in coll.store.iter_docs()]
    assert len(ids) == n == len(set(ids)) == coll.store.count()
    assert coll.load_index().ntotal == n
    _, I = coll.index.search(coll.store.get_vectors(np.arange(n)), 1)
    assert sorted(I[:, 0].tolist()) == list(range(n))  # every stored vector in the index exactly once


def test_query_while_another_process_ingests(tmp_path):
    path = tmp_path / "c"
    Collection.create(path, encoder=FakeEncoder()).close()
    proc = _run_ingest(path, 600, 50, 0.05)
    seen = []
    try:
        while proc.poll() is None:
            with Collection.open(path, readonly=True, encoder=FakeEncoder()) as coll:
                hits = coll.query("synthetic post number 3", k=5)
                seen.append(coll.store.count())
                assert all(coll.store.get_doc(coll.store.lookup_key(h.id)) for h in hits)
            time.sleep(0.05)
    finally:
        proc.wait()
    assert proc.returncode == 0, proc.stderr.read().decode()
    assert len(seen) >= 2 and seen == sorted(seen)
    with Collection.open(path, readonly=True, encoder=FakeEncoder()) as coll:
        assert coll.query("synthetic post number 3", k=1)[0].id == "doc-3"


def test_one_writer_at_a_time_no_wait_fails_and_wait_waits(tmp_path):
    path = tmp_path / "c"
    Collection.create(path, encoder=FakeEncoder()).close()
    proc = _run_ingest(path, 300, 50, 0.05)
    try:
        with Collection.open(path, encoder=FakeEncoder()) as coll:
            while coll.store.count() == 0 and proc.poll() is None:  # the ingest holds the lock now
                time.sleep(0.02)
            with pytest.raises(CollectionError, match="being written by another process"):
                coll.delete(["doc-0"], wait=False)
            assert proc.poll() is None  # the writer was still running when we were refused
            assert coll.delete(["doc-0"]) == (1, [])  # waits for the whole ingest, then deletes
            assert coll.store.count() == 299
    finally:
        proc.wait()
    assert proc.returncode == 0, proc.stderr.read().decode()
    with Collection.open(path, readonly=True, encoder=FakeEncoder()) as coll:
        assert coll.store.count() == 299 and coll.check()["problems"] == []


def test_check_detects_corrupt_index_and_repair_fixes_it(tmp_path):
    coll, _ = make(tmp_path)
    assert coll.check()["ok"]
    coll.close()
    index_file = tmp_path / "c" / "index.faiss"
    index_file.write_bytes(index_file.read_bytes()[:100])  # truncated
    coll = Collection.open(tmp_path / "c", encoder=FakeEncoder())
    report = coll.check()
    assert not report["ok"] and "checksum" in report["problems"][0]
    fixed = coll.check(repair=True)
    assert fixed["repaired"] and fixed["ok"]
    coll.close()
    again = Collection.open(tmp_path / "c", encoder=FakeEncoder())
    assert again.check()["ok"] and again.query("post d 3", k=1)[0].id == "d3"


# ----------------------------------------------------------------------------- create / open / manifest
def test_create_from_a_config_and_dim_builds_no_encoder(tmp_path):
    from bellm_search.config import EncoderConfig

    with Collection.create(tmp_path / "c", EncoderConfig(model="fake-model"), 16) as coll:
        assert coll._encoder is None and coll.dim == 16
        coll.ingest(docs(5), vectors=FakeEncoder().encode([d["text"] for d in docs(5)]))
        assert coll._encoder is None and coll.store.count() == 5
    with Collection.open(tmp_path / "c", encoder=FakeEncoder()) as coll:
        assert coll.query("post d 3", k=1)[0].id == "d3"


def test_the_index_is_loaded_explicitly(tmp_path):
    coll, _ = make(tmp_path)
    coll.close()
    with Collection.open(tmp_path / "c", encoder=FakeEncoder()) as again:
        with pytest.raises(CollectionError, match="load_index"):
            again.index  # noqa: B018 - reading it does not load it
        assert again.load_index() is again.load_index() is again.index and again.index.ntotal == 50


def test_runtime_options_pass_through_when_identity_options_are_given(tmp_path):
    """13.2.1: `ingest -c C --model M --device cuda:1` ran on the default device."""
    coll, _ = make(tmp_path)
    coll.close()
    runtime = {"device": "cuda:1", "dtype": "float32", "batch_size": 7, "max_batch_tokens": 999}
    for identity in ({"model": "fake-model", "adapter": "none"}, {}):
        with Collection.open(tmp_path / "c", **identity, **runtime) as again:
            config = again.encoder_config
            assert (config.device, config.dtype, config.batch_size, config.max_batch_tokens) == tuple(runtime.values())
    with pytest.raises(CollectionError, match="different encoder"):
        Collection.open(tmp_path / "c", model="other-model", adapter="none", device="cpu")


@pytest.mark.parametrize("field, value", [("normalize_social", "no"), ("normalize_social", 1), ("dim", 16.0),
                                          ("dim", True), ("dim", 0)])
def test_a_manifest_field_of_the_wrong_type_is_refused(tmp_path, field, value):
    import json

    coll, _ = make(tmp_path)
    coll.close()
    file = tmp_path / "c" / "manifest.json"
    file.write_text(json.dumps({**json.loads(file.read_text()), field: value}))
    with pytest.raises(CollectionError, match=f"{field} has an invalid value"):
        Collection.open(tmp_path / "c", encoder=FakeEncoder())


@pytest.mark.parametrize("section, field, value", [("encoder", "max_length", "512"), ("encoder", "pooling", "max"),
                                                   ("index_config", "opq", "false"), ("index", "indexed_upto", -1),
                                                   ("index_config", "nprobe", 2**40)])
def test_a_manifest_section_field_of_the_wrong_type_is_refused(tmp_path, section, field, value):
    import json

    coll, _ = make(tmp_path)
    coll.close()
    file = tmp_path / "c" / "manifest.json"
    data = json.loads(file.read_text())
    data[section][field] = value
    file.write_text(json.dumps(data))
    with pytest.raises(CollectionError, match=rf"{section}\.{field} has an invalid value"):
        Collection.open(tmp_path / "c", encoder=FakeEncoder())


# ----------------------------------------------------------------------------- every index from the stored vectors
def answers(coll, xq) -> list:
    return [[h.to_dict() for h in row] for row in coll.query_vectors(xq, k=10)]


def test_repair_and_rebuild_answer_exactly_as_the_ingest_time_index(tmp_path):
    """13.2.3: the ingest-time index held the encoder's float32 vectors, every rebuild the stored fp16
    ones, so `check --repair` changed query scores. Now every path builds from the stored vectors."""
    coll, enc = make(tmp_path, n=300)
    xq = enc.encode([f"post d {i}" for i in range(0, 300, 7)] + ["something new"])
    before = answers(coll, xq)
    coll.close()
    index_file = tmp_path / "c" / "index.faiss"
    with Collection.open(tmp_path / "c", encoder=FakeEncoder()) as again:
        assert answers(again, xq) == before  # the saved file
        index_file.write_bytes(index_file.read_bytes()[:200])
        assert again.check(repair=True)["repaired"]
        assert answers(again, xq) == before  # repaired
        again.reindex()
        assert answers(again, xq) == before  # rebuilt with the same settings
    with Collection.open(tmp_path / "c", encoder=FakeEncoder()) as again:
        assert answers(again, xq) == before


def test_catch_up_answers_exactly_as_the_ingesting_process(tmp_path):
    from bellm_search.collection.ingest import IngestStats, ingest_chunk, to_record

    coll, enc = make(tmp_path, n=200)
    ingest_chunk(coll, [to_record(d, i) for i, d in enumerate(docs(300)[200:])], IngestStats(), None)
    xq = enc.encode([f"post d {i}" for i in range(0, 300, 7)])
    live = answers(coll, xq)
    coll.close()  # killed before the index save: the next open catches up from the store
    with Collection.open(tmp_path / "c", encoder=FakeEncoder()) as again:
        assert again.load_index().ntotal == 300 and answers(again, xq) == live


@pytest.mark.parametrize("settings, says", [({"factory": "HNSW32"}, "cannot use"), ({"factory": "IDMap,Flat"}, "IDMap"),
                                            ({"m": 7}, "divide"), ({"nlist": 100_000}, "Cannot train")])
def test_reindex_refuses_settings_the_collection_cannot_use_before_writing_anything(tmp_path, settings, says):
    """18.4: `reindex --factory HNSW32` succeeded and broke the next delete; `--m 7` was saved and
    broke a later ingest. Now refused, in one sentence, with every file left as it was."""
    from bellm_search.errors import ConfigError

    coll, _ = make(tmp_path, n=200)
    files = {p.name: p.read_bytes() for p in (tmp_path / "c").iterdir() if p.is_file()}
    with pytest.raises(ConfigError, match=says):
        coll.reindex(**settings)
    assert {p.name: p.read_bytes() for p in (tmp_path / "c").iterdir() if p.is_file()} == files
    assert coll.index_config == IndexConfig()  # not taken up in memory either (a later save would write it)
    assert coll.delete(["d3"]) == (1, []) and coll.check()["ok"]
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["index_config"] == IndexConfig().to_dict()
