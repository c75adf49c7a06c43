"""Labelled-pair readers (JSONL, Twitter URL, PIT-2015, MRPC) and scored-pair (STS) readers.
Errors carry path:line. Stdlib + numpy only."""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from bellm_search.errors import ConfigError, CorpusError

PairFormat = Literal["auto", "jsonl", "twitter-url", "pit2015", "mrpc"]
StsFormat = Literal["auto", "jsonl", "stsb"]
TWITTER_URL_FILES = ("a.toks", "b.toks", "sim.txt")


# --------------------------------------------------------------------------- labelled data

@dataclass(frozen=True)
class Pair:
    """A labelled text pair; ``label`` 1 = paraphrase / duplicate."""
    text1: str
    text2: str
    label: int


@dataclass(frozen=True)
class StsPair:
    """A text pair with a graded similarity score (STS-B: 0-5)."""
    text1: str
    text2: str
    score: float


def _read_lines(path: Path) -> list[str]:
    """Lines split on '\\n' only (tweets may hold other line separators), BOM and '\\r' removed."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CorpusError(str(path), data[:exc.start].count(b"\n") + 1, "not valid UTF-8") from exc
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _numbered(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) for non-blank lines."""
    for n, line in enumerate(_read_lines(path), start=1):
        if line.strip():
            yield n, line


def _columns(path: Path, n: int, line: str, need: int, what: str) -> list[str]:
    cols = line.split("\t")
    if len(cols) < need:
        raise CorpusError(str(path), n, f"expected {need} TAB-separated columns ({what}), "
                                        f"found {len(cols)}")
    return cols


def read_pairs(path: str | Path, fmt: PairFormat = "auto") -> list[Pair]:
    """Read labelled pairs. Formats: ``jsonl`` ({"text1","text2","label"}), ``twitter-url``
    (folder or any of a.toks/b.toks/sim.txt; or the raw "s1 TAB s2 TAB (n,6) TAB url" file, n=3
    dropped), ``pit2015`` (debatable votes dropped), ``mrpc``; ``auto`` guesses from the path."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such file or directory")
    fmt = _detect_pairs_format(path) if fmt == "auto" else fmt
    readers = {"jsonl": _read_pairs_jsonl, "twitter-url": _read_twitter_url,
               "pit2015": _read_pit2015, "mrpc": _read_mrpc}
    if fmt not in readers:
        raise ConfigError(f"unknown pair format {fmt!r}: use one of auto, {', '.join(readers)}")
    return readers[fmt](path)


def _detect_pairs_format(path: Path) -> str:
    if path.is_dir() or path.name in TWITTER_URL_FILES:
        return "twitter-url"
    if path.suffix in (".jsonl", ".json"):
        return "jsonl"
    if path.name.startswith("msr_paraphrase"):
        return "mrpc"
    if path.suffix == ".data":
        return "pit2015"
    first = next((line for _, line in _numbered(path)), "")
    if first.lstrip().startswith("{"):
        return "jsonl"
    if first.startswith("Quality\t"):
        return "mrpc"
    if re.fullmatch(r"[^\t]*\t[^\t]*\t\(\d,\s*6\)\t.*", first):
        return "twitter-url"
    raise ConfigError(f"{path}: cannot tell the pair format; pass one of jsonl, twitter-url, "
                      "pit2015, mrpc")


def _json_object(path: Path, n: int, line: str) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CorpusError(str(path), n, f"invalid JSON: {exc.msg}") from exc
    if not isinstance(obj, dict):
        raise CorpusError(str(path), n, f"expected a JSON object, got {type(obj).__name__}")
    for key in ("text1", "text2"):
        if not isinstance(obj.get(key), str):
            raise CorpusError(str(path), n, f"'{key}' must be a string"
                              if key in obj else f"missing '{key}'")
    return obj


def _read_pairs_jsonl(path: Path) -> list[Pair]:
    pairs = []
    for n, line in _numbered(path):
        obj = _json_object(path, n, line)
        label = obj.get("label")
        if isinstance(label, bool) or (isinstance(label, int) and label in (0, 1)):
            pairs.append(Pair(obj["text1"], obj["text2"], int(label)))
        else:
            problem = "missing 'label'" if "label" not in obj else \
                f"'label' must be 0, 1, true or false, got {label!r}"
            raise CorpusError(str(path), n, problem)
    return pairs


def _read_twitter_url(path: Path) -> list[Pair]:
    if path.is_file() and path.name not in TWITTER_URL_FILES:
        return _read_twitter_url_raw(path)
    folder = path if path.is_dir() else path.parent
    files = [folder / name for name in TWITTER_URL_FILES]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ConfigError(f"Twitter URL folder {folder} lacks {', '.join(missing)}")
    a, b, sim = (_read_lines(f) for f in files)
    if not len(a) == len(b) == len(sim):
        raise CorpusError(str(files[2]), min(len(a), len(b), len(sim)) + 1,
                          f"a.toks, b.toks, sim.txt have {len(a)}, {len(b)}, {len(sim)} lines")
    return [Pair(t1, t2, _binary(files[2], n, s)) for n, (t1, t2, s)
            in enumerate(zip(a, b, sim), start=1)]


def _binary(path: Path, n: int, value: str) -> int:
    if value.strip() not in ("0", "1"):
        raise CorpusError(str(path), n, f"expected a 0/1 label, got {value!r}")
    return int(value)


def _read_twitter_url_raw(path: Path) -> list[Pair]:
    """Raw release: votes n of 6 -> paraphrase n >= 4, not n <= 2, n == 3 dropped."""
    pairs = []
    for n, line in _numbered(path):
        cols = _columns(path, n, line, 3, "sentence1, sentence2, (n,6)")
        m = re.fullmatch(r"\s*\((\d),\s*6\)\s*", cols[2])
        if not m:
            raise CorpusError(str(path), n, f"expected votes like '(4,6)', got {cols[2]!r}")
        votes = int(m.group(1))
        if votes != 3:
            pairs.append(Pair(cols[0].strip(), cols[1].strip(), int(votes >= 4)))
    return pairs


def _read_pit2015(path: Path) -> list[Pair]:
    """PIT-2015: train/dev votes '(pos, neg)' -> paraphrase pos >= 3, not pos <= 1, (2, 3)
    dropped; test expert score 0-5 -> paraphrase 4-5, not 0-2, 3 dropped."""
    pairs = []
    for n, line in _numbered(path):
        cols = _columns(path, n, line, 5, "topic id, topic, sent1, sent2, label")
        label = _pit_label(path, n, cols[4])
        if label is not None:
            pairs.append(Pair(cols[2], cols[3], label))
    return pairs


def _pit_label(path: Path, n: int, text: str) -> int | None:
    votes = re.fullmatch(r"\s*\((\d),\s*(\d)\)\s*", text)
    if votes:
        pos = int(votes.group(1))
        return None if pos == 2 else int(pos >= 3)
    if re.fullmatch(r"\s*[0-5]\s*", text):
        score = int(text)
        return None if score == 3 else int(score >= 4)
    raise CorpusError(str(path), n, f"expected a label like '(3, 2)' or a score 0-5, got {text!r}")


def _read_mrpc(path: Path) -> list[Pair]:
    pairs = []
    for n, line in _numbered(path):
        if n == 1 and line.startswith("Quality"):
            continue
        cols = _columns(path, n, line, 5, "Quality, #1 ID, #2 ID, #1 String, #2 String")
        pairs.append(Pair(cols[3], cols[4], _binary(path, n, cols[0])))
    return pairs


def read_sts(path: str | Path, fmt: StsFormat = "auto") -> list[StsPair]:
    """Read scored pairs: ``stsb`` TSV (columns genre, file, year, id, score, s1, s2; extra
    columns ignored; no quoting) or ``jsonl`` ({"text1","text2","score"})."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    if fmt == "auto":
        fmt = "jsonl" if path.suffix in (".jsonl", ".json") else "stsb"
    if fmt == "jsonl":
        return _read_sts_jsonl(path)
    if fmt == "stsb":
        return _read_stsb(path)
    raise ConfigError(f"unknown STS format {fmt!r}: use auto, jsonl or stsb")


def _read_stsb(path: Path) -> list[StsPair]:
    pairs = []
    for n, line in _numbered(path):
        cols = _columns(path, n, line, 7, "genre, file, year, id, score, s1, s2")
        pairs.append(StsPair(cols[5], cols[6], _score(path, n, cols[4])))
    return pairs


def _score(path: Path, n: int, value: Any) -> float:
    try:
        score = float(value)
    except (TypeError, ValueError):
        score = float("nan")
    if isinstance(value, bool) or not np.isfinite(score):
        raise CorpusError(str(path), n, f"expected a numeric score, got {value!r}")
    return score


def _read_sts_jsonl(path: Path) -> list[StsPair]:
    pairs = []
    for n, line in _numbered(path):
        obj = _json_object(path, n, line)
        if "score" not in obj:
            raise CorpusError(str(path), n, "missing 'score'")
        pairs.append(StsPair(obj["text1"], obj["text2"], _score(path, n, obj["score"])))
    return pairs
