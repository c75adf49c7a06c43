"""The dedup development sets and their cached pair features.

Twitter-URL train's calibration slice (``splits.calibration_mask``: never trained on), PIT-2015
dev and MRPC train: the data the shipped pair model is fitted and its threshold chosen on. The
encoder's cosines are the slow part (every text encoded), so each set's features are cached in
``runs/`` keyed by the adapter's sha256: a refit for the same encoder costs seconds."""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bellm_search.eval.cosines import pair_cosines
from bellm_search.eval.datasets import Pair, read_pairs
from bellm_search.eval.splits import calibration_mask
from bellm_search.pairs.features import FEATURES, text_pair_features

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
DEV_SETS = {"twitter-url": "twitter-url/train", "pit2015": "pit2015/dev.data", "mrpc": "mrpc/msr_paraphrase_train.txt"}
CACHE = ROOT / "runs"


@dataclass
class DevSet:
    """One labelled dev set: its pairs' features (columns ``FEATURES``) and 0/1 labels."""

    name: str
    X: np.ndarray
    y: np.ndarray
    pairs: list[Pair] | None = None


def dev_pairs(name: str, data: Path = DATA) -> list[Pair]:
    """The labelled pairs of one dev set (Twitter-URL: only its calibration slice)."""
    pairs = read_pairs(data / DEV_SETS[name])
    if name == "twitter-url":
        mask = calibration_mask(len(pairs))
        pairs = [p for p, keep in zip(pairs, mask) if keep]
    return pairs


def load_dev_sets(encoder_sha: str, encoder: Callable[[], Any] | None = None, data: Path = DATA,
                  cache: Path = CACHE, limit: int | None = None) -> list[DevSet]:
    """Every dev set's features for the encoder with adapter sha256 ``encoder_sha``. The cosines come
    from the cache, else are computed (``encoder()`` builds the encoder, called only when something
    must be encoded); the lexical features are recomputed from the texts (seconds)."""
    out, built = [], None
    for name in DEV_SETS:
        pairs = dev_pairs(name, data)[:limit]
        path = cache / f"dedup_dev_{name}_{encoder_sha[:16]}_{len(pairs)}.npz"
        if path.is_file():
            saved = np.load(path)
            cos = saved["cos"] if "cos" in saved.files else saved["X"][:, 0]
        else:
            if encoder is None:
                raise FileNotFoundError(f"no cached dev cosines for encoder {encoder_sha[:12]} at {path}")
            built = built or encoder()
            log.info("encoding %s: %d pairs", name, len(pairs))
            cos = pair_cosines(pairs, built)
            cache.mkdir(parents=True, exist_ok=True)
            np.savez(path, cos=cos, y=np.array([p.label for p in pairs], dtype=np.int64))
        X = text_pair_features(cos, [p.text1 for p in pairs], [p.text2 for p in pairs], FEATURES)
        out.append(DevSet(name, X, np.array([p.label for p in pairs], dtype=np.int64), pairs))
    return out
