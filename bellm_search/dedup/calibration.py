"""Which pair model and threshold decide "duplicate" for a collection, and scoring pairs with it.

A calibration is fitted for one encoder: its cosines mean nothing in another vector space. So the
collection's own calibration (``COLL/calibration.json``, from the user's labels) applies when its
encoder identity matches the collection's; else the shipped one (``bellm_search/calibration.json``,
fitted on the dev sets) when its adapter sha256 matches; else nothing is applied silently: the
caller gives a threshold, or (``strict=False``, the server) gets a loud warning and a conservative
cosine threshold.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from bellm_search._fs import read_json_object
from bellm_search.errors import ConfigError
from bellm_search.pairs.features import doc_side, pair_features, record_shingle_bytes, stored_sides, text_pair_features
from bellm_search.pairs.model import PairModel
from bellm_search.pairs.shingles import from_bytes

log = logging.getLogger(__name__)

SHIPPED = Path(__file__).resolve().parent.parent / "calibration.json"
CALIBRATION_FILE = "calibration.json"
UNCALIBRATED_COSINE = 0.95  # pure cosine, only where nothing fits the encoder and strict=False
Source = Literal["collection", "shipped", "threshold", "uncalibrated"]


class CalibrationMismatch(ConfigError):
    """No calibration fits this collection's encoder, and no threshold was given."""


@dataclass(frozen=True)
class Decision:
    """How candidate pairs are judged: a pair model with a probability threshold, or pure cosine."""

    model: PairModel | None
    threshold: float
    source: Source
    cosine_floor: float
    warning: str | None = None

    @property
    def candidate_cosine(self) -> float:
        """The least cosine a pair needs to possibly be a duplicate (the k-NN search bound)."""
        if self.model is None:
            return self.threshold
        if self.threshold == self.model.threshold:
            return self.model.candidate_cosine()
        return _with_threshold(self.model, self.threshold).candidate_cosine()

    def describe(self) -> str:
        if self.model is None:
            return f"cosine >= {self.threshold:.3f} ({self.source})"
        return f"P(duplicate) >= {self.threshold:.3f} (pair model, {self.source}; cosine >= {self.cosine_floor:g})"

    def judge(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probability, is_duplicate) per feature row; pure cosine: (cosine, cosine >= threshold)."""
        if self.model is None:
            cos = np.asarray(X, dtype=np.float64)[:, 0]
            return cos, cos >= self.threshold
        model = self.model if self.threshold == self.model.threshold else _with_threshold(self.model, self.threshold)
        return model.probability(X), model.decide(X)

    @property
    def features(self) -> tuple[str, ...]:
        return self.model.features if self.model else ("cosine",)

    def probabilities(self, coll: Any, ids_a: np.ndarray, ids_b: np.ndarray,
                      cosines: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(features (n, k), probability) of stored documents' pairs (int ids)."""
        cos = np.asarray(cosines, dtype=np.float64)
        if self.model is None:
            return cos[:, None], cos
        X = pair_features(cos, *doc_sides(coll, ids_a, ids_b, self.model.uses_text), self.model.features)
        return X, self.judge(X)[0]

    def text_probabilities(self, cosines: np.ndarray, texts_a: Sequence[str | None],
                           texts_b: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
        """(features, probability) of text pairs, e.g. a query text against its hits."""
        cos = np.asarray(cosines, dtype=np.float64)
        if self.model is None:
            return cos[:, None], cos
        X = text_pair_features(cos, texts_a, texts_b, self.model.features)
        return X, self.judge(X)[0]


def _with_threshold(model: PairModel, threshold: float) -> PairModel:
    import dataclasses

    return dataclasses.replace(model, threshold=threshold)


# ----------------------------------------------------------------------------- finding the calibration
def read_calibration(path: Path) -> dict[str, Any]:
    """A calibration file: {"model": {...PairModel}, "adapter_sha256", "encoder", ...}."""
    obj = read_json_object(path, "calibration")
    if not isinstance(obj.get("model"), dict):
        raise ConfigError(f"{path}: no pair model in it; re-run `bellm-search calibrate` (or reinstall the package)")
    return obj


def default_cosine_threshold() -> float:
    """The shipped calibration's pure-cosine threshold (for the default adapter only: prefer
    ``decision_for(coll, pure_cosine=True)``, which checks the encoder)."""
    return float(read_json_object(SHIPPED, "calibration")["cosine_threshold"])


def _encoder_of(coll: Any) -> dict[str, Any]:
    return dict(coll.manifest.get("encoder", {}))


def _fits(cal: dict[str, Any], encoder: dict[str, Any], keys: tuple[str, ...]) -> bool:
    return all(cal.get("encoder", {}).get(k, cal.get(k)) == encoder.get(k) for k in keys)


def find_calibration(coll: Any) -> tuple[dict[str, Any] | None, Source]:
    """The calibration that applies to ``coll``'s encoder, and where it came from (None: none does)."""
    encoder = _encoder_of(coll)
    local = Path(coll.path) / CALIBRATION_FILE
    if local.is_file():
        cal = read_json_object(local, "calibration")
        if _fits(cal, encoder, ("adapter_sha256", "model")):
            return read_calibration(local), "collection"
        log.warning("%s was fitted for another encoder; it is not used", local)
    if SHIPPED.is_file():
        cal = read_json_object(SHIPPED, "calibration")
        if cal.get("adapter_sha256") and cal["adapter_sha256"] == encoder.get("adapter_sha256"):
            return read_calibration(SHIPPED), "shipped"
    return None, "uncalibrated"


def how_to_calibrate(coll: Any) -> str:
    return (f"no dedup calibration fits the encoder of {coll.path} (adapter sha256 "
            f"{str(_encoder_of(coll).get('adapter_sha256'))[:12]}; the shipped one is for the default adapter): "
            f"give --threshold (a cosine), or label pairs with `bellm-search label -c {coll.path}` and run "
            f"`bellm-search calibrate -c {coll.path}`")


def decision_for(coll: Any, threshold: float | None = None, pure_cosine: bool = False,
                 strict: bool = True) -> Decision:
    """The decision ``dedup`` (and the server) applies to ``coll``; see the module docstring.

    ``threshold``: the user's, a probability when a pair model applies, else a cosine.
    ``pure_cosine``: the cosine alone (fast; vectors without text), at the calibration's cosine
    threshold unless one is given."""
    cal, source = find_calibration(coll)
    if cal is None:
        if threshold is not None:
            return Decision(None, float(threshold), "threshold", float(threshold))
        if strict:
            raise CalibrationMismatch(how_to_calibrate(coll))
        message = how_to_calibrate(coll) + f"; using cosine >= {UNCALIBRATED_COSINE} meanwhile"
        log.warning("%s", message)
        return Decision(None, UNCALIBRATED_COSINE, "uncalibrated", UNCALIBRATED_COSINE, message)
    model = PairModel.from_dict(cal["model"])
    if pure_cosine:
        t = model.cosine_threshold if threshold is None else float(threshold)
        return Decision(None, t, source if threshold is None else "threshold", model.cosine_floor)
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise ConfigError(f"--threshold {threshold}: with the pair model it is a probability in (0, 1) "
                          "(or use --score cosine for a cosine threshold)")
    t = model.threshold if threshold is None else float(threshold)
    return Decision(model, t, source if threshold is None else "threshold", model.cosine_floor)


# ----------------------------------------------------------------------------- document features
def doc_sides(coll: Any, ids_a: np.ndarray, ids_b: np.ndarray, with_words: bool) -> tuple[list, list]:
    """Per pair, each document's feature inputs: stored shingle hashes (computed from the record's
    text where the store has none), plus word hashes from the text when the model uses them. A
    document without text (or whose text normalises to nothing) has no side: its pairs are judged
    by the cosine-only model."""
    uniq = np.unique(np.concatenate([np.asarray(ids_a, dtype=np.int64), np.asarray(ids_b, dtype=np.int64)]))
    sides = dict(zip(uniq.tolist(), _sides(coll, uniq, with_words)))
    return [sides[int(i)] for i in ids_a], [sides[int(i)] for i in ids_b]


def _sides(coll: Any, ids: np.ndarray, with_words: bool) -> list:
    stored = getattr(coll.store, "shingles", None)
    if with_words and stored is not None:  # the 5-gram and word hashes stored at ingest
        return stored_sides(coll.store, ids)
    if with_words:  # a store without stored hashes (tests' stand-ins): from the text
        return [doc_side((d or {}).get("text")) for d in coll.store.get_docs(ids.tolist())]
    if stored is not None:
        hashes = stored(ids.tolist(), compute=record_shingle_bytes)
    else:
        hashes = [from_bytes(record_shingle_bytes(d or {})) for d in coll.store.get_docs(ids.tolist())]
    from bellm_search.pairs.features import DocSide

    return [DocSide(h) if len(h) else None for h in hashes]
