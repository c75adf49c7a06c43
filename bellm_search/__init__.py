"""bellm-search: vector search and near-duplicate detection with BeLLM sentence embeddings."""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Encoder", "EncoderConfig", "Collection", "__version__"]


def __getattr__(name: str) -> Any:  # lazy: importing the package must not import torch or faiss
    if name == "Encoder":
        from bellm_search.encoder.encode import Encoder

        return Encoder
    if name == "EncoderConfig":
        from bellm_search.config import EncoderConfig

        return EncoderConfig
    if name == "Collection":
        from bellm_search.collection.core import Collection

        return Collection
    raise AttributeError(f"module 'bellm_search' has no attribute {name!r}")
