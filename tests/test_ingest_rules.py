"""What ingest accepts and how it says what it did (issue 18 items 5, 8, 9, 10; issue 16 item 3):
empty texts, bad ids, repeated ids, deleted ids, an invalid line after the first chunk, exact copies
in filtered search, shingle hashes stored with each record."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fakes import FakeEncoder  # noqa: E402

from bellm_search.collection.core import Collection  # noqa: E402
from bellm_search.corpus import CorpusOptions, ReadStats, read_corpus  # noqa: E402
from bellm_search.errors import CorpusError  # noqa: E402


@pytest.fixture
def coll(tmp_path):
    with Collection.create(tmp_path / "C", encoder=FakeEncoder()) as c:
        yield c


def jsonl(tmp_path: Path, rows: list, name: str = "c.jsonl") -> str:
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def as_cli(path: str, **options) -> tuple:
    """The records the CLI's ingest passes to the collection, and its read counters."""
    stats = ReadStats()
    return read_corpus(path, CorpusOptions(documents=True, **options), stats), stats


# ----------------------------------------------------------------------------- item 5: empty texts

def test_blank_txt_lines_are_no_documents(coll, tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("a\n\nb\n   \n", encoding="utf-8")  # `printf 'a\n\nb\n'` stored an empty document
    records, read = as_cli(str(path))
    stats = coll.ingest(records)
    assert stats.added == 2 and read.blank == 2 and coll.store.count() == 2
    assert sorted(d["text"] for _, d in coll.store.iter_docs()) == ["a", "b"]


@pytest.mark.parametrize("bad, problem", [
    ({"id": "e", "text": ""}, "empty text"),
    ({"id": "w", "text": " \t\u3000"}, "empty text"),
    ({"id": "n", "text": "a\u0000b"}, "NUL character in text"),
    ({"id": "x\ny", "text": "fine"}, "line break or NUL"),
    ({"id": "x\u0000y", "text": "fine"}, "line break or NUL"),
])
def test_api_records_follow_the_corpus_rule(coll, bad, problem):
    """POST /documents hands dicts to the same ingest: one rule, checked before anything is stored."""
    with pytest.raises(CorpusError, match=f"<api>:2: .*{problem}"):
        coll.ingest([{"id": "ok", "text": "fine text"}, bad])
    assert coll.store.count() == 0


def test_cli_ingest_skips_and_counts_empty_texts(coll, tmp_path):
    path = jsonl(tmp_path, [{"id": "a", "text": "a post"}, {"id": "b", "text": "  "}, {"id": "c", "text": "more"}])
    records, _ = as_cli(path)
    with pytest.raises(CorpusError, match=r"c.jsonl:2: empty text"):
        coll.ingest(records)
    records, read = as_cli(path, skip_invalid=True)
    coll.ingest(records)
    assert read.invalid == 1 and coll.store.count() == 2


# ----------------------------------------------------------------------------- item 9: a late invalid line

def test_an_invalid_line_after_the_first_chunk_says_what_is_stored(coll, tmp_path):
    rows = [{"id": f"d{i}", "text": f"post {i}"} for i in range(1, 2201)]
    rows[2100] = '{"id": "d2101", "text": '  # line 2101: broken JSON
    path = jsonl(tmp_path, rows)
    records, _ = as_cli(path)
    with pytest.raises(CorpusError) as err:
        coll.ingest(records, chunk_size=2048)
    message = str(err.value)
    assert message.startswith(f"{path}:2101: invalid JSON")
    assert "the 2100 records before this line are stored (2100 new)" in message
    assert "re-run" in message and "skipped" in message
    assert coll.store.count() == 2100 and coll.load_index().ntotal == 2100
    rows[2100] = {"id": "d2101", "text": "post 2101"}
    records, _ = as_cli(jsonl(tmp_path, rows))
    stats = coll.ingest(records, chunk_size=2048)  # the re-run resumes
    assert (stats.skipped_known, stats.added, coll.store.count()) == (2100, 100, 2200)


# ----------------------------------------------------------------------------- item 10: ids

def test_a_repeated_id_with_another_text_is_named(coll, tmp_path, caplog):
    path = jsonl(tmp_path, [{"id": "x", "text": "one"}, {"id": "y", "text": "two"}, {"id": "x", "text": "one"},
                            {"id": "z", "text": "three"}, {"id": "x", "text": "other"}, {"id": "y", "text": "again"}])
    records, _ = as_cli(path)
    with caplog.at_level(logging.WARNING):
        stats = coll.ingest(records, chunk_size=2)  # repeats within a chunk and across chunks
    assert stats.repeated_ids == 2 and stats.skipped_known == 1 and stats.added == 3
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"{path}:5 repeats id 'x' of line 1 with a different text: kept the first" in said
    assert f"{path}:6 repeats id 'y' of line 2 with a different text: kept the first" in said
    assert coll.store.get_doc(coll.store.lookup_key("x"))["text"] == "one"


def test_a_deleted_id_is_reported_as_deleted_earlier(coll):
    coll.ingest([{"id": "a", "text": "first"}, {"id": "b", "text": "second"}])
    coll.delete(["a"])
    stats = coll.ingest([{"id": "a", "text": "first"}, {"id": "b", "text": "second"}])
    assert (stats.deleted_earlier, stats.skipped_known, stats.added) == (1, 1, 0)
    assert stats.to_dict()["deleted_earlier"] == 1


# ----------------------------------------------------------------------------- item 8: exact copies in search

GOLDFISH = "Goldfish is 14 years old. Is that normal??"


def test_filtered_search_sees_exact_copies_with_their_own_metadata(coll):
    coll.ingest([{"id": "p0001", "text": GOLDFISH, "user": "@user_3"},
                 {"id": "other", "text": "a different post", "user": "@user_16"},
                 {"id": "p0052", "text": GOLDFISH, "user": "@user_16"},
                 {"id": "p0099", "text": f"  {GOLDFISH} ", "user": "@user_3"}])
    assert coll.store.num_vectors() == 2  # the copies are stored without a vector
    hits = coll.query(GOLDFISH, k=5, where={"user": "@user_16"})
    assert [h.id for h in hits][:1] == ["p0052"]  # was: only "other" (the filter saw p0001's metadata)
    top = coll.query(GOLDFISH, k=1)[0]
    assert (top.id, top.copies) == ("p0001", 2)
    assert top.to_dict()["copies"] == 2
    listed = coll.query(GOLDFISH, k=5, list_copies=True)
    assert [h.id for h in listed[:3]] == ["p0001", "p0052", "p0099"] and {h.copies for h in listed} == {0}
    assert len({round(h.score, 6) for h in listed[:3]}) == 1
    only3 = coll.query(GOLDFISH, k=1, where={"user": "@user_3"})[0]
    assert (only3.id, only3.copies) == ("p0001", 1)
    coll.delete(["p0099"])
    assert coll.query(GOLDFISH, k=1)[0].copies == 1  # a deleted copy is not counted
    coll.delete(["p0001"])  # the first goes: its copy p0052 takes its vector and is found by itself
    top = coll.query(GOLDFISH, k=1)[0]
    assert (top.id, top.copies) == ("p0052", 0)


# ----------------------------------------------------------------------------- issue 16 item 3: shingles

def test_shingles_are_stored_at_ingest_and_migrated_on_a_writable_open(tmp_path):
    import lmdb

    from bellm_search.pairs.shingles import shingle_hashes

    path = tmp_path / "C"
    texts = ["Hello world, a post", "Hello world, a post", "RT @bob: another one", "short"]
    with Collection.create(path, encoder=FakeEncoder()) as c:
        c.ingest([{"id": f"t{i}", "text": t} for i, t in enumerate(texts)])
        ids = c.store.lookup_keys([f"t{i}" for i in range(4)])
        got = c.store.shingles(ids)
    for g, t in zip(got, texts):
        np.testing.assert_array_equal(g, shingle_hashes(t))
    env = lmdb.open(str(path / "meta.lmdb"), max_dbs=16)  # a collection from before: no shingles table
    with env.begin(write=True) as txn:
        txn.drop(env.open_db(b"shingles", txn=txn), delete=True)
    env.close()
    with Collection.open(path, readonly=True) as c:  # read-only: nothing written
        with pytest.raises(Exception, match="no shingles"):
            c.store.shingles([0])
    with Collection.open(path) as c:  # writable: migrated
        for g, t in zip(c.store.shingles(ids), texts):
            np.testing.assert_array_equal(g, shingle_hashes(t))


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    from test_cli import run

    return run(capsys, *args)


def test_cli_blank_lines_and_copies(capsys, tiny_llama, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(f"{GOLDFISH}\n\nsomething else entirely\n  \n{GOLDFISH}\n", encoding="utf-8")
    coll = str(tmp_path / "C")
    code, out, err = run_cli(capsys, "ingest", str(corpus), "-c", coll, "--model", str(tiny_llama), "--adapter", "none",
                             "--json")
    assert code == 0, err
    stats = json.loads(out.strip().splitlines()[-1])
    assert (stats["added"], stats["exact_duplicates"], stats["blank_lines"], stats["documents"]) == (2, 1, 2, 3)
    assert "blank lines 2" in err
    code, out, err = run_cli(capsys, "query", GOLDFISH, "-c", coll, "-k", "1")
    assert code == 0 and out.split()[2] == "1" and "(+1 copies)" in out, out
    code, out, err = run_cli(capsys, "query", GOLDFISH, "-c", coll, "-k", "2", "--list-copies", "--json")
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert [r["id"] for r in rows] == ["1", "5"] and [r["copies"] for r in rows] == [0, 0]
