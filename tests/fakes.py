"""A deterministic stand-in encoder: hand-made vectors for planted texts, hashed ones otherwise."""
from __future__ import annotations

import hashlib
import time

import numpy as np

from bellm_search.config import EncoderConfig

DIM = 16


def base_vector(name: str, dim: int = DIM) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def near(v: np.ndarray, cos: float, name: str) -> np.ndarray:
    """A unit vector whose cosine with unit v is exactly ``cos``."""
    w = base_vector("orth:" + name, len(v))
    w = w - (w @ v) * v
    w /= np.linalg.norm(w)
    return (cos * v + np.sqrt(1 - cos**2) * w).astype(np.float32)


class FakeEncoder:
    """``encode`` like the real Encoder; ``table`` maps planted texts to vectors."""

    def __init__(self, table: dict[str, np.ndarray] | None = None, dim: int = DIM, delay: float = 0.0,
                 name: str = "fake-model") -> None:
        self.config = EncoderConfig(model=name, adapter=None)
        self.dim = dim
        self.table = table or {}
        self.delay = delay
        self.calls = 0
        self.truncated = 0

    def encode(self, texts, **_):
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        rows = [self.table.get(t) if t in self.table else base_vector(t, self.dim) for t in texts]
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, self.dim), np.float32)
