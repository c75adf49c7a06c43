"""An encoder placeholder for opening a collection whose vectors are all stored (benchmarks)."""
from __future__ import annotations

import json
from pathlib import Path


class NoEncoder:
    def __init__(self, config, dim: int) -> None:
        self.config, self.dim, self.truncated = config, dim, 0

    @classmethod
    def from_manifest(cls, path: str) -> "NoEncoder":
        from bellm_search.encoder.resolve import resolve_config

        manifest = json.loads((Path(path) / "manifest.json").read_text())
        return cls(resolve_config(), manifest["dim"])

    def encode(self, texts, **_):
        raise RuntimeError("nothing to encode in this benchmark")
