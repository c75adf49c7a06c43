"""Fitting the pair model: the shipped one on the dev sets (``bellm_search/calibration.json``)
and a collection's own on the user's labels (``COLL/calibration.json``).

The decision rule (both): the lowest probability threshold whose precision, averaged over the
sets, reaches ``TARGET_PRECISION`` -- deleting a post that is not a duplicate loses data, so the
default favours precision. Each dev set weighs the same in the fit whatever its size and has its
own intercept (the sets' base rates differ: 27 to 68 % duplicates), so the weights come from
contrasts within each set; the model's bias is the intercepts' weighted mean. Of the redundant
jaccard5 / containment / length ratio, the one to leave out is chosen by leave-one-set-out.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bellm_search.eval.metrics import average_precision, prf_at
from bellm_search.pairs.features import FEATURES
from bellm_search.pairs.model import COSINE_FLOOR, PairModel, fit_pair_model

TARGET_PRECISION = 0.75
SHIPPED_FEATURES = FEATURES  # the candidates; the shipped model's own are in its calibration.json
DEV_FEATURES = Path(__file__).resolve().parents[1] / "data" / "calibration_dev.npz"
USER_SHARE = 2.0  # the user's labels together weigh twice all dev pairs together
MIN_LABELS = 10


# ----------------------------------------------------------------------------- the rule
def precision_threshold(scores: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                        target: float = TARGET_PRECISION) -> float:
    """The lowest threshold (scores rounded to 3 decimals) whose precision averaged over the sets
    reaches ``target`` with every set predicting something; else the highest score."""
    grid = np.unique(np.round(np.concatenate([np.asarray(s, dtype=np.float64) for s in scores]), 3))
    for t in grid:
        if all((s >= t).any() for s in scores) and \
                np.mean([prf_at(s, y, t)["precision"] for s, y in zip(scores, labels)]) >= target:
            return float(t)
    return float(grid[-1]) if len(grid) else 1.0


def precise_f1_threshold(scores: np.ndarray, labels: np.ndarray, target: float = TARGET_PRECISION) -> float:
    """The threshold with the best F1 among those whose precision reaches ``target`` (ties: the
    higher threshold), moved halfway (in logit) towards the next lower score so that it does not
    sit on a labelled pair; the highest score when none qualifies. For the user's own labels,
    where the lowest threshold reaching the precision can sit far below every duplicate."""
    from bellm_search.eval.metrics import pr_curve

    curve = pr_curve(scores, labels)
    ok = np.flatnonzero(curve["precision"] >= target)
    if not len(ok):
        return float(curve["threshold"][-1])
    f1 = curve["f1"][ok]
    k = ok[len(ok) - 1 - int(np.argmax(f1[::-1]))]
    thr = curve["threshold"]
    if k == 0:
        return float(thr[0])
    lo, hi = float(thr[k - 1]), float(thr[k])
    if 0.0 < lo < hi < 1.0:
        from bellm_search.pairs.model import logit, sigmoid

        return float(sigmoid(0.5 * (logit(lo) + logit(hi))))
    return 0.5 * (lo + hi)


def set_weights(sizes: Sequence[int], total: float = 1.0) -> np.ndarray:
    """Per-pair weights giving each set the same share of ``total``."""
    return np.concatenate([np.full(n, total / (len(sizes) * n)) for n in sizes])


def fit(sets: Sequence[Any], names: Sequence[str] = SHIPPED_FEATURES, floor: float = COSINE_FLOOR,
        target: float = TARGET_PRECISION, extra: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> PairModel:
    """The pair model fitted on ``sets`` (``DevSet``-like: X with columns FEATURES, y), threshold
    and cosine-only threshold by the precision rule over the sets. ``extra`` (X, y, weight) adds
    more weighted pairs to the fit (the user's labels)."""
    cols = [FEATURES.index(n) for n in names]
    X = np.concatenate([s.X[:, cols] for s in sets]) if sets else np.zeros((0, len(cols)))
    y = np.concatenate([s.y for s in sets]) if sets else np.zeros(0)
    w = set_weights([len(s.y) for s in sets]) if sets else np.zeros(0)
    groups = np.repeat(np.arange(len(sets)), [len(s.y) for s in sets])
    if extra is not None:
        X, y, w = np.concatenate([X, extra[0][:, cols]]), np.concatenate([y, extra[1]]), np.concatenate([w, extra[2]])
        groups = np.r_[groups, np.full(len(extra[1]), len(sets))]
    model = fit_pair_model(X, y, names, w, floor, groups=groups)
    if not sets:
        return model
    scores = [model.score(s.X[:, cols]) for s in sets]
    cos = [np.where(s.X[:, 0] >= floor, s.X[:, 0], s.X[:, 0] - 1.0) for s in sets]
    return _replace(model, threshold=_open01(precision_threshold(scores, [s.y for s in sets], target)),
                    cosine_threshold=precision_threshold(cos, [s.y for s in sets], target))


def _open01(t: float) -> float:
    return float(min(max(t, 1e-3), 1 - 1e-3))


def _replace(model: PairModel, **changes: Any) -> PairModel:
    import dataclasses

    return dataclasses.replace(model, **changes)


def evaluate(scores: Sequence[np.ndarray], labels: Sequence[np.ndarray], threshold: float,
             names: Sequence[str]) -> dict[str, Any]:
    """AP and P/R/F1 at ``threshold`` per set, and their means."""
    per = {n: {"ap": average_precision(s, y), **prf_at(s, y, threshold)} for n, s, y in zip(names, scores, labels)}
    mean = {k: float(np.mean([v[k] for v in per.values()])) for k in ("ap", "precision", "recall", "f1")}
    return {"threshold": threshold, "sets": per, "mean": mean}


def model_scores(model: PairModel, sets: Sequence[Any]) -> list[np.ndarray]:
    cols = [FEATURES.index(n) for n in model.features]
    return [model.score(s.X[:, cols]) for s in sets]


def leave_one_set_out(sets: Sequence[Any], names: Sequence[str] = SHIPPED_FEATURES,
                      floor: float = COSINE_FLOOR, target: float = TARGET_PRECISION,
                      select: bool = False) -> dict[str, Any]:
    """Fit the model and choose its threshold on all sets but one; AP and F1 on the held-out one.
    ``select``: the features too are chosen on those sets (``choose_features``, nested), as the
    shipped calibration chooses them on all sets."""
    out: dict[str, Any] = {}
    for held in range(len(sets)):
        rest = [s for k, s in enumerate(sets) if k != held]
        chosen = choose_features(rest, names, floor, target)[0] if select else tuple(names)
        model = fit(rest, chosen, floor, target)
        s = model_scores(model, [sets[held]])[0]
        out[sets[held].name] = {"ap": average_precision(s, sets[held].y), **prf_at(s, sets[held].y, model.threshold),
                                "threshold": model.threshold, "features": list(chosen)}
    out["mean"] = {k: float(np.mean([v[k] for v in out.values()])) for k in ("ap", "f1", "precision", "recall")}
    return out


# jaccard5 = c r / (1 + r - c r), c the containment and r the length ratio, all three over the same
# 5-gram hash sets: one of them says nothing the other two do not, and that redundancy lets the
# weights trade between them differently on each set. Which one to leave out (or none) is chosen
# by leave-one-set-out, and the reported leave-one-set-out figures choose it inside (nested).
REDUNDANT = ("jaccard5", "containment", "length_ratio")


def feature_options(names: Sequence[str] = SHIPPED_FEATURES) -> list[tuple[str, ...]]:
    """``names``, then ``names`` without each of REDUNDANT (only when all three are in it)."""
    names = tuple(names)
    if not set(REDUNDANT) <= set(names):
        return [names]
    return [names] + [tuple(n for n in names if n != r) for r in REDUNDANT]


def choose_features(sets: Sequence[Any], names: Sequence[str] = SHIPPED_FEATURES, floor: float = COSINE_FLOOR,
                    target: float = TARGET_PRECISION) -> tuple[tuple[str, ...], dict[tuple[str, ...], dict]]:
    """The option of ``feature_options(names)`` with the best leave-one-set-out mean AP + F1 at
    the precision rule (ties: fewer features, then the earlier option), and every option's
    leave-one-set-out means. Fewer than two sets: ``names`` as they are."""
    options = feature_options(names)
    if len(sets) < 2 or len(options) == 1:
        return tuple(names), {}
    means = {opt: leave_one_set_out(sets, opt, floor, target)["mean"] for opt in options}
    best = max(options, key=lambda o: (round(means[o]["ap"] + means[o]["f1"], 9), -len(o), -options.index(o)))
    return best, means


# ----------------------------------------------------------------------------- the shipped calibration
def shipped_calibration(sets: Sequence[Any], adapter_sha: str, encoder: dict[str, Any],
                        names: Sequence[str] = SHIPPED_FEATURES, floor: float = COSINE_FLOOR,
                        target: float = TARGET_PRECISION, select: bool = True) -> dict[str, Any]:
    """The content of ``bellm_search/calibration.json`` for the encoder ``encoder`` (its identity);
    ``select``: the features chosen among ``feature_options(names)`` (else ``names``)."""
    chosen = choose_features(sets, names, floor, target)[0] if select else tuple(names)
    model = fit(sets, chosen, floor, target)
    dev = evaluate(model_scores(model, sets), [s.y for s in sets], model.threshold, [s.name for s in sets])
    loso = leave_one_set_out(sets, names if select else chosen, floor, target, select=select)
    left_out = [n for n in names if n not in chosen]
    return {"version": 2, "model": model.to_dict(), "threshold": round(model.threshold, 6),
            "cosine_threshold": round(model.cosine_threshold, 6), "cosine_floor": floor,
            "adapter_sha256": adapter_sha, "encoder": {k: encoder.get(k) for k in ("model", "adapter_sha256")},
            "chosen_by": f"logistic pair model fitted on {', '.join(s.name for s in sets)} (each set weighted "
                         f"equally, with its own intercept; the model's bias is their weighted mean); "
                         + (f"left out {', '.join(left_out) or 'no feature'} (of the redundant {'/'.join(REDUNDANT)}) "
                            f"by leave-one-set-out mean AP + F1; " if select else "")
                         + f"threshold: the lowest with mean precision >= {target}",
            "pairs": {s.name: int(len(s.y)) for s in sets},
            "mean_ap": round(dev["mean"]["ap"], 4), "mean_f1_at_threshold": round(dev["mean"]["f1"], 4),
            "leave_one_set_out": {"mean_ap": round(loso["mean"]["ap"], 4), "mean_f1": round(loso["mean"]["f1"], 4),
                                  "features_chosen_inside": select},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def save_dev_features(sets: Sequence[Any], adapter_sha: str, path: Path = DEV_FEATURES) -> None:
    """The dev pairs' features (float16, small) next to the shipped calibration, so a user's
    ``calibrate`` can refit on them without the dev data or re-encoding."""
    from bellm_search._fs import atomic_write

    arrays = {"adapter_sha256": np.array(adapter_sha), "features": np.array(FEATURES),
              **{f"X_{s.name}": s.X.astype(np.float16) for s in sets}, **{f"y_{s.name}": s.y.astype(np.int8) for s in sets}}
    atomic_write(path, lambda fh: np.savez_compressed(fh, **arrays), mode="wb")


def load_dev_features(adapter_sha: str | None, path: Path = DEV_FEATURES) -> list[Any]:
    """The shipped dev features when they were computed with this adapter; else []."""
    from bellm_search.eval.devsets import DevSet

    if not adapter_sha or not path.is_file():
        return []
    saved = np.load(path)
    if str(saved["adapter_sha256"]) != adapter_sha or list(saved["features"]) != list(FEATURES):
        return []
    names = [k[2:] for k in saved.files if k.startswith("X_")]
    return [DevSet(n, saved[f"X_{n}"].astype(np.float64), saved[f"y_{n}"].astype(np.int64)) for n in names]


# ----------------------------------------------------------------------------- a collection's own calibration
def user_pairs(coll: Any, labels_path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The user's answered labels as (features (n, len(FEATURES)), 0/1 labels, problems)."""
    from bellm_search.dedup.calibration import doc_sides
    from bellm_search.dedup.labels import answered, read_labels
    from bellm_search.pairs.features import pair_features

    rows = answered(read_labels(labels_path))
    ids = coll.store.lookup_keys([str(r[s]) for r in rows for s in ("a", "b")])
    ia, ib = np.array(ids[0::2], dtype=object), np.array(ids[1::2], dtype=object)
    live = np.array([a is not None and b is not None and coll.store.get_doc(a) and coll.store.get_doc(b)
                     for a, b in zip(ia, ib)], dtype=bool)
    problems = [f"{(~live).sum()} labelled pairs name documents not in the collection (skipped)"] if (~live).any() else []
    ia, ib = ia[live].astype(np.int64), ib[live].astype(np.int64)
    y = np.array([int(r["duplicate"]) for r, ok in zip(rows, live) if ok], dtype=np.int64)
    if not len(y):
        return np.zeros((0, len(FEATURES))), y, problems
    cos = np.einsum("ij,ij->i", coll.store.get_vectors(ia), coll.store.get_vectors(ib)).astype(np.float64)
    return pair_features(cos, *doc_sides(coll, ia, ib, True), FEATURES), y, problems


def cross_validate(dev: Sequence[Any], X: np.ndarray, y: np.ndarray, names: Sequence[str], floor: float,
                   folds: int = 5, seed: int = 0) -> tuple[np.ndarray, float]:
    """Out-of-fold probabilities of the user's pairs (each fold's model fitted on the dev sets plus
    the other folds), and the threshold ``precise_f1_threshold`` picks on them."""
    fold = np.random.default_rng(seed).permutation(len(y)) % min(folds, len(y))
    prob = np.zeros(len(y))
    cols = [FEATURES.index(n) for n in names]
    for f in np.unique(fold):
        tr = fold != f
        model = fit(dev, names, floor, extra=(X[tr], y[tr], np.full(tr.sum(), USER_SHARE / len(y))))
        prob[~tr] = model.score(X[~tr][:, cols])
    return prob, precise_f1_threshold(prob, y)


def fit_collection(coll: Any, labels_path: Path, folds: int = 5) -> tuple[PairModel, dict[str, Any]]:
    """The pair model refitted on the dev pairs (when computed with this collection's encoder) plus
    the user's labels, weighted up, and what to record about it (cross-validated P/R/F1 on the
    user's labels included). Nothing is written."""
    from bellm_search.dedup.calibration import SHIPPED, read_calibration
    from bellm_search.errors import ConfigError

    X, y, problems = user_pairs(coll, Path(labels_path))
    if len(y) < MIN_LABELS or y.min() == y.max():
        raise ConfigError(f"{labels_path}: {len(y)} answered pairs ({int(y.sum())} duplicates): calibrate needs at "
                          f"least {MIN_LABELS}, both duplicates and not; label more with `bellm-search label`")
    encoder = dict(coll.manifest.get("encoder", {}))
    dev = load_dev_features(encoder.get("adapter_sha256"))
    names = PairModel.from_dict(read_calibration(SHIPPED)["model"]).features if dev else FEATURES
    prob, threshold = cross_validate(dev, X, y, names, COSINE_FLOOR, folds)
    model = fit(dev, names, COSINE_FLOOR, extra=(X, y, np.full(len(y), USER_SHARE / len(y))))
    cos = np.where(X[:, 0] >= COSINE_FLOOR, X[:, 0], X[:, 0] - 1.0)
    model = _replace(model, threshold=_open01(threshold), cosine_threshold=precision_threshold([cos], [y]))
    record = {"version": 2, "model": model.to_dict(), "threshold": model.threshold, "cosine_threshold": model.cosine_threshold,
              "adapter_sha256": encoder.get("adapter_sha256"),
              "encoder": {k: encoder.get(k) for k in ("model", "adapter_sha256")},
              "labels": int(len(y)), "duplicates": int(y.sum()), "dev_pairs": int(sum(len(s.y) for s in dev)),
              "user_share": USER_SHARE, "cv": {**prf_at(prob, y, threshold), "folds": int(min(folds, len(y)))},
              "problems": problems, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return model, record


def calibrate_collection(coll: Any, labels_path: Path, folds: int = 5) -> dict[str, Any]:
    """``fit_collection``, then write ``COLL/calibration.json`` (atomically) and record it in the
    manifest; from then on ``decision_for(coll)`` uses it. See /work/notes/calibration_api.txt."""
    from bellm_search._fs import write_json_atomic
    from bellm_search.collection.manifest import write_manifest
    from bellm_search.dedup.calibration import CALIBRATION_FILE

    model, record = fit_collection(coll, labels_path, folds)
    path = Path(coll.path) / CALIBRATION_FILE
    write_json_atomic(path, record)
    coll.manifest["calibration"] = {"file": CALIBRATION_FILE, "adapter_sha256": record["adapter_sha256"],
                                    "model": record["encoder"]["model"], "labels": record["labels"],
                                    "created": record["created"]}
    write_manifest(Path(coll.path), coll.manifest)
    return {**{k: record[k] for k in ("labels", "duplicates", "dev_pairs", "cv", "threshold", "encoder", "problems")},
            "not_duplicates": record["labels"] - record["duplicates"], "user_weight": USER_SHARE, "path": str(path)}
