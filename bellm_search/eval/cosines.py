"""The one "encode each text once, then cosine" helper (pair evaluation, STS, calibration)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _texts(pair: Any) -> tuple[str, str]:
    return (pair.text1, pair.text2) if hasattr(pair, "text1") else (pair[0], pair[1])


def pair_cosines(pairs: Sequence[Any], encoder: Any, **encode_kwargs: Any) -> np.ndarray:
    """Cosine of each pair's two texts (``Pair``, ``StsPair`` or ``(text1, text2)``); each distinct
    text is encoded once. The encoder returns L2-normalised vectors, so cosine = dot product."""
    both = [_texts(p) for p in pairs]
    texts = list(dict.fromkeys(t for pair in both for t in pair))
    if not texts:
        return np.zeros(0, dtype=np.float64)
    row = {t: i for i, t in enumerate(texts)}
    vecs = np.asarray(encoder.encode(texts, **encode_kwargs), dtype=np.float32)
    a = vecs[[row[t1] for t1, _ in both]]
    b = vecs[[row[t2] for _, t2 in both]]
    return np.einsum("ij,ij->i", a, b).astype(np.float64)
