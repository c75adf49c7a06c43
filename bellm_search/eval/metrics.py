"""Evaluation: ranking and threshold metrics, labelled-pair readers (JSONL, Twitter URL, PIT-2015,
MRPC, STS-B) and the character-shingle Jaccard / MinHash baseline. Stdlib + numpy only;
datasketch is imported lazily by ``minhash_scores``."""
from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from bellm_search.pairs.normalize import char_shingles, jaccard
from bellm_search.errors import ConfigError, CorpusError, MissingDependency

PairFormat = Literal["auto", "jsonl", "twitter-url", "pit2015", "mrpc"]
StsFormat = Literal["auto", "jsonl", "stsb"]
TWITTER_URL_FILES = ("a.toks", "b.toks", "sim.txt")


# --------------------------------------------------------------------------- metrics

def rankdata(x: Any) -> np.ndarray:
    """1-based ranks, ties get the average of the ranks they span (like scipy's 'average')."""
    a = np.asarray(x, dtype=np.float64).ravel()
    order = np.argsort(a, kind="mergesort")
    inverse = np.empty(a.size, dtype=np.int64)
    inverse[order] = np.arange(a.size)
    s = a[order]
    new_value = np.r_[True, s[1:] != s[:-1]]
    dense = np.cumsum(new_value)[inverse]  # 1-based group of each element
    bounds = np.r_[np.flatnonzero(new_value), a.size]
    return 0.5 * (bounds[dense] + bounds[dense - 1] + 1)


def spearman(x: Any, y: Any) -> float:
    """Spearman rank correlation with average ranks for ties; NaN if an input is constant or
    holds NaN (as scipy.stats.spearmanr)."""
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape or x.size < 2:
        raise ValueError(f"spearman needs two arrays of equal length >= 2, got {x.size}, {y.size}")
    if np.isnan(x).any() or np.isnan(y).any():
        return float("nan")
    rx, ry = rankdata(x) - (x.size + 1) / 2, rankdata(y) - (y.size + 1) / 2
    denom = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")


def _check_binary(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if s.shape != y.shape or s.size == 0:
        raise ValueError(f"need equal-length non-empty scores and labels, got {s.size}, {y.size}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0/1 or bool")
    y = y.astype(np.int64)
    if y.sum() == 0:
        raise ValueError("labels contain no positive pair: precision/recall are undefined")
    return s, y


def _counts_by_threshold(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """Distinct thresholds (descending) with true/false positives when predicting s >= t."""
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1]  # last index of each score
    tp = np.cumsum(y)[last]
    return s[last], tp, (last + 1) - tp


def average_precision(scores: Any, labels: Any) -> float:
    """Average precision as sklearn's ``average_precision_score``: sum over thresholds of
    (recall step) x precision, step-wise, no interpolation."""
    s, y = _check_binary(scores, labels)
    _, tp, fp = _counts_by_threshold(s, y)
    precision, recall = tp / (tp + fp), tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def pr_curve(scores: Any, labels: Any) -> dict[str, np.ndarray]:
    """Precision/recall/F1 at every distinct score, predicting positive when score >= threshold.
    Arrays are ordered by ascending threshold (as sklearn, without its extra end point)."""
    s, y = _check_binary(scores, labels)
    thr, tp, fp = _counts_by_threshold(s, y)
    precision, recall = tp / (tp + fp), tp / y.sum()
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)
    rev = slice(None, None, -1)
    return {"threshold": thr[rev], "precision": precision[rev], "recall": recall[rev],
            "f1": f1[rev]}


def best_f1(scores: Any, labels: Any) -> tuple[float, float, float, float]:
    """``(threshold, f1, precision, recall)`` at the threshold with the highest F1; ties go to
    the highest threshold (fewest pairs predicted duplicate)."""
    curve = pr_curve(scores, labels)
    f1 = curve["f1"]
    k = f1.size - 1 - int(np.argmax(f1[::-1]))
    return (float(curve["threshold"][k]), float(f1[k]), float(curve["precision"][k]),
            float(curve["recall"][k]))


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


# --------------------------------------------------------------------------- lexical baseline

def _texts(pairs: Iterable[Any]) -> Iterator[tuple[str, str]]:
    for p in pairs:
        yield (p.text1, p.text2) if hasattr(p, "text1") else (p[0], p[1])


def jaccard_scores(pairs: Sequence[Any], n: int = 5) -> np.ndarray:
    """Exact character n-gram Jaccard for each pair (Pair, StsPair or (text1, text2))."""
    return np.array([jaccard(char_shingles(a, n), char_shingles(b, n))
                     for a, b in _texts(pairs)], dtype=np.float64)


def minhash_scores(pairs: Sequence[Any], num_perm: int = 128, n: int = 5,
                   seed: int = 1) -> np.ndarray:
    """MinHash estimate of the character n-gram Jaccard for each pair (datasketch)."""
    try:
        from datasketch import MinHash
    except ImportError as exc:
        raise MissingDependency("datasketch", "dedup") from exc
    template = MinHash(num_perm=num_perm, seed=seed)  # permutations drawn once, shared below
    cache: dict[str, Any] = {}

    def sketch(text: str) -> Any:
        if text not in cache:
            m = template.copy()
            m.update_batch([s.encode("utf-8") for s in sorted(char_shingles(text, n))])
            cache[text] = m
        return cache[text]

    return np.array([sketch(a).jaccard(sketch(b)) for a, b in _texts(pairs)], dtype=np.float64)
