"""Adapter folders: peft files plus bellm_adapter.json. No torch here (read by light code paths)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bellm_search.config import EMBEDDED_MODEL, EncoderConfig
from bellm_search.errors import ModelError

ADAPTER_JSON = "bellm_adapter.json"
ADAPTER_FORMAT = 1


@dataclass
class AdapterInfo:
    path: Path
    settings: dict[str, Any]  # from bellm_adapter.json; {} for a bare peft adapter
    base_model: str | None  # from bellm_adapter.json, else adapter_config.json


def read_adapter(path: str | Path) -> AdapterInfo:
    """Validate an adapter folder: peft files, optional bellm_adapter.json."""
    folder = Path(path)
    peft_cfg = folder / "adapter_config.json"
    if not peft_cfg.is_file():
        raise ModelError(f"adapter {folder}: no adapter_config.json there (pass --adapter with a peft adapter folder)")
    settings: dict[str, Any] = {}
    if (folder / ADAPTER_JSON).is_file():
        settings = _read_json(folder / ADAPTER_JSON)
        if settings.get("format") != ADAPTER_FORMAT:
            raise ModelError(f"{folder / ADAPTER_JSON}: unsupported format {settings.get('format')!r}")
    base = settings.get("base_model") or _read_json(peft_cfg).get("base_model_name_or_path")
    if base is not None and not isinstance(base, str):
        raise ModelError(f"adapter {folder}: the base model must be a name or path, got {base!r:.60}")
    return AdapterInfo(folder, settings, base)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad UTF-8 or JSON, huge numbers
        raise ModelError(f"{path}: unreadable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return data


def write_adapter_json(folder: Path, config: EncoderConfig, extra: dict[str, Any] | None = None) -> None:
    data = {
        "format": ADAPTER_FORMAT,
        "base_model": config.model or EMBEDDED_MODEL,
        "bidirectional_layers": config.bidirectional_layers,
        "pooling": config.pooling,
        "prompt": config.resolved_prompt,
        "max_length": config.max_length,
        "padding_side": config.padding_side,
    }
    data.update(extra or {})
    (folder / ADAPTER_JSON).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
