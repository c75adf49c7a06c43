"""Pure index heuristics: which FAISS factory string a collection gets, how many lists, how
many PQ sub-quantizers, how many training vectors, and a parser of factory strings.

The choice follows the FAISS guidelines and autofaiss' heuristics, as pure functions tested
on numbers. No faiss import here: ``bellm_search.index.faiss_index`` builds what this chooses.
This package is the only place that reads a factory string (``parse_factory``).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from bellm_search.config import IndexConfig
from bellm_search.errors import ConfigError

CODE_FRACTION = 30      # PQ codes at most 1/30 of the float32 vector
MIN_PER_LIST = 30       # fewest training vectors per IVF list (autofaiss; FAISS itself warns below 39)
MAX_PER_LIST = 256      # FAISS k-means subsamples above 256 points per centroid anyway
PER_LIST = 64           # default training points per list: k-means on 1M x 576 stays ~minutes on 2 cores


class IndexSettingsError(ConfigError):
    """Index settings a collection cannot use (or FAISS refused), said in one full sentence."""


def choose_nlist(n: int) -> int:
    """Smallest power of two >= 4*sqrt(n) (autofaiss' 4..16*sqrt(n) band), capped so every
    list can get >= 30 training vectors (nlist <= n/30); at least 1."""
    if n < 1:
        return 1
    nlist = 1 << max(0, math.ceil(math.log2(4 * math.sqrt(n))))
    while nlist > 1 and nlist * MIN_PER_LIST > n:
        nlist //= 2
    return nlist


def choose_pq_m(d: int, max_code_bytes: int | None = None, nbits: int = 8) -> int:
    """Largest m dividing d whose code (m*nbits bits) fits the byte budget.

    The default budget is floor(4*d/30) bytes: PQ codes at most 1/30 of the float32 vector.
    d=576 -> budget 76 B -> m=72 (8 dims per sub-quantizer, 72 B, 1/32); d=384 -> 48;
    d=768 -> 96; d=64 -> 8. Falls back to m=1 when nothing larger fits."""
    if d < 1:
        raise ConfigError(f"dimension must be >= 1, not {d}")
    budget_bits = 8 * (max_code_bytes if max_code_bytes is not None else (4 * d) // CODE_FRACTION)
    fitting = [m for m in range(1, d + 1) if d % m == 0 and m * nbits <= budget_bits]
    return max(fitting, default=1)


def training_size(nlist: int, n: int, per_list: int = PER_LIST, min_points: int = 0) -> int:
    """Training sample size: per_list (clamped to 30..256) vectors per IVF list, at least
    ``min_points`` (what the PQ k-means needs), at most n."""
    per_list = min(max(per_list, MIN_PER_LIST), MAX_PER_LIST)
    return max(0, min(n, max(nlist * per_list, min_points)))


def pq_code(m: int, nbits: int) -> str:
    """The factory's PQ part; 4-bit codes use FAISS' fast-scan (SIMD look-ups in registers,
    several times faster to scan than 8-bit PQ at the same code size)."""
    return f"PQ{m}" if nbits == 8 else f"PQ{m}x4fs" if nbits == 4 else f"PQ{m}x{nbits}"


def wants_ivf(n: int, cfg: IndexConfig) -> bool:
    """Whether the settings ask for an IVF index at n vectors: an IVF factory, an explicit
    nlist / m / opq (even under flat_max), or the automatic choice above flat_max."""
    if cfg.factory:
        return parse_factory(cfg.factory).is_ivf
    return cfg.explicit_ivf or n > cfg.flat_max


def choose_factory(n: int, d: int, cfg: IndexConfig, gpu: bool = False) -> str:
    """cfg.factory if set; else "[OPQm,]IVF{nlist},PQ{m}" when ``wants_ivf``; else "Flat".
    ``gpu``: FAISS GPU has no 4-bit fast-scan PQ, so 4-bit becomes classic 8-bit PQ."""
    if cfg.factory:
        return cfg.factory
    if not wants_ivf(n, cfg):
        return "Flat"
    nlist = cfg.nlist or choose_nlist(n)
    nbits = 8 if cfg.nbits == 4 and gpu else cfg.nbits
    m = cfg.m or choose_pq_m(d, nbits=nbits)
    if d % m:
        raise ConfigError(f"PQ m={m} must divide the dimension {d}; try m={choose_pq_m(d, nbits=nbits)}")
    return f"{f'OPQ{m},' if cfg.opq else ''}IVF{nlist},{pq_code(m, nbits)}"


def with_settings(cfg: IndexConfig, factory: str | None = None, nlist: int | None = None,
                  m: int | None = None, opq: bool | None = None) -> IndexConfig:
    """``cfg`` with the settings a user gave (None = keep). A factory string and IVF-PQ
    parameters are two ways to say the same thing: giving both is refused; giving parameters
    clears a stored factory (else they would be silently ignored), giving a factory clears
    stored parameters."""
    params = {"nlist": nlist, "m": m, "opq": opq}
    if factory is not None and any(v not in (None, False) for v in params.values()):
        raise IndexSettingsError("Give either a factory string or IVF-PQ settings (nlist, pq m, opq), "
                                 f"not both: the factory {factory!r} already says how the index is built.")
    data = cfg.to_dict()
    if factory is not None:
        data.update(factory=factory, nlist=None, m=None, opq=False)
    elif any(v is not None for v in params.values()):
        data.update({k: v for k, v in params.items() if v is not None}, factory=None)
    return IndexConfig.from_dict(data)


def training_sample(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted row positions of a seeded uniform sample of `size` out of n rows."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(size, n), replace=False))


# --------------------------------------------------------------------------- factory strings
@dataclass(frozen=True)
class FactorySpec:
    """What a factory string asks for (read without faiss)."""

    text: str
    is_ivf: bool
    nlist: int | None       # IVF lists (None: not IVF)
    pq_m: int | None        # PQ sub-quantizers of the codes (None: no PQ)
    nbits: int | None       # bits per PQ code (None: no PQ)
    opq: bool               # an OPQ rotation before the codes
    d: int | None = None    # the vectors' dimension, where known (OPQ's training needs it)

    @property
    def min_train(self) -> int:
        """Fewest vectors that can train it: 30 per IVF list, 2**nbits for the PQ k-means, and
        d for an OPQ rotation (FAISS 1.15 crashes training OPQ on fewer than d vectors; an OPQ
        spec without d counts 2*2**nbits); 0 for an index that needs no training."""
        need = self.nlist * MIN_PER_LIST if self.nlist else 0
        codes = 2 ** self.nbits if self.nbits else 0
        rotation = (self.d or 2 * codes) if self.opq else 0
        return max(need, codes, rotation)

    def training_size(self, n: int, per_list: int = PER_LIST) -> int:
        """The seeded training sample's size out of n vectors."""
        return training_size(self.nlist or 1, n, per_list, min_points=self.min_train)


_IVF = re.compile(r"^IVF(\d+)(?:_|$)")
_PQ = re.compile(r"^PQ(\d+)(?:x(\d+))?(?:fs|fsr)?(?:np)?$")
_OPQ = re.compile(r"^OPQ(\d+)(?:_\d+)?$")


def parse_factory(factory: str, d: int | None = None) -> FactorySpec:
    """Read is_ivf / nlist / PQ m / nbits / opq from a FAISS factory string (e.g.
    "OPQ48,IVF1024,PQ48", "IVF4096,PQ144x4fs", "Flat"); unknown parts are left to FAISS.
    Give ``d`` (the vectors' dimension) for an exact ``min_train``."""
    parts = [p.strip() for p in str(factory).split(",")]
    nlist = pq_m = nbits = None
    opq = False
    for part in parts:
        if (ivf := _IVF.match(part)) and nlist is None:
            nlist = int(ivf.group(1))
        elif pq := _PQ.match(part):
            pq_m, nbits = int(pq.group(1)), int(pq.group(2) or 8)
        elif _OPQ.match(part):
            opq = True
    return FactorySpec(str(factory), nlist is not None, nlist, pq_m, nbits, opq, d)
