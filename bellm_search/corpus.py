"""Corpus readers: JSONL, TXT and stdin, validated line by line; errors name ``path:line``."""
from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from bellm_search.errors import CorpusError

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 16 * 1024 * 1024
MAX_JSON_DEPTH = 100  # deeper records are refused: recursive code downstream (copies, JSON output) would overflow
STDIN = "-"


@dataclass
class Record:
    """One document: its source id, text and any other fields (metadata)."""

    id: str
    text: str
    meta: dict[str, Any]
    path: str
    line: int


@dataclass
class ReadStats:
    lines: int = 0
    records: int = 0
    invalid: int = 0
    blank: int = 0  # blank lines skipped (no record)
    problems: list[str] = field(default_factory=list)  # first few, for the summary

    def skip(self, error: CorpusError) -> None:
        self.invalid += 1
        if len(self.problems) < 5:
            self.problems.append(str(error))
        log.debug("skipped %s", error)


@dataclass
class CorpusOptions:
    text_field: str = "text"
    id_field: str = "id"
    skip_invalid: bool = False
    prefix_ids: bool = False  # ids from line numbers get "file:" in front (several corpora)
    documents: bool = False  # records to store (ingest): blank .txt lines skipped, ``document_problem`` enforced


def corpus_format(path: str) -> str:
    if path == STDIN:
        return "txt"
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".txt", ".text", ".tsv", ""):
        return "txt"
    raise CorpusError(path, 0, f"unknown corpus format {suffix!r}: use .jsonl (one JSON object per line) or .txt")


def read_corpus(path: str, options: CorpusOptions, stats: ReadStats | None = None) -> Iterator[Record]:
    """Yield valid records of one corpus; invalid lines raise CorpusError or are counted."""
    stats = stats if stats is not None else ReadStats()
    fmt = corpus_format(path)
    name = "<stdin>" if path == STDIN else path
    with _open(path) as fh:
        for lineno, raw in enumerate(_lines(fh), start=1):
            stats.lines += 1
            try:
                record = _parse(raw, fmt, name, lineno, options)
            except CorpusError as err:
                if not options.skip_invalid:
                    raise
                stats.skip(err)
                continue
            if record is None:
                stats.blank += 1
            else:
                stats.records += 1
                yield record


def _open(path: str) -> BinaryIO:
    if path == STDIN:
        return _NoClose(sys.stdin.buffer)
    try:
        return open(path, "rb")
    except OSError as exc:
        raise CorpusError(path, 0, f"cannot open: {exc.strerror}") from None


class _NoClose:
    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh

    def __enter__(self) -> BinaryIO:
        return self.fh

    def __exit__(self, *exc: object) -> None:
        return None


def _lines(fh: BinaryIO) -> Iterator[bytes]:
    """Lines without their ending; a final line without newline included. A line over the limit is
    not read whole (memory stays bounded): its first bytes stand for it and _parse refuses it."""
    while raw := fh.readline(MAX_LINE_BYTES + 2):  # + 2: room for "\r\n"
        if not raw.endswith(b"\n") and len(raw) > MAX_LINE_BYTES + 1:
            while (rest := fh.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass  # skip the rest of the over-long line
            raw = raw + b"\0"  # stays over the limit whatever ending is stripped
        yield raw.rstrip(b"\n").rstrip(b"\r")


def _parse(raw: bytes, fmt: str, path: str, lineno: int, options: CorpusOptions) -> Record | None:
    if len(raw) > MAX_LINE_BYTES:
        raise CorpusError(path, lineno, f"line longer than {MAX_LINE_BYTES} bytes")
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(path, lineno, f"invalid UTF-8 at byte {exc.start}") from None
    if lineno == 1 and line.startswith("\ufeff"):
        line = line[1:]
    default_id = f"{Path(path).name}:{lineno}" if options.prefix_ids else str(lineno)
    if fmt == "txt":
        if "\x00" in line:
            raise CorpusError(path, lineno, "NUL byte in text")
        if options.documents and not line.strip():
            return None  # a blank line of a text corpus is no document
        return Record(default_id, line, {}, path, lineno)
    if not line.strip():
        return None  # blank lines in JSONL are not records
    record = _parse_json(line, path, lineno, options, default_id)
    problem = document_problem(record.id, record.text) if options.documents else None
    if problem:
        raise CorpusError(path, lineno, problem)
    return record


def _parse_json(line: str, path: str, lineno: int, options: CorpusOptions, default_id: str) -> Record:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CorpusError(path, lineno, f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise CorpusError(path, lineno, f"invalid JSON ({exc})") from None
    except RecursionError:
        raise CorpusError(path, lineno, f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    if line.count("[") + line.count("{") > MAX_JSON_DEPTH and json_depth(obj) > MAX_JSON_DEPTH:
        raise CorpusError(path, lineno, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    if "\\u" in line and not utf8_encodable(obj):
        raise CorpusError(path, lineno, "lone UTF-16 surrogate escape (\\ud800-\\udfff): not valid Unicode text")
    if not isinstance(obj, dict):
        raise CorpusError(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
    if options.text_field not in obj:
        raise CorpusError(path, lineno, f"missing text field {options.text_field!r} (set --text-field)")
    text = obj.pop(options.text_field)
    if not isinstance(text, str):
        raise CorpusError(path, lineno, f"field {options.text_field!r} must be a string, got {type(text).__name__}")
    if "\x00" in text:
        raise CorpusError(path, lineno, "NUL character in text")
    source_id = obj.pop(options.id_field, None)
    if source_id is None:
        source_id = default_id
    elif isinstance(source_id, bool) or not isinstance(source_id, (str, int)):
        raise CorpusError(path, lineno, f"field {options.id_field!r} must be a string or integer")
    source_id = str(source_id)
    if not source_id:
        raise CorpusError(path, lineno, f"field {options.id_field!r} is empty")
    return Record(source_id, text, obj, path, lineno)


def document_problem(source_id: str, text: Any) -> str | None:
    """Why a record cannot become a stored document (None: it can). One rule for every way in:
    the corpus reader (CLI ingest), the collection's ingest and ``POST /documents``."""
    if not isinstance(text, str):
        return f"text must be a string, got {type(text).__name__}"
    if not text.strip():
        return "empty text (or only whitespace): nothing to search"
    if "\x00" in text:
        return "NUL character in text"
    if not isinstance(source_id, str) or not source_id:
        return "empty id"
    if any(c in source_id for c in "\n\r\x00"):
        return f"id {source_id[:60]!r} holds a line break or NUL (it would break id lists): change the id"
    return None


def json_depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0, ``{"a": [1]}`` is 2), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth + 1)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def utf8_encodable(value: Any) -> bool:
    """False when a string in the value (keys included) holds a lone surrogate (a valid JSON escape
    like \\ud800, but not text that UTF-8, LMDB records or a tokenizer can take)."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def read_texts(path: str, options: CorpusOptions, stats: ReadStats | None = None) -> list[str]:
    return [r.text for r in read_corpus(path, options, stats)]


# record key of a re-keyed (promoted) document: the int id it arrived with, i.e. its place in
# arrival order, which its new int id no longer gives (see collection.copies.promote_first_copies)
SEEN = "_seen"
