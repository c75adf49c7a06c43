"""The fixed, seeded calibration slice of the Twitter-URL train split.

Twitter-URL train may be trained on, minus this slice: it is kept for dedup calibration and model
selection (with PIT-2015 dev and MRPC train). Training-data preparation and dedup calibration both
take the slice from here, so they can never disagree about which pairs are held back."""
from __future__ import annotations

import numpy as np

CALIBRATION_SEED = 20241130
CALIBRATION_SIZE = 5000


def calibration_mask(n_pairs: int, size: int = CALIBRATION_SIZE, seed: int = CALIBRATION_SEED) -> np.ndarray:
    """Boolean mask over the ``n_pairs`` pairs of Twitter-URL train (file order): True = calibration
    slice (never trained on). Deterministic for a given (n_pairs, size, seed)."""
    if not 0 <= size <= n_pairs:
        raise ValueError(f"calibration slice of {size} pairs does not fit {n_pairs} pairs")
    pick = np.random.default_rng(seed).permutation(n_pairs)[:size]
    mask = np.zeros(n_pairs, dtype=bool)
    mask[pick] = True
    return mask
