"""Corpus readers: validation with file:line, skip-and-count, and fuzzing (never a traceback)."""
from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bellm_search.corpus import CorpusOptions, ReadStats, read_corpus
from bellm_search.errors import CorpusError


def write(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_jsonl_records_ids_and_metadata(tmp_path):
    path = write(tmp_path, "c.jsonl", b'\xef\xbb\xbf{"id": 7, "text": "a", "x": {"y": [1]}}\n\n{"text": "b"}\r\n')
    recs = list(read_corpus(path, CorpusOptions()))
    assert [(r.id, r.text, r.meta, r.line) for r in recs] == [("7", "a", {"x": {"y": [1]}}, 1), ("3", "b", {}, 3)]


@pytest.mark.parametrize("line, problem", [
    (b'{"text": 5}', "must be a string"),
    (b'{"body": "x"}', "missing text field 'text'"),
    (b'[1, 2]', "expected a JSON object"),
    (b'{"text": "a", "id": [1]}', "must be a string or integer"),
    (b'{"text": "a"', "invalid JSON"),
    (b'\xff\xfe', "invalid UTF-8"),
    (b'{"text": "a\\u0000b"}', "NUL"),
])
def test_bad_lines_name_file_and_line(tmp_path, line, problem):
    path = write(tmp_path, "c.jsonl", b'{"text": "ok"}\n' + line + b"\n")
    with pytest.raises(CorpusError, match=f"{path}:2: .*{problem}"):
        list(read_corpus(path, CorpusOptions()))
    stats = ReadStats()
    assert [r.text for r in read_corpus(path, CorpusOptions(skip_invalid=True), stats)] == ["ok"]
    assert stats.invalid == 1 and ":2:" in stats.problems[0]


def test_txt_keeps_empty_lines_and_several_files_prefix_ids(tmp_path):
    path = write(tmp_path, "t.txt", b"one\n\nthree")
    recs = list(read_corpus(path, CorpusOptions(prefix_ids=True)))
    assert [(r.id, r.text) for r in recs] == [("t.txt:1", "one"), ("t.txt:2", ""), ("t.txt:3", "three")]


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(CorpusError, match="unknown corpus format"):
        list(read_corpus(str(tmp_path / "x.parquet"), CorpusOptions()))
    with pytest.raises(CorpusError, match="cannot open"):
        list(read_corpus(str(tmp_path / "missing.jsonl"), CorpusOptions()))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(
    st.binary(max_size=60),
    st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                 lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                 max_leaves=8).map(lambda o: json.dumps(o).encode()),
    st.fixed_dictionaries({"text": st.text(max_size=20)}, optional={"id": st.integers() | st.text(max_size=5)})
      .map(lambda o: json.dumps(o).encode()),
), max_size=8))
def test_fuzz_reader_never_crashes(tmp_path, lines):
    path = write(tmp_path, "f.jsonl", b"\n".join(l.replace(b"\n", b" ") for l in lines) + b"\n")
    stats = ReadStats()
    recs = list(read_corpus(path, CorpusOptions(skip_invalid=True), stats))
    assert stats.records == len(recs) and stats.records + stats.invalid <= stats.lines
    for rec in recs:
        assert isinstance(rec.text, str) and isinstance(rec.id, str) and rec.id and "\x00" not in rec.text
    try:
        strict = list(read_corpus(path, CorpusOptions()))
        assert len(strict) == len(recs)
    except CorpusError as err:
        assert str(err).startswith(f"{path}:")


def test_documents_blank_txt_lines_skipped_and_counted(tmp_path):
    """ingest reads with documents=True: `printf 'a\\n\\nb\\n'` used to store an empty document."""
    path = write(tmp_path, "t.txt", b"a\n\n  \t\nb\n")
    stats = ReadStats()
    recs = list(read_corpus(path, CorpusOptions(documents=True), stats))
    assert [(r.id, r.text) for r in recs] == [("1", "a"), ("4", "b")]
    assert stats.blank == 2 and stats.invalid == 0 and stats.lines == 4
    # embed keeps one row per input line
    assert [r.text for r in read_corpus(path, CorpusOptions())] == ["a", "", "  \t", "b"]


@pytest.mark.parametrize("line, problem", [
    (b'{"text": ""}', "empty text"),
    (b'{"text": "  \\u3000\\n\\t"}', "empty text"),
    (b'{"text": "a", "id": "x\\ny"}', "line break or NUL"),
    (b'{"text": "a", "id": "x\\u0000y"}', "line break or NUL"),
    (b'{"text": "a", "id": "x\\ry"}', "line break or NUL"),
])
def test_documents_invalid_records_name_file_and_line(tmp_path, line, problem):
    path = write(tmp_path, "c.jsonl", b'{"text": "ok"}\n' + line + b"\n")
    with pytest.raises(CorpusError, match=f"{path}:2: .*{problem}"):
        list(read_corpus(path, CorpusOptions(documents=True)))
    stats = ReadStats()
    assert [r.text for r in read_corpus(path, CorpusOptions(documents=True, skip_invalid=True), stats)] == ["ok"]
    assert stats.invalid == 1


def test_document_problem_is_one_rule():
    from bellm_search.corpus import document_problem

    assert document_problem("a", "text") is None
    assert "empty" in document_problem("a", " \u00a0 ")
    assert "NUL" in document_problem("a", "x\x00y")
    assert "line break" in document_problem("a\nb", "x")
    assert "string" in document_problem("a", None)
