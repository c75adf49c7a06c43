"""Configuration dataclasses and their (de)serialisation. No heavy imports here."""
from __future__ import annotations

import dataclasses
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bellm_search.errors import ConfigError

Pooling = Literal["last", "mean"]
Device = str  # "auto", "cpu", "cuda", "cuda:N", "mps"
DType = Literal["auto", "float32", "bfloat16", "float16"]

BELLM_PROMPT = 'The representative word for sentence {text} is:"'
EMBEDDED_MODEL = "smollm2-135m-instruct"


def default_prompt(pooling: Pooling) -> str:
    """The BeLLM prompt for last-token pooling; the bare text for mean pooling."""
    return BELLM_PROMPT if pooling == "last" else "{text}"


@dataclass
class EncoderConfig:
    """Everything needed to rebuild an encoder. ``model=None`` means the embedded default."""

    model: str | None = None
    adapter: str | None = None
    bidirectional_layers: int = 0
    pooling: Pooling = "last"
    prompt: str | None = None
    max_length: int = 512
    padding_side: Literal["left", "right"] = "right"
    batch_size: int = 256
    max_batch_tokens: int = 8192
    device: Device = "auto"  # also "cuda:0,cuda:1" or "cuda:all" for several GPUs
    dtype: DType = "auto"
    attn_implementation: Literal["sdpa", "eager"] | None = None

    def __post_init__(self) -> None:
        self.model, self.adapter = (os.fspath(v) if isinstance(v, os.PathLike) else v for v in (self.model, self.adapter))
        self.validate()

    @property
    def resolved_prompt(self) -> str:
        return self.prompt if self.prompt is not None else default_prompt(self.pooling)

    def validate(self) -> None:
        for name, kind in (("model", (str, type(None))), ("adapter", (str, type(None))), ("prompt", (str, type(None))),
                           ("bidirectional_layers", int), ("max_length", int), ("batch_size", int),
                           ("max_batch_tokens", int), ("device", str), ("dtype", str)):
            value = getattr(self, name)  # settings also come from JSON files: check the types first
            if not isinstance(value, numbers.Integral if kind is int else kind) or (kind is int and isinstance(value, bool)):
                raise ConfigError(f"{name} has an invalid value {value!r:.60} ({type(value).__name__})")
        if self.pooling not in ("last", "mean"):
            raise ConfigError(f"pooling must be 'last' or 'mean', got {self.pooling!r}")
        if self.bidirectional_layers < 0:
            raise ConfigError("bidirectional_layers must be >= 0 (0 = plain causal model)")
        if self.max_length < 8:
            raise ConfigError(f"max_length must be >= 8, got {self.max_length}")
        if self.batch_size < 1 or self.max_batch_tokens < 1:
            raise ConfigError("batch_size and max_batch_tokens must be >= 1")
        if self.prompt is not None and "{text}" not in self.prompt:
            raise ConfigError("prompt must contain the placeholder {text}")
        if self.padding_side not in ("left", "right"):
            raise ConfigError("padding_side must be 'left' or 'right'")

    def identity(self) -> dict[str, Any]:
        """The settings that define the vector space (not the runtime ones)."""
        return {
            "model": self.model or EMBEDDED_MODEL,
            "adapter": self.adapter,
            "bidirectional_layers": self.bidirectional_layers,
            "pooling": self.pooling,
            "prompt": self.resolved_prompt,
            "max_length": self.max_length,
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EncoderConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown encoder settings: {sorted(unknown)}")
        return cls(**data)


@dataclass
class IndexConfig:
    """How a collection's index is chosen, trained and searched (stored in the manifest).

    Pure settings: the heuristics that read them live in ``bellm_search.index.factory``."""

    factory: str | None = None      # explicit faiss factory string; None = automatic
    nlist: int | None = None        # explicit number of IVF lists (asks for IVF-PQ even under flat_max)
    m: int | None = None            # explicit PQ sub-quantizer count (must divide d; asks for IVF-PQ)
    nbits: int = 4                  # bits per PQ code: 4 = SIMD fast-scan PQ (CPU), 8 = classic PQ
    opq: bool = False               # prefix an OPQ rotation (asks for IVF-PQ)
    flat_max: int = 100_000         # exact Flat up to this many vectors, IVF-PQ above
    nprobe: int = 64                # default IVF lists visited per query (recall@10 >= 0.95 at 1M, see bench)
    rerank: int = 10                # over-fetch factor: search k*rerank candidates, re-rank exactly
    gpu: Literal["auto", "off", "on"] = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.gpu not in ("auto", "off", "on"):
            raise ConfigError(f"index gpu must be 'auto', 'off' or 'on', not {self.gpu!r}")
        if not 1 <= self.nbits <= 16:
            raise ConfigError(f"index nbits must be in 1..16, not {self.nbits}")
        for name in ("nprobe", "rerank"):
            if getattr(self, name) < 1:
                raise ConfigError(f"index {name} must be >= 1, not {getattr(self, name)}")
        for name in ("nlist", "m"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"index {name} must be >= 1 or unset, not {getattr(self, name)}")
        if self.flat_max < 0:
            raise ConfigError(f"index flat_max must be >= 0, not {self.flat_max}")

    @property
    def explicit_ivf(self) -> bool:
        """Whether the user asked for IVF-PQ settings (nlist, m or opq) rather than the automatic choice."""
        return self.nlist is not None or self.m is not None or self.opq

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "IndexConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown index config key(s): {', '.join(unknown)} "
                              f"(known: {', '.join(sorted(known))})")
        return cls(**data)


def cache_dir() -> Path:
    """Where converted models live: $BELLM_CACHE, else $XDG_CACHE_HOME/bellm-search, else ~/.cache."""
    env = os.environ.get("BELLM_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "bellm-search"
