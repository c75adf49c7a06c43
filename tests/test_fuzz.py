"""Property-based fuzzing (hypothesis) of the corpus readers and the HTTP API.

Corpus readers (JSONL, TXT, stdin): every line is stored exactly as an independent oracle says,
or skipped and counted (--skip-invalid), or refused with ``file:line``; never a partial record,
never an exception other than CorpusError. Then the same fuzzed corpora go into a collection
(FakeEncoder): exactly the valid lines are stored. The HTTP API (in-process, starlette TestClient):
random bodies on every endpoint get 200 or a JSON 4xx, never a 500 or a traceback.
(tests/test_corpus.py holds the example-based reader tests and a first, smaller fuzz test.)
"""
from __future__ import annotations

import io
import json
import sys
import tempfile
import tracemalloc
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bellm_search import corpus
from bellm_search.collection.core import Collection
from bellm_search.corpus import MAX_JSON_DEPTH, CorpusOptions, ReadStats, read_corpus
from bellm_search.errors import CorpusError
from fakes import FakeEncoder

SMALL_LIMIT = 6000  # MAX_LINE_BYTES while fuzzing: "huge" lines stay cheap, 5000-digit numbers fit
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                      HealthCheck.data_too_large, HealthCheck.large_base_example])


# ----------------------------------------------------------------------------- the oracle
def depth_of(value) -> int:
    """Nesting depth, written independently of corpus.json_depth (a scalar is 0)."""
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    return 0


def has_surrogate(value) -> bool:
    if isinstance(value, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, dict):
        return any(has_surrogate(k) or has_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_surrogate(v) for v in value)
    return False


def expect(raw: bytes, lineno: int, fmt: str, limit: int, documents: bool = False):
    """What the reader must make of one line (without its "\\n"): ("ok", id, text, meta),
    ("blank",) for a JSONL line that is no record, or ("bad",). ``documents``: read for ingest
    (a blank text line is no record; an empty text or an id with a line break or NUL is bad)."""
    content = raw.rstrip(b"\r")
    if len(content) > limit or len(raw) > limit + 1:  # longer than the limit with or without its "\r"
        return ("bad",)
    try:
        line = content.decode("utf-8")
    except UnicodeDecodeError:
        return ("bad",)
    if lineno == 1 and line.startswith("\ufeff"):
        line = line[1:]
    if fmt == "txt":
        if documents and "\x00" not in line and line.strip() == "":
            return ("blank",)
        return ("bad",) if "\x00" in line else ("ok", str(lineno), line, {})
    if not line.strip():
        return ("blank",)
    try:
        obj = json.loads(line)
        if depth_of(obj) > MAX_JSON_DEPTH:
            return ("bad",)
    except (ValueError, RecursionError):
        return ("bad",)
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str) or "\x00" in obj["text"]:
        return ("bad",)
    if has_surrogate(obj):
        return ("bad",)
    text = obj.pop("text")
    sid = obj.pop("id", None)
    if sid is None:
        sid = str(lineno)
    elif isinstance(sid, bool) or not isinstance(sid, (str, int)) or str(sid) == "":
        return ("bad",)
    if documents and (text.strip() == "" or {"\n", "\r", "\x00"} & set(str(sid))):
        return ("bad",)
    return ("ok", str(sid), text, obj)


def file_lines(data: bytes) -> list[bytes]:
    lines = data.split(b"\n")
    return lines[:-1] if lines[-1] == b"" else lines


def same_meta(a: dict, b: dict) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN == NaN here


# ----------------------------------------------------------------------------- line generators
SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True)
           | st.text(max_size=12))
JSON_VALUES = st.recursive(SCALARS, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                           max_leaves=10)
TEXTS = st.text(max_size=40) | st.sampled_from(["", " ", "héllo wörld", "emoji 🌮", "tab\tsep", "\u2028", "a\rb"])
IDS = st.integers(-(10**20), 10**20) | st.text(max_size=10)
BAD_IDS = st.sampled_from(["", True, False, 1.5, [1], {"a": 1}, float("nan")])
DEPTHS = st.sampled_from([MAX_JSON_DEPTH - 2, MAX_JSON_DEPTH - 1, MAX_JSON_DEPTH, 999, 1000, 10_000]) | st.integers(0, 120)


def dumps(obj, ascii_only: bool) -> bytes:
    return json.dumps(obj, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")  # surrogates: invalid UTF-8


@st.composite
def valid_records(draw) -> bytes:
    rec = draw(st.fixed_dictionaries({"text": TEXTS}, optional={"id": IDS, "lang": st.text(max_size=4), "meta": JSON_VALUES}))
    return dumps(rec, draw(st.booleans()))


@st.composite
def wrong_types(draw) -> bytes:
    rec = draw(st.sampled_from([
        {"text": draw(JSON_VALUES.filter(lambda v: not isinstance(v, str)))},
        {"text": draw(TEXTS), "id": draw(BAD_IDS)},
        {"id": draw(IDS)},
    ]))
    return dumps(rec, draw(st.booleans()))


@st.composite
def damaged(draw) -> bytes:
    """A valid record cut short, with a bad byte inserted, or with a NUL."""
    line = draw(valid_records())
    at = draw(st.integers(0, len(line)))
    how = draw(st.sampled_from(["cut", "byte", "nul", "nul-escape"]))
    if how == "cut":
        return line[:at]
    if how == "byte":
        return line[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80", b"\x00"])) + line[at:]
    if how == "nul":
        return b'{"text": "a\x00b"}'
    return dumps({"text": draw(TEXTS), "meta": "x\x00y"}, True)  # NUL outside the text: allowed


@st.composite
def deep(draw) -> bytes:
    depth = draw(DEPTHS)
    if draw(st.booleans()):
        nested = "[" * depth + "]" * depth
    else:
        nested = '{"a":' * depth + "1" + "}" * depth
    return ('{"text": "deep", "m": ' + nested + "}").encode()


@st.composite
def oddities(draw) -> bytes:
    kind = draw(st.sampled_from(["huge-int", "surrogate", "nan", "long", "blank", "not-object", "key"]))
    if kind == "huge-int":
        return b'{"text": "t", "id": ' + b"9" * draw(st.sampled_from([4299, 4300, 4301, 5000])) + b"}"
    if kind == "surrogate":
        return draw(st.sampled_from([b'{"text": "a\\ud800b"}', b'{"text": "a", "id": "\\udfff"}',
                                     b'{"text": "a", "m": ["\\udbff"]}', b'{"text": "a", "\\ud800": 1}',
                                     b'{"text": "pair \\ud83c\\udf2e ok"}']))
    if kind == "nan":
        return b'{"text": "t", "x": NaN, "y": [Infinity, -Infinity]}'
    if kind == "long":  # around the (lowered) line limit
        n = draw(st.integers(SMALL_LIMIT - 20, SMALL_LIMIT + 5))
        return b'{"text": "' + b"x" * (n - 12) + b'"}' + b"\r" * draw(st.integers(0, 2))
    if kind == "blank":
        return draw(st.sampled_from([b"", b"   ", b"\t", b"\x1c", b"\xc2\x85"]))
    if kind == "not-object":
        return draw(JSON_VALUES).__repr__().encode()[:50] if draw(st.booleans()) else dumps(draw(JSON_VALUES), True)
    return dumps({"text": "t", draw(st.text(max_size=5)): draw(JSON_VALUES)}, False)


LINES = st.one_of(valid_records(), valid_records(), wrong_types(), damaged(), deep(), oddities(), st.binary(max_size=80))


@st.composite
def corpora(draw) -> bytes:
    lines = [l.replace(b"\n", b" ") for l in draw(st.lists(LINES, max_size=10))]
    if draw(st.booleans()):
        lines = [l + b"\r" for l in lines]
    data = b"\n".join(lines) + (b"\n" if draw(st.booleans()) else b"")
    return (b"\xef\xbb\xbf" if draw(st.booleans()) else b"") + data


# ----------------------------------------------------------------------------- reading
def read_both(path: str, fmt: str, data: bytes, prefix_ids: bool = False, documents: bool = False) -> None:
    """Check skip mode and strict mode of one corpus against the oracle."""
    name = "<stdin>" if path == "-" else path
    expected = [expect(raw, n, fmt, SMALL_LIMIT, documents) for n, raw in enumerate(file_lines(data), start=1)]
    good = [(n, e) for n, e in enumerate(expected, start=1) if e[0] == "ok"]
    bad = [n for n, e in enumerate(expected, start=1) if e[0] == "bad"]
    event(f"{fmt}: {'some' if good else 'no'} valid, {'some' if bad else 'no'} invalid lines")
    label = (lambda n: f"{Path(name).name}:{n}") if prefix_ids else str

    def as_tuple(n, e):
        sid = label(n) if e[1] == str(n) and fmt == "txt" else e[1]
        return sid, e[2], n

    stats = ReadStats()
    recs = list(read_corpus(path, CorpusOptions(skip_invalid=True, prefix_ids=prefix_ids, documents=documents), stats))
    assert [(r.id, r.text, r.line) for r in recs] == [as_tuple(n, e) for n, e in good]
    assert all(same_meta(r.meta, e[3]) and r.path == name for r, (_, e) in zip(recs, good))
    assert (stats.lines, stats.records, stats.invalid) == (len(expected), len(good), len(bad))
    assert stats.blank == sum(e[0] == "blank" for e in expected)
    assert [p.split(": ", 1)[0] for p in stats.problems] == [f"{name}:{n}" for n in bad[:5]]

    if path == "-":
        sys.stdin.buffer.seek(0)
    got = []
    try:
        for rec in read_corpus(path, CorpusOptions(prefix_ids=prefix_ids, documents=documents)):
            got.append((rec.id, rec.text, rec.line))
    except CorpusError as err:
        assert bad and err.line == bad[0] and str(err).startswith(f"{name}:{bad[0]}: "), (str(err), bad)
        assert got == [as_tuple(n, e) for n, e in good if n < bad[0]]  # nothing partial, nothing after
    else:
        assert not bad and got == [as_tuple(n, e) for n, e in good]


@settings(FUZZ, max_examples=300)
@given(data=corpora(), documents=st.booleans())
def test_jsonl_lines_are_stored_skipped_or_refused_with_file_and_line(tmp_path, data, documents):
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(data)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(corpus, "MAX_LINE_BYTES", SMALL_LIMIT)
        read_both(str(path), "jsonl", data, documents=documents)


@settings(FUZZ, max_examples=150)
@given(data=corpora() | st.binary(max_size=400), via_stdin=st.booleans(), prefix_ids=st.booleans(),
       documents=st.booleans())
def test_txt_and_stdin_lines_are_stored_or_refused_with_file_and_line(tmp_path, data, via_stdin, prefix_ids, documents):
    path = tmp_path / "fuzz.txt"
    path.write_bytes(data)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(corpus, "MAX_LINE_BYTES", SMALL_LIMIT)
        if via_stdin:
            mp.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
        read_both("-" if via_stdin else str(path), "txt", data, prefix_ids, documents)


@pytest.mark.parametrize("opener, closer", [("[", "]"), ('{"a":', "}")])
def test_nesting_10000_levels_deep_is_a_clean_file_line_error(tmp_path, opener, closer):
    ok_depth = MAX_JSON_DEPTH - 1  # + the record object itself = the limit
    lines = [('{"text": "edge", "m": ' + opener * ok_depth + ("" if opener == "[" else "1") + closer * ok_depth + "}"),
             ('{"text": "deep", "m": ' + opener * 10_000 + ("" if opener == "[" else "1") + closer * 10_000 + "}"),
             '{"text": "after"}']
    path = tmp_path / "deep.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorpusError, match=rf"^{path}:2: JSON nested deeper than {MAX_JSON_DEPTH} levels$"):
        list(read_corpus(str(path), CorpusOptions()))
    stats = ReadStats()
    recs = list(read_corpus(str(path), CorpusOptions(skip_invalid=True), stats))
    assert [r.text for r in recs] == ["edge", "after"] and stats.invalid == 1
    # the deepest accepted record goes through the whole pipeline: stored, found, turned into JSON
    with Collection.create(tmp_path / "c", encoder=FakeEncoder()) as coll:
        coll.ingest(recs)
        hit = coll.query("edge", k=1)[0]
        assert hit.text == "edge" and json.loads(json.dumps(hit.to_dict()))["metadata"] == recs[0].meta


def test_an_over_long_line_is_refused_without_reading_it_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "MAX_LINE_BYTES", 1024)
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as fh:
        fh.write(b'{"text": "first"}\n{"text": "' + b"x" * (48 << 20) + b'"}\n{"text": "last"}\n')
    tracemalloc.start()
    try:
        stats = ReadStats()
        recs = list(read_corpus(str(path), CorpusOptions(skip_invalid=True), stats))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [r.text for r in recs] == ["first", "last"] and stats.problems == [f"{path}:2: line longer than 1024 bytes"]
    assert peak < 8 << 20, f"peak {peak >> 20} MiB while skipping a 48 MiB line"


# ----------------------------------------------------------------------------- into a collection
@settings(FUZZ, max_examples=40)
@given(data=corpora())
def test_ingesting_a_fuzzed_corpus_stores_exactly_the_valid_lines(data):
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        mp.setattr(corpus, "MAX_LINE_BYTES", SMALL_LIMIT)
        path = Path(tmp) / "fuzz.jsonl"
        path.write_bytes(data)
        expected: dict[str, tuple] = {}
        repeats = {"same": 0, "other": 0}
        for n, raw in enumerate(file_lines(data), start=1):
            e = expect(raw, n, "jsonl", SMALL_LIMIT, documents=True)
            if e[0] == "ok" and e[1] in expected:  # a repeated id: the first is kept
                repeats["same" if expected[e[1]][2] == e[2] else "other"] += 1
            elif e[0] == "ok":
                expected[e[1]] = e
        read = ReadStats()
        with Collection.create(Path(tmp) / "coll", encoder=FakeEncoder()) as coll:
            records = read_corpus(str(path), CorpusOptions(skip_invalid=True, documents=True), read)  # as ingest reads
            stats = coll.ingest(records, chunk_size=3)
            assert coll.store.count() == len(expected) == stats.added + stats.exact_duplicates
            assert (stats.skipped_known, stats.repeated_ids) == (repeats["same"], repeats["other"])
            for sid, (_, _, text, meta) in expected.items():
                doc = coll.store.get_doc(coll.store.lookup_key(sid))
                assert doc["id"] == sid and doc["text"] == text and same_meta(doc["meta"], meta)
            assert coll.check()["ok"]


# ----------------------------------------------------------------------------- the HTTP API
@pytest.fixture(scope="module")
def api(tmp_path_factory):
    from starlette.testclient import TestClient

    from bellm_search.serve.app import ServerSettings, create_app

    path = tmp_path_factory.mktemp("fuzz-api") / "coll"
    coll = Collection.create(path, encoder=FakeEncoder())
    coll.ingest([{"id": f"d{i}", "text": f"post {i}", "lang": "en" if i % 2 else "fr", "n": i} for i in range(20)])
    limits = ServerSettings(max_texts=8, max_text_chars=2000, max_k=50, max_body_bytes=100_000, timeout_s=10)
    app = create_app(coll, limits)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, app.state.service
    coll.close()


ANY = JSON_VALUES | st.sampled_from([10**30, -1, 0, 2**63, float("nan"), float("inf"), -float("inf"), "", "\ud800", [], {}])
FIELDS = {
    "text": TEXTS, "texts": st.lists(TEXTS, max_size=10), "k": st.integers(-5, 10**20), "nprobe": st.integers(-5, 10**12),
    "where": st.dictionaries(st.text(max_size=5), SCALARS, max_size=3), "threshold": st.floats(-2, 2) | st.just(float("nan")),
    "skip_near_duplicates": st.floats(-2, 2),
    "documents": st.lists(st.fixed_dictionaries({"id": IDS | BAD_IDS, "text": TEXTS | ANY}, optional={"m": ANY}), max_size=10),
}
KEYS = {"/query": ["text", "texts", "k", "where", "nprobe"], "/embed": ["text", "texts"],
        "/near-duplicates": ["text", "texts", "threshold", "k", "nprobe"], "/documents": ["documents", "skip_near_duplicates"]}


@st.composite
def valid_body(draw, endpoint: str) -> dict:
    if endpoint == "/documents":
        docs = st.fixed_dictionaries({"id": st.text(min_size=1, max_size=8) | st.integers(), "text": TEXTS},
                                     optional={"lang": st.sampled_from(["en", "fr"]), "m": JSON_VALUES})
        return draw(st.fixed_dictionaries({"documents": st.lists(docs, max_size=9)},
                                          optional={"skip_near_duplicates": st.floats(-1, 1)}))
    body = draw(st.sampled_from([{"text": draw(TEXTS)}, {"texts": draw(st.lists(TEXTS, min_size=1, max_size=9))}]))
    optional = {"k": st.integers(1, 60), "nprobe": st.integers(1, 100), "threshold": st.floats(-1, 1),
                "where": st.dictionaries(st.sampled_from(["lang", "n", "m"]), SCALARS, max_size=2)}
    for key in KEYS[endpoint]:
        if key in optional and draw(st.booleans()):
            body[key] = draw(optional[key])
    return body


@st.composite
def requests(draw) -> tuple[str, str, bytes, dict]:
    endpoint = draw(st.sampled_from([*KEYS, "DELETE", "/info", "/health"]))
    if endpoint == "DELETE":
        return "DELETE", "/documents/" + quote(draw(st.sampled_from([f"d{i}" for i in range(20)]) | st.text(min_size=1, max_size=12)), safe=""), b"", {}
    if endpoint in ("/info", "/health"):
        return "GET", endpoint, draw(st.binary(max_size=20)), {}
    kind = draw(st.sampled_from(["valid"] * 4 + ["shaped"] * 3 + ["any-json", "bytes", "cut", "deep", "nan"]))
    if kind == "valid":
        raw = dumps(draw(valid_body(endpoint)), draw(st.booleans()))
    elif kind == "shaped":
        keys = draw(st.lists(st.sampled_from(KEYS[endpoint]), unique=True))
        body = {k: draw(FIELDS[k] | ANY) if draw(st.integers(0, 4)) == 0 else draw(FIELDS[k]) for k in keys}
        if draw(st.integers(0, 9)) == 0:
            body[draw(st.text(max_size=6))] = draw(ANY)
        raw = dumps(body, draw(st.booleans()))
    elif kind == "any-json":
        raw = dumps(draw(ANY), draw(st.booleans()))
    elif kind == "bytes":
        raw = draw(st.binary(max_size=200))
    elif kind == "cut":
        raw = dumps({k: draw(FIELDS[k]) for k in KEYS[endpoint]}, False)
        raw = raw[:draw(st.integers(0, len(raw)))]
    elif kind == "deep":
        d = draw(DEPTHS | st.sampled_from([5_000, 40_000]))
        nested = "[" * d + "]" * d
        raw = (f'{{"documents": [{{"id": "deep{d}", "text": "deep {d}", "m": {nested}}}]}}' if endpoint == "/documents"
               else f'{{"text": "a", "where": {{"x": {nested}}}, "texts": {nested}}}').encode()
    else:
        raw = draw(st.sampled_from([b'{"text": "a", "k": NaN}', b'{"text": "a", "k": Infinity}', b'{"text": "a", "k": 1e999}',
                                    b'{"texts": ["a"], "threshold": -Infinity}', b'{"text": "a", "nprobe": NaN}',
                                    b'{"documents": [{"id": 1, "text": "nan meta", "m": NaN}]}']))
    headers = {"content-type": draw(st.sampled_from(["application/json"] * 6 + ["text/plain", "application/problem+json", ""]))}
    return "POST", endpoint, raw, headers


@settings(FUZZ, max_examples=400)
@given(req=requests())
def test_every_request_gets_200_or_a_json_4xx_never_a_500(api, req):
    client, service = api
    method, path, body, headers = req
    res = client.request(method, path, content=body, headers=headers)
    event(f"{method} {path.split('/')[1]}: {res.status_code}")
    assert res.status_code == 200 or 400 <= res.status_code < 500, (method, path, body[:300], res.status_code, res.text[:500])
    assert "Traceback" not in res.text and 'File "' not in res.text
    data = res.json()
    if res.status_code >= 400:
        assert isinstance(data["error"], str) and data["error"]
    elif path in ("/query", "/near-duplicates", "/embed"):
        sent = json.loads(body)
        n = len(sent["texts"]) if sent.get("texts") is not None else 1
        assert len(data["results" if path != "/embed" else "vectors"]) == n
    assert service.internal_errors == 0
    # whatever was stored, every document can still be returned as JSON
    if method == "POST" and path == "/documents" and res.status_code == 200:
        assert client.post("/query", json={"text": "x", "k": 50}).status_code == 200


def test_metadata_at_the_depth_limit_is_stored_and_served_deeper_is_422(api):
    client, service = api
    ok, over = MAX_JSON_DEPTH - 1, MAX_JSON_DEPTH  # + the document object itself
    for d, status in ((ok, 200), (over, 422)):
        body = f'{{"documents": [{{"id": "edge{d}", "text": "edge {d}", "m": {"[" * d + "]" * d}}}]}}'
        res = client.post("/documents", content=body.encode(), headers={"content-type": "application/json"})
        assert res.status_code == status, res.text
    assert "nested deeper than" in res.json()["error"]
    top = client.post("/query", json={"text": f"edge {ok}", "k": 50})
    assert top.status_code == 200 and top.json()["results"][0][0]["id"] == f"edge{ok}"
    assert service.internal_errors == 0
