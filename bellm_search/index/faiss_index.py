"""The FAISS layer: choose, train, add, search, remove, save and load one vector index.

Vectors are L2-normalised float32, so cosine similarity is the inner product
(``METRIC_INNER_PRODUCT``). Ids are int64 chosen by the caller. Small collections use an
exact ``Flat`` index; large ones an IVF-PQ index whose candidates are re-ranked exactly
with the stored vectors (``rerank``). The choice follows the FAISS guidelines and
autofaiss' heuristics, as pure functions tested on numbers.

Only ``bellm_search.index`` imports faiss (here and in ``validate``); never torch or lmdb.
"""
from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import faiss
import numpy as np

from bellm_search._fs import atomic_path
from bellm_search.config import IndexConfig
from bellm_search.errors import CollectionError, ConfigError
from bellm_search.index.factory import (MAX_PER_LIST, MIN_PER_LIST, FactorySpec, IndexSettingsError,
                                        choose_factory, parse_factory, pq_code)

__all__ = ["VectorIndex", "factory_for", "kmeans", "nearest_centroids", "gpu_available", "use_gpu"]

log = logging.getLogger(__name__)

GPU_EXTRA = "pip install 'bellm-search[gpu]'"


def factory_for(n: int, d: int, cfg: IndexConfig) -> str:
    """``choose_factory`` for this machine (8-bit PQ where the index will live on a GPU)."""
    return choose_factory(n, d, cfg, gpu=not cfg.factory and use_gpu(cfg))


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
    """Seed the IVF k-means and the PQ k-means (on the CPU index, before any GPU clone), and
    keep FAISS' clustering warnings (one per sub-quantizer per OPQ iteration) out of stderr:
    the training sample's size is ours (``FactorySpec.training_size``), so they say nothing."""
    ivf = _ivf(index)
    if ivf is None:
        return
    ivf.cp.seed = seed
    ivf.cp.max_points_per_centroid = MAX_PER_LIST
    ivf.cp.min_points_per_centroid = MIN_PER_LIST       # our floor; silences FAISS' 39 warning
    ivf = faiss.downcast_index(ivf)
    if isinstance(ivf, faiss.IndexIVFPQ):
        ivf.do_polysemous_training = False              # on by default in the factory; unused, slow
    pq = getattr(ivf, "pq", None)
    if pq is not None:
        pq.cp.seed = seed
        pq.cp.min_points_per_centroid = 1               # min_train asks for 2**nbits points
        pq.verbose = False


def _opq_of(index: "faiss.Index") -> "faiss.OPQMatrix | None":
    if not isinstance(index, faiss.IndexPreTransform):
        return None
    first = faiss.downcast_VectorTransform(index.chain.at(0))
    return first if isinstance(first, faiss.OPQMatrix) else None


@contextmanager
def _opq_uses_index_pq(index: "faiss.Index") -> Iterator[None]:
    """During training, OPQ trains the IVF's own product quantizer (seeded, quiet, as many
    bits) instead of a default 8-bit one that warns per iteration; unlinked afterwards (the
    link is a raw pointer that a copy or a save must not carry)."""
    opq, ivf = _opq_of(index), _ivf(index)
    pq = getattr(faiss.downcast_index(ivf), "pq", None) if ivf is not None else None
    if opq is None or pq is None:
        yield
        return
    opq.verbose = False
    opq.pq = pq
    try:
        yield
    finally:
        opq.pq = None


def _to_gpu(index: "faiss.Index") -> "faiss.Index":
    co = faiss.GpuMultipleClonerOptions()
    co.useFloat16 = True    # fp16 PQ lookup tables: needed for large m on GPU
    return faiss.index_cpu_to_all_gpus(index, co=co)


def _to_cpu(index: "faiss.Index") -> "faiss.Index":
    return faiss.index_gpu_to_cpu(index)


def _empty_index(d: int, factory: str) -> "faiss.Index":
    """The untrained CPU index of a factory string; non-IVF indexes get an id map (ids, remove)."""
    if d < 1:
        raise ConfigError(f"dimension must be >= 1, not {d}")
    try:
        index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ConfigError(f"bad faiss factory string {factory!r}: {_first_line(e)}") from None
    if _ivf(index) is None and not isinstance(index, faiss.IndexIDMap2):
        index = faiss.IndexIDMap2(index)
    return index


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
        """An empty index (Flat gets an id map); seeded for training; on the GPU when asked.
        Use ``index.validate.validate_settings`` first for a factory a user gave."""
        index = _empty_index(d, factory)
        _setup_training(index, cfg.seed)
        vi = cls(index, factory, cfg)
        vi._maybe_gpu()
        return vi

    def _maybe_gpu(self) -> None:
        if not self.is_ivf or not use_gpu(self.cfg):
            return
        try:
            self._index, self._gpu = _to_gpu(self._index), True
        except RuntimeError as e:
            if self.cfg.gpu == "on":
                raise ConfigError(f"cannot put {self._factory} on the GPU: {_first_line(e)}") from None
            log.warning("GPU clone of %s failed (%s); staying on CPU", self._factory, _first_line(e))

    def _cpu_index(self) -> "faiss.Index":
        return _to_cpu(self._index) if self._gpu else self._index

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

    @property
    def is_ivf(self) -> bool:
        """An IVF index: approximate, searched with nprobe, its candidates re-ranked exactly."""
        return self._static["nlist"] is not None

    @property
    def nlist(self) -> int | None:
        return self._static["nlist"]

    @property
    def spec(self) -> FactorySpec:
        """What this index is, from the index itself (not from its factory string)."""
        return _spec_of(self._factory, self._static, self.d)

    @property
    def min_train(self) -> int:
        """Fewest stored vectors that can train it (0: needs no training)."""
        return 0 if self.is_trained else self.spec.min_train

    def training_size(self, n: int) -> int:
        """How many of n stored vectors to sample for ``train``."""
        return self.spec.training_size(n)

    def train(self, xt: np.ndarray) -> None:
        """Train on xt (already sampled: see training_size/training_sample); seeded at create."""
        xt = _as_vectors(xt, self.d, "training vectors")
        if len(xt) < self.min_train:
            raise CollectionError(f"{self._factory} needs at least {self.min_train} training vectors, got {len(xt)}")
        with _faiss_errors(f"training {self._factory}"), _opq_uses_index_pq(self._index):
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
        if not self.is_ivf:
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

    def _gpu_call(self, fn: Callable, nprobe: int | None):
        with self._lock:
            faiss.GpuParameterSpace().set_index_parameter(self._index, "nprobe", self._nprobe(nprobe))
            return fn()

    @contextmanager
    def _on_cpu(self) -> Iterator[None]:
        """Within: the index is a CPU copy (GPU indexes cannot remove); after: back on the GPU.
        One copy each way however many removes and adds happen inside."""
        if not self._gpu:
            yield
            return
        self._index, self._gpu = _to_cpu(self._index), False
        try:
            yield
        finally:
            self._index, self._gpu = _to_gpu(self._index), True

    def remove(self, ids: np.ndarray) -> int:
        """Remove ids (all in one call: on a GPU each call copies the index to the CPU and
        back); returns how many were present."""
        ids = np.ascontiguousarray(ids, dtype=np.int64).ravel()
        if not len(ids):
            return 0
        with self._on_cpu(), _faiss_errors(f"removing vectors from {self._factory} "
                                           "(rebuild it with `bellm-search reindex --factory Flat`)"):
            return _remove_ids(self._index, faiss.IDSelectorBatch(ids))

    def catch_up(self, batches: Iterable[tuple[np.ndarray, np.ndarray]], start: int,
                 removed: np.ndarray | None = None) -> int:
        """Bring a loaded index up to date: (re-)add the stored ``batches`` of (ids, vectors)
        with ids >= ``start`` (idempotent: ids >= start are removed first) and remove the
        ``removed`` ids. One removal in all, so a GPU index is copied to the CPU and back once.
        Returns how many vectors were added."""
        it = iter(batches)
        first = next(it, None)
        removed = None if removed is None or not len(removed) else np.asarray(removed, dtype=np.int64)
        if first is None and removed is None:
            return 0
        later = faiss.IDSelectorRange(int(start), np.iinfo(np.int64).max) if first is not None else None
        gone = faiss.IDSelectorBatch(removed) if removed is not None else None
        both = faiss.IDSelectorOr(later, gone) if later is not None and gone is not None else None
        with self._on_cpu():        # later and gone stay referenced while both is used
            _remove_ids(self._index, both or later or gone)
        added = 0
        for ids, vecs in _chain(first, it):
            self.add(vecs, ids)
            added += len(ids)
        return added

    def save(self, path: str | Path, before_replace: Callable[[Path], None] | None = None) -> None:
        """Atomic write (``_fs.atomic_path``). ``before_replace(temp path)`` runs once the temp
        file is complete, before the rename."""
        with atomic_path(Path(path)) as tmp:
            faiss.write_index(self._cpu_index(), str(tmp))
            if before_replace is not None:
                before_replace(tmp)

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
        same_kind = cfg.factory and parse_factory(cfg.factory).is_ivf == (_ivf(index) is not None)
        vi = cls(index, cfg.factory if same_kind else _factory_of(index), cfg)
        vi._maybe_gpu()
        return vi

    def describe(self) -> dict:
        return {**self._static, "factory": self._factory, "ntotal": self.ntotal, "d": self.d,
                "gpu": self._gpu}


# --------------------------------------------------------------------------- helpers

def _chain(first, rest: Iterator) -> Iterator:
    if first is not None:
        yield first
    yield from rest


def _spec_of(factory: str, static: dict, d: int) -> FactorySpec:
    return FactorySpec(factory, static["nlist"] is not None, static["nlist"], static["m"], static["nbits"],
                       static["opq"], d)


def _first_line(e: BaseException) -> str:
    """FAISS' message without its C++ location and assertion text (one line, no final stop)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = next((ln for ln in lines if ln.lower().startswith("error")), lines[0] if lines else type(e).__name__)
    text = re.sub(r"^Error in .*? at \S+:\d+: ", "", text)
    text = re.sub(r"^Error: '.*?' failed:?\s*", "", text)
    return text.strip().rstrip(".")[:200] or type(e).__name__


@contextmanager
def _faiss_errors(doing: str) -> Iterator[None]:
    """A FAISS RuntimeError (C++ assertion text) as one sentence."""
    try:
        yield
    except RuntimeError as e:
        raise IndexSettingsError(f"FAISS failed {doing}: {_first_line(e)}.") from None


def _remove_ids(index: "faiss.Index", sel: "faiss.IDSelector") -> int:
    """``remove_ids``, made safe for fast-scan (4-bit PQ) IVF indexes: FAISS' BlockInvertedLists
    (1.15) leaves the removed entries' codes in the slots past a list's new end, and a later add
    ORs new codes into those slots (it expects them zeroed), so vectors added to a list after a
    removal became unfindable. Clear those slots."""
    ivf = _ivf(index)
    inv = faiss.downcast_InvertedLists(ivf.invlists) if ivf is not None else None
    blocks = isinstance(inv, faiss.BlockInvertedLists)
    before = [inv.list_size(lst) for lst in range(ivf.nlist)] if blocks else []
    n = int(index.remove_ids(sel))
    if blocks and n:
        zero = np.zeros(inv.packer.code_size, dtype=np.uint8)
        per = inv.n_per_block
        for lst, old in enumerate(before):
            new = inv.list_size(lst)
            for slot in range(new, min(old, -(-new // per) * per)):  # stale slots in the last block
                inv.packer.pack_1_c(faiss.swig_ptr(zero), slot, inv.get_codes(lst))
    return n


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
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=True, verbose=False,
                      min_points_per_centroid=1)   # the caller sizes the sample: no FAISS warning
    km.train(x)
    return km.centroids


def nearest_centroids(x: np.ndarray, centroids: np.ndarray, p: int) -> np.ndarray:
    """(n, p) indices of each row's p most similar centroids (inner product)."""
    flat = faiss.IndexFlatIP(centroids.shape[1])
    flat.add(np.ascontiguousarray(centroids, dtype=np.float32))
    _, I = flat.search(np.ascontiguousarray(x, dtype=np.float32), p)
    return I
