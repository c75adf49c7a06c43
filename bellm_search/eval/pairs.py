"""``eval dedup``: score labelled pairs as dedup does (the pair model over cosine + lexical
features), report AP, the best-F1 threshold and P/R/F1 at the threshold the product ships, write
each pair's score and decision (``--scores``), plot the curve; plus the lexical baselines (exact
character n-gram Jaccard, MinHash)."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bellm_search.eval.cosines import pair_cosines
from bellm_search.eval.datasets import read_pairs
from bellm_search.eval.metrics import average_precision, best_f1, curve_table, pr_curve, prf_at
from bellm_search.pairs.features import text_pair_features
from bellm_search.pairs.model import PairModel
from bellm_search.pairs.normalize import char_shingles, jaccard


def shipped_model_for(encoder: Any) -> PairModel | None:
    """The shipped pair model when it was fitted for this encoder's adapter; else None."""
    from bellm_search.collection.manifest import adapter_sha256
    from bellm_search.dedup.calibration import SHIPPED, read_calibration

    config = getattr(encoder, "config", None)
    sha = adapter_sha256(getattr(config, "adapter", None)) if config is not None else None
    if not sha or not SHIPPED.is_file():
        return None
    cal = read_calibration(SHIPPED)
    return PairModel.from_dict(cal["model"]) if cal.get("adapter_sha256") == sha else None


def report(scores: np.ndarray, labels: np.ndarray, start: float | None = None) -> dict[str, Any]:
    """AP, the best-F1 threshold and a P/R/F1 table from ``start`` (probabilities: 0; below-floor
    pairs score cosine - 1 < 0)."""
    threshold, f1, precision, recall = best_f1(scores, labels)
    return {"pairs": int(len(labels)), "positives": int(labels.sum()), "ap": average_precision(scores, labels),
            "threshold": float(threshold), "f1": float(f1), "precision": float(precision), "recall": float(recall),
            "curve": curve_table(scores, labels, start=start)}


def evaluate_pairs(path: str, fmt: str, encoder_options: dict[str, Any], plot: Path | None = None,
                   limit: int | None = None, encoder: Any = None, model: PairModel | None = None,
                   pure_cosine: bool = False, scores_out: Path | None = None) -> dict[str, Any]:
    """Score labelled pairs (``model``: default the shipped one when it fits the encoder; pure
    cosine otherwise or with ``pure_cosine``) and report; ``scores_out`` gets one JSON line per pair."""
    from bellm_search.encoder.encode import Encoder

    pairs = read_pairs(path, fmt)[:limit]  # type: ignore[arg-type]
    encoder = encoder or Encoder(**encoder_options)
    model = None if pure_cosine else (model or shipped_model_for(encoder))
    cos = pair_cosines(pairs, encoder)
    labels = np.asarray([p.label for p in pairs], dtype=np.int64)
    if model is None:
        X, scores, shipped_t = cos[:, None], cos, None
    else:
        X = text_pair_features(cos, [p.text1 for p in pairs], [p.text2 for p in pairs], model.features)
        scores, shipped_t = model.score(X), model.threshold
    out = report(scores, labels, start=None if model is None else 0.0)
    out["score"] = "cosine" if model is None else "pair model probability"
    if shipped_t is not None:
        out["shipped"] = {"threshold": shipped_t, **prf_at(scores, labels, shipped_t)}
    if scores_out is not None:
        write_scores(scores_out, pairs, X, scores, shipped_t, model.features if model else ("cosine",))
    if plot:
        plot_curve(scores, labels, plot, f"{Path(path).name}: AP {out['ap']:.3f}",
                   xlabel=f"{out['score']} threshold", xmin=0.0 if model else None)
    return out


def write_scores(path: Path, pairs: Sequence[Any], X: np.ndarray, scores: np.ndarray, threshold: float | None,
                 names: Sequence[str]) -> None:
    """One JSON line per labelled pair: texts, label, features, score and the decision at the
    shipped threshold (null without one), written atomically."""
    from bellm_search._fs import atomic_write

    def write(fh: Any) -> None:
        for p, x, s in zip(pairs, X, scores):
            fh.write(json.dumps({"text1": p.text1, "text2": p.text2, "label": p.label, "score": round(float(s), 6),
                                 "duplicate": None if threshold is None else bool(s >= threshold),
                                 **{n: None if np.isnan(v) else round(float(v), 6) for n, v in zip(names, x)}},
                                ensure_ascii=False) + "\n")

    atomic_write(Path(path), write)


def plot_curve(scores: np.ndarray, labels: np.ndarray, path: Path, title: str, xlabel: str = "cosine threshold",
               xmin: float | None = None, mark: float | None = None) -> None:
    """P/R/F1 against the threshold; ``xmin`` hides lower thresholds (below-floor pairs score
    cosine - 1 < 0, never a useful threshold); ``mark`` draws the shipped threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = pr_curve(scores, labels)
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("precision", "recall", "f1"):
        ax.plot(curve["threshold"], curve[key], label=key)
    t, f1, _, _ = best_f1(scores, labels)
    ax.axvline(t, color="grey", linestyle="--", label=f"best F1 {f1:.3f} at {t:.3f}")
    if mark is not None:
        ax.axvline(mark, color="black", linestyle=":", label=f"shipped {mark:.3f}: F1 {prf_at(scores, labels, mark)['f1']:.3f}")
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


# ----------------------------------------------------------------------------- lexical baselines
def _texts(pairs: Sequence[Any]) -> list[tuple[str, str]]:
    return [(p.text1, p.text2) if hasattr(p, "text1") else (p[0], p[1]) for p in pairs]


def jaccard_scores(pairs: Sequence[Any], n: int = 5) -> np.ndarray:
    """Exact character n-gram Jaccard for each pair (Pair, StsPair or (text1, text2))."""
    return np.array([jaccard(char_shingles(a, n), char_shingles(b, n)) for a, b in _texts(pairs)], dtype=np.float64)


def minhash_scores(pairs: Sequence[Any], num_perm: int = 128, n: int = 5, seed: int = 1) -> np.ndarray:
    """MinHash estimate of the character n-gram Jaccard for each pair (datasketch)."""
    from bellm_search.errors import MissingDependency

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
