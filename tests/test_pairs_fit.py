"""Fitting the pair model on several labelled sets (eval/calibrate.py, pairs/model.py)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bellm_search.eval.calibrate import choose_features, fit, leave_one_set_out
from bellm_search.pairs.features import FEATURES


@dataclass
class _Set:
    name: str
    X: np.ndarray
    y: np.ndarray


def _set(name: str, cos_lo: float, n: int, seed: int, slope: float = 20.0, lr_artefact: bool = False,
         width: float = 0.2) -> _Set:
    """Pairs whose cosine is uniform over [cos_lo, cos_lo + width] and decides the label within
    the set (logit = slope * (cosine - middle)): every set has about half duplicates, wherever its
    cosines lie. ``lr_artefact``: here (only) the length ratio follows the label too."""
    rng = np.random.default_rng(seed)
    X = np.zeros((n, len(FEATURES)))
    X[:, 0] = cos_lo + width * rng.random(n)
    y = (rng.random(n) < 1 / (1 + np.exp(-slope * (X[:, 0] - cos_lo - width / 2)))).astype(np.int64)
    lr = FEATURES.index("length_ratio")
    X[:, lr] = np.clip(0.5 + (0.4 * (y - 0.5) if lr_artefact else 0) + 0.2 * rng.standard_normal(n), 0, 1)
    return _Set(name, X, y)


def test_sets_with_other_cosine_ranges_do_not_flatten_the_cosine_weight():
    # Within each set the cosine decides (slope 20), but the sets sit at different cosines with the
    # same share of duplicates: pooled with one intercept, the between-set contrast (higher cosine,
    # no more duplicates) pulled the cosine weight down to a fraction of it; with one intercept
    # per set it is what each set alone gives (less the ridge's shrinkage).
    sets = [_set("low", 0.5, 4000, 0, width=0.3), _set("high", 0.7, 4000, 1, width=0.3)]
    alone = [fit([s], ("cosine", "jaccard5"), floor=0.5).weights[0] for s in sets]
    model = fit(sets, ("cosine", "jaccard5"), floor=0.5)
    w = dict(zip(model.features, model.weights))["cosine"]
    assert min(alone) > 15 and w > 0.8 * min(alone), (w, alone)
    assert all(v >= 0 for v in model.weights)
    # the shared bias sits between the sets' own intercepts (-20 * 0.65 and -20 * 0.85)
    assert -w * 0.85 - 1 < model.bias < -w * 0.65 + 1


def test_the_redundant_feature_is_chosen_by_leave_one_set_out_and_nested_inside_it():
    # The length ratio follows the label on one set only: a model fitted on that set and another
    # leans on it and loses on the third, so leave-one-set-out leaves it out.
    sets = [_set("a", 0.5, 3000, 2, slope=12, lr_artefact=True), _set("b", 0.55, 3000, 3, slope=12),
            _set("c", 0.6, 3000, 4, slope=12)]
    chosen, options = choose_features(sets, FEATURES, floor=0.5)
    assert "length_ratio" not in chosen and set(FEATURES) - set(chosen) == {"length_ratio"}
    assert len(options) == 4 and options[chosen]["f1"] + options[chosen]["ap"] >= max(
        m["f1"] + m["ap"] for m in options.values()) - 1e-9
    nested = leave_one_set_out(sets, FEATURES, floor=0.5, select=True)
    for k, s in enumerate(sets):  # each held-out set's features were chosen without it
        rest = [x for j, x in enumerate(sets) if j != k]
        assert nested[s.name]["features"] == list(choose_features(rest, FEATURES, floor=0.5)[0])
    plain = leave_one_set_out(sets, chosen, floor=0.5)
    assert set(plain["mean"]) >= {"ap", "f1", "precision", "recall"}
