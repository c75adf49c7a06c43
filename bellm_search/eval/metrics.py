"""Ranking and threshold metrics: Spearman, average precision, the precision/recall/F1 curve and
P/R/F1 at one threshold (the one implementation every report uses). Pure numpy."""
from __future__ import annotations

from typing import Any

import numpy as np

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


def prf_at(scores: Any, labels: Any, threshold: float) -> dict[str, float]:
    """Precision, recall and F1 when predicting positive at ``score >= threshold`` (no pair
    predicted: precision 0; no positive label: recall 0)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    pred = s >= threshold
    tp = float((pred & y).sum())
    p, r = tp / max(int(pred.sum()), 1), tp / max(int(y.sum()), 1)
    return {"precision": p, "recall": r, "f1": 2 * p * r / p_plus_r if (p_plus_r := p + r) > 0 else 0.0}


def curve_table(scores: Any, labels: Any, step: float = 0.05, start: float | None = None) -> list[dict[str, float]]:
    """P/R/F1 at round thresholds from ``start`` (default: the lowest score's step) up to 1 (for printing)."""
    s = np.asarray(scores, dtype=np.float64)
    lo = np.floor(s.min() / step) * step if start is None else start
    return [{"threshold": round(float(t), 4), **prf_at(s, labels, t)} for t in np.arange(lo, 1.0 + 1e-9, step)]
