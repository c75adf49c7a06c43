"""The pydantic models manifest.json must satisfy (strict types: ``"no"`` is not a boolean, ``1.0``
not an integer; integers bounded, so a hostile value cannot ask for a huge allocation).
Imported only when a manifest is read (``collection.manifest.validate_manifest``)."""
from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

Count = Annotated[int, Field(ge=0, le=2**63 - 1)]


def bounded(high: int, low: int = 0) -> type:
    return Annotated[int, Field(ge=low, le=high)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class EncoderRecord(_Strict):
    model: str
    adapter: Optional[str] = None
    adapter_sha256: Optional[str] = None
    bidirectional_layers: bounded(1 << 12)
    pooling: Literal["last", "mean"]
    prompt: str
    max_length: bounded(1 << 20)
    padding_side: Literal["left", "right"] = "right"


class IndexSettings(_Strict):
    """Types and ranges only; ``IndexConfig.from_dict`` then refuses unknown keys and bad values."""

    factory: Optional[str] = None
    nlist: Optional[bounded(1 << 22)] = None
    m: Optional[bounded(1 << 12)] = None
    nbits: Count = 4
    opq: bool = False
    flat_max: Count = 100_000
    nprobe: bounded(1 << 22) = 64
    rerank: bounded(10_000) = 10
    gpu: Literal["auto", "off", "on"] = "auto"
    seed: bounded(2**31 - 1) = 0


class IndexState(_Strict):
    indexed_upto: Count
    deleted_applied: Count = 0
    factory: Optional[str] = None
    sha256: Optional[str] = None
    next_sha256: Optional[str] = None


class Manifest(_Strict):
    format_version: Literal[1]
    encoder: EncoderRecord
    index_config: IndexSettings
    dim: bounded(1 << 16, low=1)
    normalize_social: bool = False
    index: IndexState
