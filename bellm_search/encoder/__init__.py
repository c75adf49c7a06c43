"""The BeLLM encoder. ``Encoder`` is imported lazily so this package stays light to import."""
from __future__ import annotations

from typing import Any

__all__ = ["Encoder", "resolve_config"]


def __getattr__(name: str) -> Any:
    if name == "Encoder":
        from bellm_search.encoder.encode import Encoder

        return Encoder
    if name == "resolve_config":
        from bellm_search.encoder.resolve import resolve_config

        return resolve_config
    raise AttributeError(name)
