"""A collection on disk: LMDB (source of truth) + a FAISS index derived from it + manifest.json.

    <dir>/manifest.json   format, versions, encoder identity, index config, dim, counts  (manifest.py)
    <dir>/index.faiss     derived: rebuilt or caught up from the stored vectors          (index_state.py)
    <dir>/meta.lmdb/      records, id maps, text hashes, fp16 vectors, tombstones, state (store.py)

``Collection`` is the facade; the work lives beside it: ingest.py (add, delete), search.py
(query, filters), check.py (verify, repair), lock.py (one writer at a time).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from bellm_search.collection import check as checking
from bellm_search.collection import ingest as ingesting
from bellm_search.collection import search
from bellm_search.collection.index_state import IndexState
from bellm_search.collection.lock import writer_lock
from bellm_search.collection.manifest import (MANIFEST, META_DIR, encoder_for, new_manifest, read_manifest,
                                              write_manifest)
from bellm_search.config import EncoderConfig, IndexConfig
from bellm_search.corpus import Record
from bellm_search.errors import CollectionError
from bellm_search.pairs.features import record_shingle_bytes, record_word_bytes


class Collection:
    """Create with ``Collection.create(path, config, dim)``, open with ``Collection.open(path)``;
    ``load_index()`` loads (and catches up) the index, which every operation needing it does."""

    def __init__(self, path: Path, manifest: dict[str, Any], readonly: bool, encoder_config: EncoderConfig,
                 encoder: Any = None, create: bool = False) -> None:
        from bellm_search.store import Store

        self.path, self.manifest, self.readonly = path, manifest, readonly
        self.encoder_config = encoder_config
        self.social = bool(manifest.get("normalize_social", False))
        self.store = Store(path / META_DIR, readonly=readonly, create=create, dim=None if readonly else manifest["dim"])
        stored_dim = self.store.dim
        if stored_dim not in (None, self.dim):  # a read-only open does not pass dim to the store
            self.store.close()
            raise CollectionError(f"{path / MANIFEST}: dim {self.dim}, but the store holds {stored_dim}-d vectors")
        if not readonly:  # collections from before shingles were stored get them (once, resumable)
            self.store.fill_shingles(record_shingle_bytes)
            self.store.fill_shingles(record_word_bytes, db_name="words")
        self.index_state = IndexState(path, self.store, manifest, self.dim)
        self._encoder = encoder

    # ------------------------------------------------------------------ create / open
    @classmethod
    def create(cls, path: str | Path, encoder_config: EncoderConfig | None = None, dim: int | None = None,
               index_config: IndexConfig | None = None, *, encoder: Any = None, normalize_social: bool = False,
               **encoder_options: Any) -> "Collection":
        """A new empty collection for vectors of ``dim`` made by ``encoder_config``. Or give an
        ``encoder`` object (its ``config`` and ``dim``), or encoder options (the encoder is built
        to learn its dim)."""
        path = Path(path)
        if (path / MANIFEST).is_file():
            raise CollectionError(f"{path} already holds a collection")
        if encoder is not None:
            encoder_config, dim = encoder.config, encoder.dim
        elif encoder_config is None or dim is None:
            encoder = _build_encoder(encoder_config, encoder_options)
            encoder_config, dim = encoder.config, encoder.dim
        manifest = new_manifest(encoder_config, dim, index_config, normalize_social)
        path.mkdir(parents=True, exist_ok=True)
        coll = cls(path, manifest, readonly=False, encoder_config=encoder_config, encoder=encoder, create=True)
        write_manifest(path, manifest)  # the store before the manifest: a kill between leaves no half collection
        return coll

    @classmethod
    def open(cls, path: str | Path, *, readonly: bool = False, encoder: Any = None, **encoder_options: Any) -> "Collection":
        """Open an existing collection; an encoder other than the manifest records is refused.
        ``encoder``: None, an EncoderConfig or an encoder object; runtime options (device, dtype,
        batch_size, max_batch_tokens) apply to the recorded encoder."""
        path = Path(path)
        manifest = read_manifest(path)
        config, instance = encoder_for(manifest["encoder"], encoder, encoder_options)
        return cls(path, manifest, readonly=readonly, encoder_config=config, encoder=instance)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "Collection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ parts
    @property
    def encoder(self) -> Any:
        """The encoder, built on first use."""
        if self._encoder is None:
            from bellm_search.encoder.encode import Encoder

            self._encoder = Encoder(self.encoder_config)
        return self._encoder

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def index_config(self) -> IndexConfig:
        return self.index_state.config

    def load_index(self) -> Any:
        """Load index.faiss and add what it lacks (or build it from the stored vectors); once."""
        return self.index_state.load()

    @property
    def index(self) -> Any:
        """The loaded index (``load_index()`` first)."""
        if self.index_state.index is None:
            raise CollectionError("the index is not loaded yet: call load_index() first")
        return self.index_state.index

    def check_writable(self) -> None:
        if self.readonly:
            raise CollectionError(f"{self.path} was opened read-only")

    # ------------------------------------------------------------------ operations
    def ingest(self, records: Iterable[Record | dict[str, Any]], *, chunk_size: int = 2048,
               skip_near_duplicates: float | None = None, progress: Callable[[int], Any] | None = None,
               wait: bool = True, vectors: np.ndarray | None = None,
               near_model: Callable[[Any], ingesting.NearModel] | None = None) -> ingesting.IngestStats:
        """Add records; known ids are skipped, exact duplicates recorded without encoding.

        ``vectors`` (n, dim), aligned with ``records``, skips the encoder (embeddings made elsewhere
        with the same encoder). Near duplicates (stored without a vector, linked to their first
        copy): ``skip_near_duplicates`` a cosine threshold, or ``near_model`` a function of this
        collection giving the pair-model decision (``dedup.calibration.decision_for``)."""
        self.check_writable()
        return ingesting.ingest(self, records, chunk_size=chunk_size, near=skip_near_duplicates,
                                progress=progress, wait=wait, vectors=vectors, near_model=near_model)

    def delete(self, source_ids: Iterable[str], wait: bool = True) -> tuple[int, list[str]]:
        """Tombstone documents by source id; returns (deleted, unknown ids)."""
        self.check_writable()
        return ingesting.delete(self, source_ids, wait)

    def query(self, texts: str | list[str], k: int = 10, *, nprobe: int | None = None,
              where: dict[str, str] | None = None, list_copies: bool = False) -> list[search.Hit] | list[list[search.Hit]]:
        """Nearest documents to a text (a list of hits) or to each of several texts."""
        single = isinstance(texts, str)
        xq = self.encoder.encode([texts] if single else list(texts))
        hits = self.query_vectors(xq, k, nprobe=nprobe, where=where, list_copies=list_copies)
        return hits[0] if single else hits

    def query_vectors(self, xq: np.ndarray, k: int = 10, *, nprobe: int | None = None,
                      where: dict[str, str] | None = None, list_copies: bool = False) -> list[list[search.Hit]]:
        return search.query_vectors(self.load_index(), self.store, self.index_config.rerank, xq, k, nprobe, where,
                                    list_copies)

    def search_vectors(self, xq: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, int ids) of each query vector, without reading records (dedup's k-NN)."""
        return search.search_vectors(self.load_index(), self.store, self.index_config.rerank, xq, k, nprobe)

    def reindex(self, factory: str | None = None, nlist: int | None = None, m: int | None = None,
                opq: bool | None = None, wait: bool = True) -> dict[str, Any]:
        """Rebuild the index from the stored vectors (no re-encoding) with new settings; settings the
        collection cannot use (an index that cannot remove ids, too few vectors to train, ...) are
        refused before anything is written."""
        from bellm_search.index.factory import with_settings
        from bellm_search.index.validate import validate_settings

        self.check_writable()
        config = with_settings(self.index_config, factory=factory, nlist=nlist, m=m, opq=opq)
        with writer_lock(self.path, wait):
            validate_settings(config, self.store.num_vectors(), self.dim)
            return self.index_state.rebuild(config).describe()

    def check(self, repair: bool = False) -> dict[str, Any]:
        """Verify the collection; with ``repair`` rebuild the derived index from LMDB."""
        return checking.check(self, repair)

    def info(self) -> dict[str, Any]:
        desc = self.load_index().describe()
        return {
            "path": str(self.path), "documents": self.store.count(), "vectors": self.store.num_vectors(),
            "deleted": int(self.store.get_state("n_deleted", 0)), "dim": self.dim, "index": desc,
            "bytes_per_vector": desc.get("bytes_per_vector"), "encoder": self.manifest["encoder"],
            "normalize_social": self.social, "format_version": self.manifest["format_version"],
            "disk_bytes": sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file()),
        }


def _build_encoder(config: EncoderConfig | None, options: dict[str, Any]) -> Any:
    """The encoder for a new collection (built now: its dim is the collection's)."""
    from bellm_search.encoder.encode import Encoder
    from bellm_search.encoder.resolve import resolve_config

    return Encoder(config if config is not None else resolve_config(**options))
