"""Threshold calibration on labelled duplicate/paraphrase pairs."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bellm_search.pairs.score import PairScore, pair_jaccards
from bellm_search.eval.metrics import average_precision, best_f1, pr_curve, read_pairs


def cosine_scores(pairs: list[Any], encoder: Any) -> np.ndarray:
    """Cosine of each pair's two texts; each distinct text encoded once."""
    texts = sorted({t for p in pairs for t in (p.text1, p.text2)})
    row = {t: i for i, t in enumerate(texts)}
    vecs = encoder.encode(texts)
    a = vecs[[row[p.text1] for p in pairs]]
    b = vecs[[row[p.text2] for p in pairs]]
    return (a * b).sum(1)


def curve_table(scores: np.ndarray, labels: np.ndarray, step: float = 0.05) -> list[dict[str, float]]:
    """P/R/F1 at round thresholds (for printing)."""
    rows = []
    lo = np.floor(scores.min() / step) * step
    for t in np.arange(lo, 1.0 + 1e-9, step):
        pred = scores >= t
        tp = float((pred & (labels == 1)).sum())
        p = tp / max(pred.sum(), 1)
        r = tp / max((labels == 1).sum(), 1)
        rows.append({"threshold": round(float(t), 4), "precision": p, "recall": r,
                     "f1": 2 * p * r / max(p + r, 1e-12)})
    return rows


def report(scores: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    threshold, f1, precision, recall = best_f1(scores, labels)
    return {"pairs": int(len(labels)), "positives": int(labels.sum()), "ap": average_precision(scores, labels),
            "threshold": float(threshold), "f1": float(f1), "precision": float(precision), "recall": float(recall),
            "curve": curve_table(scores, labels)}


def plot_curve(scores: np.ndarray, labels: np.ndarray, path: Path, title: str, xlabel: str = "cosine threshold",
               xmin: float | None = None) -> None:
    """P/R/F1 against the threshold; ``xmin`` hides lower thresholds (the mixed score's below-floor
    pairs score cosine - 1 < 0, which is never a useful threshold)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = pr_curve(scores, labels)
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("precision", "recall", "f1"):
        ax.plot(curve["threshold"], curve[key], label=key)
    t, f1, _, _ = best_f1(scores, labels)
    ax.axvline(t, color="grey", linestyle="--", label=f"best F1 {f1:.3f} at {t:.3f}")
    ax.set_xlabel(xlabel)
    if xmin is not None:
        ax.set_xlim(left=xmin)
    ax.set_title(title)
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pair_scores(pairs: list[Any], cosine: np.ndarray, score: PairScore) -> np.ndarray:
    """``score`` of each labelled pair from its cosine and its two texts (as dedup scores pairs)."""
    if not score.lexical:
        return np.asarray(cosine, dtype=np.float64)
    return score.combine(cosine, pair_jaccards([p.text1 for p in pairs], [p.text2 for p in pairs], score.shingle))


def evaluate_pairs(path: str, fmt: str, encoder_options: dict[str, Any], plot: Path | None = None,
                   limit: int | None = None, encoder: Any = None,
                   lexical_weight: float | None = None) -> dict[str, Any]:
    from bellm_search.dedup.job import score_with
    from bellm_search.encoder.encode import Encoder

    score = score_with(lexical_weight)
    pairs = read_pairs(path, fmt)[:limit]  # type: ignore[arg-type]
    encoder = encoder or Encoder(**encoder_options)
    scores = pair_scores(pairs, cosine_scores(pairs, encoder), score)
    labels = np.asarray([p.label for p in pairs], dtype=np.int64)
    out = report(scores, labels)
    out["score"] = score.describe()
    out["lexical_weight"] = score.lexical_weight
    if plot:
        plot_curve(scores, labels, plot, f"{Path(path).name}: AP {out['ap']:.3f}", xlabel=f"{score.describe()} threshold",
                   xmin=0.0 if score.lexical else None)
    return out
