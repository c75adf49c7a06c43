"""Turning user options (CLI flags, API keywords) plus an adapter's JSON into an EncoderConfig."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from bellm_search.config import EMBEDDED_MODEL, EncoderConfig

NO_ADAPTER = "none"


def default_adapter_dir() -> Path:
    """The adapter shipped inside the package (trained on NLI for the embedded model)."""
    return Path(__file__).resolve().parent.parent / "default_adapter"


def has_default_adapter() -> bool:
    return (default_adapter_dir() / "adapter_config.json").is_file()


def resolve_config(
    model: str | None = None,
    adapter: str | None = None,
    *,
    bidirectional_layers: int | None = None,
    pooling: str | None = None,
    prompt: str | None = None,
    max_length: int | None = None,
    padding_side: str | None = None,
    **runtime: Any,
) -> EncoderConfig:
    """Explicit options win, then the adapter's bellm_adapter.json, then EncoderConfig defaults.

    With neither model nor adapter, the shipped default adapter is used (``adapter="none"``
    gives the bare embedded model). A bare peft adapter takes its base model from
    adapter_config.json unless ``model`` is given.
    """
    from bellm_search.encoder.adapter import read_adapter

    if adapter == NO_ADAPTER:
        adapter = None
    elif adapter is None and model is None and has_default_adapter():
        adapter = str(default_adapter_dir())
    info = read_adapter(adapter) if adapter else None
    saved = info.settings if info else {}
    base = model or (info.base_model if info else None)
    explicit = {
        "bidirectional_layers": bidirectional_layers,
        "pooling": pooling,
        "prompt": prompt,
        "max_length": max_length,
        "padding_side": padding_side,
    }
    fields: dict[str, Any] = {k: saved[k] for k in explicit if k in saved}
    fields.update({k: v for k, v in explicit.items() if v is not None})
    fields.update({k: v for k, v in runtime.items() if v is not None})
    return EncoderConfig(model=None if base == EMBEDDED_MODEL else base, adapter=adapter, **fields)
