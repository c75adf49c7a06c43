"""The FAISS layer: choose, train, add, search, remove, save and load one vector index.

Vectors are L2-normalised float32, so cosine similarity is the inner product
(``METRIC_INNER_PRODUCT``). Ids are int64 chosen by the caller. Small collections use an
exact ``Flat`` index; large ones an IVF-PQ index whose candidates are re-ranked exactly
with the stored vectors (``rerank``). The choice follows the FAISS guidelines and
autofaiss' heuristics, as pure functions tested on numbers.

This is the only module that imports faiss; it never imports torch or lmdb.
"""
from __future__ import annotations

import logging
import math
import os
import re
import threading
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Literal

import faiss
import numpy as np

from bellm_search.errors import CollectionError, ConfigError

log = logging.getLogger(__name__)

GPU_EXTRA = "pip install 'bellm-search[gpu]'"
CODE_FRACTION = 30      # PQ codes at most 1/30 of the float32 vector
MIN_PER_LIST = 30       # fewest training vectors per IVF list (autofaiss; FAISS itself warns below 39)
MAX_PER_LIST = 256      # FAISS k-means subsamples above 256 points per centroid anyway
PER_LIST = 64           # default training points per list: k-means on 1M x 576 stays ~minutes on 2 cores


@dataclass
class IndexConfig:
    """How a collection's index is chosen, trained and searched (stored in the manifest)."""

    factory: str | None = None      # explicit faiss factory string; None = automatic
    nlist: int | None = None        # override the automatic number of IVF lists
    m: int | None = None            # override the automatic PQ sub-quantizer count (must divide d)
    nbits: int = 4                  # bits per PQ code: 4 = SIMD fast-scan PQ (CPU), 8 = classic PQ
    opq: bool = False               # prefix an OPQ rotation
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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "IndexConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown index config key(s): {', '.join(unknown)} "
                              f"(known: {', '.join(sorted(known))})")
        return cls(**d)


# --------------------------------------------------------------------------- pure maths

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


def training_size(nlist: int, n: int, per_list: int = PER_LIST) -> int:
    """Training sample size: per_list (clamped to 30..256) vectors per IVF list, at most n."""
    per_list = min(max(per_list, MIN_PER_LIST), MAX_PER_LIST)
    return max(0, min(n, nlist * per_list))


def pq_code(m: int, nbits: int) -> str:
    """The factory's PQ part; 4-bit codes use FAISS' fast-scan (SIMD look-ups in registers,
    several times faster to scan than 8-bit PQ at the same code size)."""
    return f"PQ{m}" if nbits == 8 else f"PQ{m}x4fs" if nbits == 4 else f"PQ{m}x{nbits}"


def choose_factory(n: int, d: int, cfg: IndexConfig) -> str:
    """cfg.factory if set; "Flat" up to cfg.flat_max vectors; else "[OPQm,]IVF{nlist},PQ{m}"."""
    if cfg.factory:
        return cfg.factory
    if n <= cfg.flat_max:
        return "Flat"
    nlist = cfg.nlist or choose_nlist(n)
    nbits = cfg.nbits
    if nbits == 4 and cfg.gpu != "off" and use_gpu(cfg):
        nbits = 8  # FAISS GPU has no 4-bit fast-scan PQ: classic 8-bit PQ, same code size
    m = cfg.m or choose_pq_m(d, nbits=nbits)
    if d % m:
        raise ConfigError(f"PQ m={m} must divide the dimension {d}; try m={choose_pq_m(d, nbits=nbits)}")
    pq = pq_code(m, nbits)
    return f"{f'OPQ{m},' if cfg.opq else ''}IVF{nlist},{pq}"


def training_sample(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted row positions of a seeded uniform sample of `size` out of n rows."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(size, n), replace=False))


def rerank(xq: np.ndarray, I: np.ndarray, lookup: Callable[[np.ndarray], np.ndarray],
           k: int, chunk: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k among candidate ids I (nq, K), -1 = no candidate.

    lookup(unique int64 ids) returns their stored vectors (len, d) in the same order; it is
    called once. Returns (D, I) of shape (nq, k), sorted descending, padded with -inf / -1.
    Queries go in small chunks so the gathered candidates (chunk, K, d) stay in cache."""
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    I = np.asarray(I, dtype=np.int64)
    nq, K = I.shape
    D_out = np.full((nq, k), -np.inf, dtype=np.float32)
    I_out = np.full((nq, k), -1, dtype=np.int64)
    valid = I >= 0
    if not valid.any():
        return D_out, I_out
    uniq, inv = np.unique(I[valid], return_inverse=True)
    pos = np.zeros(I.shape, dtype=np.int64)
    pos[valid] = inv.ravel()                            # row in V of each candidate
    V = np.asarray(lookup(uniq), dtype=np.float32)      # (u, d)
    kk = min(k, K)
    for s in range(0, nq, chunk):
        q = slice(s, s + chunk)
        scores = np.matmul(V[pos[q]], xq[q, :, None])[:, :, 0]     # (c, K)
        scores[~valid[q]] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, :kk]
        top = np.take_along_axis(scores, order, axis=1)
        D_out[q, :kk] = top
        I_out[q, :kk] = np.where(np.isfinite(top), np.take_along_axis(I[q], order, axis=1), -1)
    return D_out, I_out


def gpu_available() -> bool:
    """True when faiss was built with GPU support and sees at least one GPU; never raises."""
    try:
        return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    except Exception:   # noqa: BLE001 - detection must never fail
        return False


def use_gpu(cfg: IndexConfig) -> bool:
    """Whether to clone IVF indexes to the GPUs; gpu="on" without a GPU is a ConfigError."""
    if cfg.gpu == "off":
        return False
    available = gpu_available()
    if cfg.gpu == "on" and not available:
        raise ConfigError(f"index gpu='on' but no GPU FAISS is available: {GPU_EXTRA}")
    return available


# --------------------------------------------------------------------------- the index

def _ivf(index: "faiss.Index") -> "faiss.IndexIVF | None":
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _setup_training(index: "faiss.Index", seed: int) -> None:
    """Seed the IVF k-means and the PQ k-means (on the CPU index, before any GPU clone)."""
    ivf = _ivf(index)
    if ivf is None:
        return
    ivf.cp.seed = seed
    ivf.cp.max_points_per_centroid = MAX_PER_LIST
    ivf.cp.min_points_per_centroid = MIN_PER_LIST       # our floor; silences FAISS' 39 warning
    ivf = faiss.downcast_index(ivf)
    if isinstance(ivf, faiss.IndexIVFPQ):
        ivf.pq.cp.seed = seed
        ivf.do_polysemous_training = False              # on by default in the factory; unused, slow
    elif isinstance(ivf, faiss.IndexIVFPQFastScan):
        ivf.pq.cp.seed = seed


def _to_gpu(index: "faiss.Index") -> "faiss.Index":
    co = faiss.GpuMultipleClonerOptions()
    co.useFloat16 = True    # fp16 PQ lookup tables: needed for large m on GPU
    return faiss.index_cpu_to_all_gpus(index, co=co)


def _as_vectors(x: np.ndarray, d: int, what: str) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != d:
        raise ValueError(f"{what} must have shape (n, {d}), got {x.shape}")
    return x


class VectorIndex:
    """Inner-product FAISS index over L2-normalised float32 vectors with int64 ids."""

    def __init__(self, index: "faiss.Index", factory: str, cfg: IndexConfig) -> None:
        self._index = index
        self._factory = factory
        self.cfg = cfg
        self._gpu = False
        self._lock = threading.Lock()       # guards nprobe on GPU indexes only
        self._static = _static_description(index)   # read while the index is still on the CPU

    @classmethod
    def create(cls, d: int, factory: str, cfg: IndexConfig) -> "VectorIndex":
        if d < 1:
            raise ConfigError(f"dimension must be >= 1, not {d}")
        try:
            index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            raise ConfigError(f"bad faiss factory string {factory!r}: {_first_line(e)}") from None
        if _ivf(index) is None and not isinstance(index, faiss.IndexIDMap2):
            index = faiss.IndexIDMap2(index)   # Flat etc. need an id map for ids and remove
        _setup_training(index, cfg.seed)
        vi = cls(index, factory, cfg)
        vi._maybe_gpu()
        return vi

    def _maybe_gpu(self) -> None:
        if _ivf(self._index) is None or not use_gpu(self.cfg):
            return
        try:
            self._index, self._gpu = _to_gpu(self._index), True
        except RuntimeError as e:
            if self.cfg.gpu == "on":
                raise ConfigError(f"cannot put {self._factory} on the GPU: {_first_line(e)}") from None
            log.warning("GPU clone of %s failed (%s); staying on CPU", self._factory, _first_line(e))

    def _cpu_index(self) -> "faiss.Index":
        return faiss.index_gpu_to_cpu(self._index) if self._gpu else self._index

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    @property
    def d(self) -> int:
        return int(self._index.d)

    @property
    def is_trained(self) -> bool:
        return bool(self._index.is_trained)

    @property
    def factory(self) -> str:
        return self._factory

    def train(self, xt: np.ndarray) -> None:
        """Train on xt (already sampled: see training_size/training_sample); seeded at create."""
        xt = _as_vectors(xt, self.d, "training vectors")
        nlist = self._static["nlist"]
        if nlist is not None and len(xt) < nlist:
            raise CollectionError(f"need at least nlist={nlist} training vectors, got {len(xt)}")
        self._index.train(xt)

    def add(self, x: np.ndarray, ids: np.ndarray) -> None:
        x = _as_vectors(x, self.d, "vectors")
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if ids.shape != (len(x),):
            raise ValueError(f"ids must have shape ({len(x)},), got {ids.shape}")
        if not self.is_trained:
            raise CollectionError(f"index {self._factory} must be trained before adding vectors")
        self._index.add_with_ids(x, ids)

    def _nprobe(self, nprobe: int | None) -> int:
        return max(1, min(nprobe or self.cfg.nprobe, self._static["nlist"]))

    def _params(self, nprobe: int | None) -> "faiss.SearchParameters | None":
        """Per-call IVF parameters (thread-safe); None for non-IVF indexes."""
        if self._static["nlist"] is None:
            return None
        params = faiss.SearchParametersIVF()
        params.nprobe = self._nprobe(nprobe)
        return params

    def search(self, xq: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(D, I) of shape (nq, k); I = -1 and D = -inf where there are fewer than k results."""
        xq = _as_vectors(xq, self.d, "queries")
        if k < 1:
            raise ValueError(f"k must be >= 1, not {k}")
        if self._gpu:
            D, I = self._gpu_call(lambda: self._index.search(xq, k), nprobe)
        else:
            D, I = self._index.search(xq, k, params=self._params(nprobe))
        D[I < 0] = -np.inf
        return D, I

    def range_search(self, xq: np.ndarray, threshold: float,
                     nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lims, D, I) as faiss: results of query i are D[lims[i]:lims[i+1]] (inner product > threshold)."""
        xq = _as_vectors(xq, self.d, "queries")
        index = self._cpu_index()           # range search is CPU-only in faiss
        return index.range_search(xq, float(threshold), params=self._params(nprobe))

    def _gpu_call(self, fn: Callable, nprobe: int | None):
        with self._lock:
            faiss.GpuParameterSpace().set_index_parameter(self._index, "nprobe", self._nprobe(nprobe))
            return fn()

    def remove(self, ids: np.ndarray) -> int:
        """Remove ids; returns how many were present."""
        ids = np.ascontiguousarray(ids, dtype=np.int64).ravel()
        if not len(ids):
            return 0
        if self._gpu:       # GPU indexes cannot remove: do it on a CPU copy
            cpu = faiss.index_gpu_to_cpu(self._index)
            n = _remove_ids(cpu, ids)
            self._index = _to_gpu(cpu)
            return n
        return _remove_ids(self._index, ids)

    def save(self, path: str | Path, before_replace: Callable[[Path], None] | None = None) -> None:
        """Atomic write: temp file in the same folder, fsync, rename, fsync the folder.
        ``before_replace(temp path)`` runs once the temp file is complete, before the rename."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            faiss.write_index(self._cpu_index(), str(tmp))
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            if before_replace is not None:
                before_replace(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(path.parent)

    @classmethod
    def load(cls, path: str | Path, cfg: IndexConfig) -> "VectorIndex":
        path = Path(path)
        if not path.is_file():
            raise CollectionError(f"index file {path} is missing; rebuild it with `bellm-search check --repair`")
        try:
            index = faiss.read_index(str(path))
        except (RuntimeError, MemoryError) as e:
            raise CollectionError(f"index file {path} is truncated or corrupt ({_first_line(e)}); "
                                  "rebuild it with `bellm-search check --repair`") from None
        _check_loaded(index, path)
        # the configured factory names the file unless the file is of another kind (a reindex
        # killed after renaming its index but before writing the manifest)
        same_kind = cfg.factory and ("IVF" in cfg.factory) == (_ivf(index) is not None)
        vi = cls(index, cfg.factory if same_kind else _factory_of(index), cfg)
        vi._maybe_gpu()
        return vi

    def describe(self) -> dict:
        return {**self._static, "factory": self._factory, "ntotal": self.ntotal, "d": self.d,
                "gpu": self._gpu}


# --------------------------------------------------------------------------- helpers

def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    err = [ln for ln in lines if ln.lower().startswith("error")]
    return (err or lines or [type(e).__name__])[0][:200]


def _remove_ids(index: "faiss.Index", ids: np.ndarray) -> int:
    """``remove_ids``, made safe for fast-scan (4-bit PQ) IVF indexes: FAISS' BlockInvertedLists
    (1.15) leaves the removed entries' codes in the slots past a list's new end, and a later add
    ORs new codes into those slots (it expects them zeroed), so vectors added to a list after a
    removal became unfindable. Clear those slots."""
    ivf = _ivf(index)
    inv = faiss.downcast_InvertedLists(ivf.invlists) if ivf is not None else None
    blocks = isinstance(inv, faiss.BlockInvertedLists)
    before = [inv.list_size(lst) for lst in range(ivf.nlist)] if blocks else []
    n = int(index.remove_ids(faiss.IDSelectorBatch(ids)))
    if blocks and n:
        zero = np.zeros(inv.packer.code_size, dtype=np.uint8)
        per = inv.n_per_block
        for lst, old in enumerate(before):
            new = inv.list_size(lst)
            for slot in range(new, min(old, -(-new // per) * per)):  # stale slots in the last block
                inv.packer.pack_1_c(faiss.swig_ptr(zero), slot, inv.get_codes(lst))
    return n


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:         # some platforms cannot open folders
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_loaded(index: "faiss.Index", path: Path) -> None:
    """Cheap consistency checks a byte-level corruption would likely break."""
    bad = None
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        bad = "metric is not inner product"
    elif not index.is_trained:
        bad = "index is not trained"
    else:
        ivf = _ivf(index)
        if ivf is not None:
            inv = ivf.invlists
            if sum(inv.list_size(i) for i in range(ivf.nlist)) != ivf.ntotal:
                bad = "inverted list sizes do not add up to ntotal"
        elif isinstance(index, faiss.IndexIDMap2) and index.id_map.size() != index.ntotal:
            bad = "id map size does not match ntotal"
    if bad:
        raise CollectionError(f"index file {path} is corrupt ({bad}); "
                              "rebuild it with `bellm-search check --repair`")


def _factory_of(index: "faiss.Index") -> str:
    """A factory string describing a loaded index (used when the config has none)."""
    ivf = _ivf(index)
    if ivf is None:
        return "Flat"
    pq = getattr(faiss.downcast_index(ivf), "pq", None)
    if pq is None:
        name = type(faiss.downcast_index(ivf)).__name__.replace("IndexIVF", "") or "Flat"
        return f"IVF{ivf.nlist},{name}"
    fast = isinstance(faiss.downcast_index(ivf), faiss.IndexIVFPQFastScan)
    code = f"PQ{pq.M}x4fs" if fast else pq_code(pq.M, pq.nbits)
    prefix = f"OPQ{pq.M}," if isinstance(index, faiss.IndexPreTransform) else ""
    return f"{prefix}IVF{ivf.nlist},{code}"


def _static_description(index: "faiss.Index") -> dict:
    """The parts of describe() that do not change after creation (CPU index)."""
    ivf = _ivf(index)
    pq = getattr(faiss.downcast_index(ivf), "pq", None) if ivf is not None else None
    return {
        "type": _type_name(index, ivf, pq),
        "nlist": int(ivf.nlist) if ivf is not None else None,
        "m": int(pq.M) if pq is not None else None,
        "nbits": int(pq.nbits) if pq is not None else None,
        "opq": isinstance(index, faiss.IndexPreTransform),
        "bytes_per_vector": int(ivf.code_size) if ivf is not None else 4 * int(index.d),
    }


def _type_name(index: "faiss.Index", ivf, pq) -> str:
    if ivf is None:
        inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
        return "Flat" if isinstance(inner, faiss.IndexFlat) else type(inner).__name__
    if pq is not None:
        return "IVF-PQ"
    name = type(faiss.downcast_index(ivf)).__name__        # IndexIVFFlat -> IVF-Flat
    return "IVF-" + re.sub(r"^IndexIVF", "", name) if name.startswith("IndexIVF") else name


# --------------------------------------------------------------------------- clustering helpers
def kmeans(x: np.ndarray, k: int, seed: int = 0, niter: int = 20) -> np.ndarray:
    """Spherical k-means centroids (k, d) of float32 rows x, seeded."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=True, verbose=False)
    km.train(x)
    return km.centroids


def nearest_centroids(x: np.ndarray, centroids: np.ndarray, p: int) -> np.ndarray:
    """(n, p) indices of each row's p most similar centroids (inner product)."""
    flat = faiss.IndexFlatIP(centroids.shape[1])
    flat.add(np.ascontiguousarray(centroids, dtype=np.float32))
    _, I = flat.search(np.ascontiguousarray(x, dtype=np.float32), p)
    return I
