"""Training rows, their order, and how a step's texts are cut into forward chunks. numpy + torch only.

Rows are JSONL {"anchor","positive"[,"negative"]} (triples) or {"text1","text2","score"} (scored
pairs), one kind per run; several files are concatenated in the order given. Texts are stored once
and rows hold indices into them. The data order is a pure function of (seed, micro-batch index),
which makes resume exact.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bellm_search.errors import ConfigError, CorpusError


@dataclass
class TrainData:
    """Rows as indices into ``texts``: anchor/text1, positive/text2, negative (-1 = none), gold."""

    texts: list[str]
    anchor: np.ndarray
    positive: np.ndarray
    negative: np.ndarray
    gold: np.ndarray | None  # scored pairs only

    def __len__(self) -> int:
        return len(self.anchor)


def split_paths(data: str | Path | Sequence[str | Path]) -> list[Path]:
    """One path, a comma-separated list, or a sequence of paths."""
    if isinstance(data, (str, Path)):
        data = [p for p in str(data).split(",") if p.strip()]
    return [Path(p) for p in data]


def read_training_data(data: str | Path | Sequence[str | Path]) -> TrainData:
    """Rows of one or more JSONL files (comma-separated or a list), concatenated; one kind of row."""
    index: dict[str, int] = {}
    cols: dict[str, list] = {"a": [], "p": [], "n": [], "y": []}
    kind: str | None = None
    for path in split_paths(data):
        kind = _read_file(path, kind, index, cols)
    if len(cols["a"]) < 2:
        raise CorpusError(str(data), 1, "need at least 2 training rows")
    gold = np.array(cols["y"], dtype=np.float32) if kind == "scored" else None
    return TrainData(list(index), np.array(cols["a"]), np.array(cols["p"]), np.array(cols["n"]), gold)


def _read_file(path: Path, kind: str | None, index: dict[str, int], cols: dict[str, list]) -> str | None:
    if not path.is_file():
        raise ConfigError(f"{path}: no such training file")
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            row = _parse_row(path, n, line)
            row_kind = "scored" if "score" in row else "triples"
            if kind and row_kind != kind:
                raise CorpusError(str(path), n, f"a {row_kind} row among {kind}: use one kind of row per run")
            kind = row_kind
            _add_row(row, kind, index, cols)
    return kind


def _parse_row(path: Path, n: int, line: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CorpusError(str(path), n, f"invalid JSON ({exc.msg})") from None
    if not isinstance(row, dict):
        raise CorpusError(str(path), n, "expected a JSON object")
    keys = ("text1", "text2") if "score" in row else ("anchor", "positive")
    for key in keys + (("negative",) if row.get("negative") is not None else ()):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise CorpusError(str(path), n, f"'{key}' must be a non-empty string "
                              "(rows are {anchor, positive[, negative]} or {text1, text2, score})")
    if "score" in row and (isinstance(row["score"], bool) or not isinstance(row["score"], (int, float))):
        raise CorpusError(str(path), n, f"'score' must be a number, got {row['score']!r}")
    return row


def _add_row(row: dict[str, Any], kind: str, index: dict[str, int], cols: dict[str, list]) -> None:
    def idx(text: str | None) -> int:
        return -1 if text is None else index.setdefault(text, len(index))

    if kind == "scored":
        cols["a"].append(idx(row["text1"]))
        cols["p"].append(idx(row["text2"]))
        cols["y"].append(float(row["score"]))
    else:
        cols["a"].append(idx(row["anchor"]))
        cols["p"].append(idx(row["positive"]))
    cols["n"].append(idx(row.get("negative")))


def micro_batch(n_rows: int, batch_size: int, seed: int, m: int) -> np.ndarray:
    """Row indices of global micro-batch ``m``: epoch e is a permutation seeded by (seed, e);
    the incomplete tail of each epoch is dropped."""
    per_epoch = max(1, n_rows // batch_size)
    epoch, k = divmod(m, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n_rows)
    return perm[k * batch_size:(k + 1) * batch_size]


def total_steps(epochs: float, max_steps: int | None, n_rows: int, batch_size: int, grad_accum: int) -> int:
    if max_steps is not None:
        return max_steps
    per_epoch = max(1, n_rows // batch_size) / grad_accum
    return max(1, math.ceil(epochs * per_epoch))


def negative_mask(a: np.ndarray, p: np.ndarray, n: np.ndarray) -> torch.Tensor:
    """(B, 2B) valid columns for row i: its own positive; other positives unless they share i's
    anchor or are i's positive/anchor text; hard negatives that exist and are not i's texts."""
    same_anchor = a[:, None] == a[None, :]
    pos_clash = (p[None, :] == p[:, None]) | (p[None, :] == a[:, None]) | same_anchor
    pos_ok = ~pos_clash | np.eye(len(a), dtype=bool)
    neg_ok = (n[None, :] >= 0) & (n[None, :] != p[:, None]) & (n[None, :] != a[:, None])
    return torch.from_numpy(np.concatenate([pos_ok, neg_ok], axis=1))


def plan_chunks(lengths: np.ndarray, max_tokens: int, slack: float) -> list[np.ndarray]:
    """Indices in forward chunks, longest first: a chunk holds texts at least ``longest / slack``
    tokens long, and rows x longest <= max_tokens. slack 1 pads nothing (one chunk per length);
    a large slack gives few chunks padded to their longest text. Padding costs arithmetic; each
    chunk costs a fixed overhead per layer, so CPUs want a small slack, GPUs a large one."""
    lengths = np.asarray(lengths)
    order = np.argsort(-lengths, kind="stable")
    chunks, start = [], 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        rows = max(1, max_tokens // longest)
        stop = start + 1
        while stop < len(order) and stop - start < rows and lengths[order[stop]] * slack >= longest:
            stop += 1
        chunks.append(order[start:stop])
        start = stop
    return chunks
