"""Check index settings against a collection before anything is written.

A collection adds vectors under its own int64 ids, removes them (``delete``, catch-up) and
searches exactly or re-ranks approximate candidates exactly. ``validate_settings`` refuses,
in one full sentence, any setting that cannot do all of that for the collection at hand:
a factory FAISS cannot build, an index that cannot remove or map ids (HNSW, refine
wrappers, IDMap), PQ sub-quantizers that do not divide the dimension, or IVF lists that the
stored vectors cannot train."""
from __future__ import annotations

import faiss
import numpy as np

from bellm_search.config import IndexConfig
from bellm_search.errors import ConfigError
from bellm_search.index.factory import MIN_PER_LIST, IndexSettingsError, choose_pq_m, parse_factory
from bellm_search.index.faiss_index import _empty_index, _ivf, _spec_of, _static_description, factory_for

SUPPORTED = "'Flat' (exact), 'IVF{lists},Flat', 'IVF{lists},SQ8' or '[OPQ{m},]IVF{lists},PQ{m}[x4fs]'"


def validate_settings(settings: IndexConfig | str, n_vectors: int, dim: int) -> str:
    """The factory string these settings build for a collection of ``n_vectors`` stored
    ``dim``-dimensional vectors, or ``IndexSettingsError`` saying why they cannot."""
    cfg = IndexConfig(factory=settings) if isinstance(settings, str) else settings
    try:
        factory = factory_for(n_vectors, dim, cfg)
    except IndexSettingsError:
        raise
    except ConfigError as e:
        raise IndexSettingsError(_sentence(str(e))) from None
    if "IDMap" in factory:
        raise IndexSettingsError(f"Index factory {factory!r} wraps an id map, but a collection maps its ids "
                                 "itself: drop the 'IDMap' part (for example give 'Flat').")
    try:
        index = _empty_index(dim, factory)
    except ConfigError as e:
        raise IndexSettingsError(_cannot_build(factory, dim, e)) from None
    _check_operations(index, factory)
    _check_trainable(index, factory, n_vectors, dim)
    return factory


def _check_operations(index: "faiss.Index", factory: str) -> None:
    """Exact (Flat) or IVF (candidates re-ranked exactly), and able to remove ids."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else None
    exact = isinstance(inner, faiss.IndexFlat) and type(inner) is not faiss.IndexFlatL2
    if _ivf(index) is None and not exact:
        kind = type(inner or index).__name__
        raise IndexSettingsError(f"Index factory {factory!r} builds an index of type {kind}, which a collection cannot use "
                                 f"(it needs an exact index or an IVF index whose candidates it re-ranks): "
                                 f"use {SUPPORTED}, or leave the factory unset for the automatic choice.")
    try:
        index.remove_ids(faiss.IDSelectorBatch(np.zeros(1, dtype=np.int64)))
    except RuntimeError:
        raise IndexSettingsError(f"Index factory {factory!r} builds an index that cannot remove vectors, "
                                 f"which `delete` needs: use {SUPPORTED}.") from None


def _check_trainable(index: "faiss.Index", factory: str, n: int, dim: int) -> None:
    if index.is_trained:
        return
    st = _static_description(index)
    need = _spec_of(factory, st, dim).min_train
    if n >= need:
        return
    nlist = st["nlist"] or 1
    why = [f"{MIN_PER_LIST} per list for {nlist} lists"]
    if st["nbits"]:
        why.append(f"{2 ** st['nbits']} for the {st['nbits']}-bit PQ codes")
    if st["opq"]:
        why.append(f"{dim} (the dimension) for the OPQ rotation")
    fit = n // MIN_PER_LIST
    hint = (f"give --nlist {1 << (fit.bit_length() - 1)} or fewer lists" if fit >= 1 and nlist * MIN_PER_LIST > n
            else "ingest more documents first")
    raise IndexSettingsError(f"Cannot train {factory!r}: it needs at least {need:,} stored vectors "
                             f"({' and '.join(why)}) and the collection holds {n:,}; {hint}, "
                             "or keep the exact Flat index (no IVF settings).")


def _cannot_build(factory: str, dim: int, err: Exception) -> str:
    spec = parse_factory(factory)
    if spec.pq_m and dim % spec.pq_m:
        return (f"PQ{spec.pq_m} in {factory!r} must divide the dimension {dim}: try "
                f"m={choose_pq_m(dim, nbits=spec.nbits or 8)} (divisors of {dim} only).")
    why = str(err).split(": ", 1)[-1]   # past "bad faiss factory string '...'"
    return f"FAISS cannot build index factory {factory!r} for {dim}-dimensional vectors: {why.rstrip('.')}."


def _sentence(text: str) -> str:
    text = text.strip()
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")
