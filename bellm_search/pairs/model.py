"""The pair model: logistic regression over the pair features, its probability threshold, and the
cosine floor that bounds the candidate search. Pure numpy (no scikit-learn at run time).

Every feature is monotone in "more alike" and every weight is kept >= 0, so the probability is
monotone in each feature; with the lexical features at most 1, a pair needs at least
``candidate_cosine()`` to reach the threshold, which is what lets dedup stay a cosine k-NN search.
A pair without text (vectors ingested alone) is scored by the cosine-only model.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bellm_search.errors import ConfigError
from bellm_search.pairs.features import FEATURES

COSINE_FLOOR = 0.5  # the candidate-search bound of the shipped model (scripts/bench_dedup.py floor sweep)
GROUP_PENALTY = 1000.0  # a group's own intercept is penalised this many times less than a weight


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))


def logit(p: float) -> float:
    p = min(max(float(p), 1e-12), 1 - 1e-12)
    return float(np.log(p / (1 - p)))


def fit_logistic(X: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None, l2: float = 1e-2,
                 nonneg: bool = True, iters: int = 50, groups: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Weighted L2-penalised logistic regression by Newton steps on standardised columns;
    ``nonneg``: a column whose weight comes out negative is dropped (weight 0) and the rest refit.
    ``groups`` (one id per row, e.g. the dev set a pair comes from): each group gets its own
    intercept (penalised ``GROUP_PENALTY`` x less than the weights: barely, so that a group of one
    class stays finite), so the weights come from contrasts within the groups and the groups' base
    rates (which differ) do not leak into them; the returned bias is the groups' intercepts
    averaged with their total weights. Returns (weights, bias) on the raw columns."""
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64)
    w = np.ones(len(y)) if weight is None else np.asarray(weight, dtype=np.float64)
    w = w / w.mean()
    ids, g = np.unique(np.zeros(len(y), dtype=np.int64) if groups is None else np.asarray(groups), return_inverse=True)
    dummies = (g[:, None] == np.arange(1, len(ids))[None, :]).astype(np.float64)  # the first group: the reference
    share = np.bincount(g, weights=w, minlength=len(ids)) / w.sum()
    active = np.ones(X.shape[1], dtype=bool)
    while True:
        coef, bias = _newton(np.column_stack([X[:, active], dummies]), y, w, l2, iters, groups=dummies.shape[1])
        coef, offsets = coef[:active.sum()], np.r_[0.0, coef[active.sum():]]
        if not nonneg or (coef >= 0).all():
            out = np.zeros(X.shape[1])
            out[active] = coef
            return out, float(bias + share @ offsets)
        active[np.flatnonzero(active)[np.argmin(coef)]] = False


def _newton(X: np.ndarray, y: np.ndarray, w: np.ndarray, l2: float, iters: int,
            groups: int = 0) -> tuple[np.ndarray, float]:
    """Newton steps on standardised columns; the last ``groups`` columns (group indicators) are
    penalised ``GROUP_PENALTY`` times less."""
    mu, sd = X.mean(0), X.std(0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    Z = np.column_stack([np.ones(len(y)), (X - mu) / sd])
    beta = np.zeros(Z.shape[1])
    penalty = np.r_[0.0, np.full(Z.shape[1] - 1 - groups, l2), np.full(groups, l2 / GROUP_PENALTY)] * len(y)
    for _ in range(iters):
        p = sigmoid(Z @ beta)
        grad = Z.T @ (w * (p - y)) + penalty * beta
        hess = (Z * (w * p * (1 - p))[:, None]).T @ Z + np.diag(penalty) + 1e-9 * np.eye(Z.shape[1])
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    coef = beta[1:] / sd
    return coef, float(beta[0] - (coef * mu).sum())


@dataclass(frozen=True)
class PairModel:
    """Logistic pair model: P(duplicate) = sigmoid(bias + weights . features)."""

    features: tuple[str, ...]
    weights: tuple[float, ...]
    bias: float
    threshold: float                     # decision: probability >= threshold
    cosine_weight: float                 # the cosine-only model (pairs without text, pure-cosine mode)
    cosine_bias: float
    cosine_threshold: float = 1.0        # its decision: cosine >= cosine_threshold
    cosine_floor: float = COSINE_FLOOR   # candidates: cosine >= floor
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        unknown = [f for f in self.features if f not in FEATURES]
        if unknown or "cosine" not in self.features:
            raise ConfigError(f"pair model features {list(self.features)}: need 'cosine', may use {', '.join(FEATURES)}")
        if len(self.weights) != len(self.features) or any(wt < 0 for wt in self.weights):
            raise ConfigError("pair model weights: one non-negative weight per feature")
        if not 0.0 < self.threshold < 1.0 or not 0.0 < self.cosine_floor <= 1.0 or abs(self.cosine_threshold) > 1.0:
            raise ConfigError(f"pair model threshold {self.threshold} must be in (0, 1), floor in (0, 1]")

    @property
    def uses_text(self) -> bool:
        from bellm_search.pairs.features import TEXT_FEATURES

        return any(f in TEXT_FEATURES and wt > 0 for f, wt in zip(self.features, self.weights))

    def probability(self, X: np.ndarray) -> np.ndarray:
        """P(duplicate) per row of X (columns ``self.features``); rows with a NaN lexical feature
        (no text) use the cosine-only model."""
        X = np.asarray(X, dtype=np.float64).reshape(-1, len(self.features))
        cos = X[:, self.features.index("cosine")]
        missing = np.isnan(X).any(1)
        z = self.bias + np.nan_to_num(X) @ np.asarray(self.weights)
        z_cos = self.cosine_bias + self.cosine_weight * cos
        return sigmoid(np.where(missing, z_cos, z))

    def score(self, X: np.ndarray) -> np.ndarray:
        """The ranking score: the probability at or above the floor, ``cosine - 1`` (< 0) below it
        (never a candidate; the order there stays the cosine's)."""
        X = np.asarray(X, dtype=np.float64).reshape(-1, len(self.features))
        cos = X[:, self.features.index("cosine")]
        return np.where(cos >= self.cosine_floor, self.probability(X), cos - 1.0)

    def candidate_cosine(self) -> float:
        """The least cosine a pair needs to be a duplicate: the lexical features at their maximum
        (1), the cosine-only threshold for pairs without text, and the floor, whichever applies."""
        w_cos = self.weights[self.features.index("cosine")]
        lexical = sum(wt for f, wt in zip(self.features, self.weights) if f != "cosine")
        full = (logit(self.threshold) - self.bias - lexical) / w_cos if w_cos > 0 else self.cosine_floor
        return float(min(1.0, max(self.cosine_floor, min(full, self.cosine_threshold))))

    def decide(self, X: np.ndarray) -> np.ndarray:
        """Duplicate or not per row: probability >= threshold, or (no text) cosine >= cosine_threshold;
        never below the floor."""
        X = np.asarray(X, dtype=np.float64).reshape(-1, len(self.features))
        cos = X[:, self.features.index("cosine")]
        missing = np.isnan(X).any(1)
        full = self.probability(X) >= self.threshold
        return (cos >= self.cosine_floor) & np.where(missing, cos >= self.cosine_threshold, full)

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(self.features), "weights": [round(w, 6) for w in self.weights],
                "bias": round(self.bias, 6), "threshold": round(self.threshold, 6),
                "cosine_weight": round(self.cosine_weight, 6), "cosine_bias": round(self.cosine_bias, 6),
                "cosine_threshold": round(self.cosine_threshold, 6), "cosine_floor": self.cosine_floor}

    @classmethod
    def from_dict(cls, obj: Any) -> "PairModel":
        try:
            return cls(tuple(obj["features"]), tuple(float(w) for w in obj["weights"]), float(obj["bias"]),
                       float(obj["threshold"]), float(obj["cosine_weight"]), float(obj["cosine_bias"]),
                       float(obj["cosine_threshold"]), float(obj.get("cosine_floor", COSINE_FLOOR)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"invalid pair model ({exc}); re-run `bellm-search calibrate` or reinstall") from exc


def fit_pair_model(X: np.ndarray, y: np.ndarray, names: Sequence[str], weight: np.ndarray | None = None,
                   cosine_floor: float = COSINE_FLOOR, threshold: float = 0.5, cosine_threshold: float = 1.0,
                   l2: float = 1e-2, groups: np.ndarray | None = None) -> PairModel:
    """Fit the full model and the cosine-only model on the pairs at or above the floor (only those
    are ever scored by dedup); ``groups``: one intercept per group (``fit_logistic``)."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    c = list(names).index("cosine")
    keep = (X[:, c] >= cosine_floor) & ~np.isnan(X).any(1)
    wt = None if weight is None else np.asarray(weight)[keep]
    grp = None if groups is None else np.asarray(groups)[keep]
    coef, bias = fit_logistic(X[keep], y[keep], wt, l2, groups=grp)
    (cw,), cb = fit_logistic(X[keep][:, [c]], y[keep], wt, l2, groups=grp)
    return PairModel(tuple(names), tuple(float(v) for v in coef), bias, threshold, float(cw), cb, cosine_threshold,
                     cosine_floor)
