"""The duplicate score of a candidate pair."""
from __future__ import annotations

import hashlib
import html
import math
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from bellm_search.errors import ConfigError
from bellm_search.pairs.normalize import char_shingles, jaccard


COSINE_FLOOR = 0.65  # the highest floor on a 0.05 grid that costs no dev F1 at the precision rule (README)


@dataclass(frozen=True)
class PairScore:
    """The duplicate score of a candidate pair.

    ``lexical_weight`` w = 0: the cosine of the two vectors. w > 0: ``(1 - w) * cosine + w *
    J``, J the Jaccard similarity of the character 5-grams of the two social-normalised texts,
    for pairs whose cosine reaches ``cosine_floor``; a pair below the floor scores
    ``cosine - 1`` (below every floor-passing pair, so never a duplicate at a threshold > 0,
    and rankings stay monotone in the cosine there). The floor is what lets the search stay a
    cosine k-NN search: only pairs with cosine >= ``candidate_threshold(t)`` can reach t.
    A pair where either text is missing (vectors ingested without text) scores its cosine.
    """

    lexical_weight: float = 0.0
    cosine_floor: float = COSINE_FLOOR
    shingle: int = 5

    def __post_init__(self) -> None:
        if not 0.0 <= self.lexical_weight < 1.0:
            raise ConfigError(f"lexical weight must be in [0, 1), got {self.lexical_weight}")
        if not 0.0 < self.cosine_floor <= 1.0:
            raise ConfigError(f"cosine floor must be in (0, 1], got {self.cosine_floor}")

    @property
    def lexical(self) -> bool:
        return self.lexical_weight > 0.0

    def candidate_threshold(self, threshold: float) -> float:
        """The least cosine a pair needs to score >= ``threshold``."""
        if not self.lexical:
            return threshold
        w = self.lexical_weight
        return max(self.cosine_floor, (threshold - w) / (1.0 - w))

    def combine(self, cosine: Any, jac: Any) -> np.ndarray:
        """Scores from cosines and Jaccards (NaN Jaccard: the text is missing -> the cosine)."""
        cos = np.asarray(cosine, dtype=np.float64)
        if not self.lexical:
            return cos
        j = np.asarray(jac, dtype=np.float64)
        w = self.lexical_weight
        mixed = np.where(np.isnan(j), cos, (1.0 - w) * cos + w * np.nan_to_num(j))
        return np.where(cos >= self.cosine_floor, mixed, cos - 1.0)

    def describe(self) -> str:
        if not self.lexical:
            return "cosine"
        w = self.lexical_weight
        return f"{1 - w:.2g}*cosine + {w:.2g}*jaccard5 (cosine >= {self.cosine_floor:g})"


def pair_jaccards(texts_a: Sequence[str | None], texts_b: Sequence[str | None], n: int = 5,
                  cache: dict[Any, set] | None = None) -> np.ndarray:
    """Character n-gram Jaccard of each pair; NaN where a text is None. Shingle sets are cached
    by text (pass ``cache`` to share it across calls)."""
    cache = {} if cache is None else cache

    def sh(text: str) -> set:
        got = cache.get(text)
        if got is None:
            got = cache[text] = char_shingles(text, n)
        return got

    return np.array([np.nan if a is None or b is None else jaccard(sh(a), sh(b))
                     for a, b in zip(texts_a, texts_b)], dtype=np.float64)


