"""The collection's FAISS index, derived from LMDB: load and catch up, build, grow, save.

Every index is built from exactly the stored fp16 vectors (read back as float32), whether at
ingest, catch-up, growth, reindex or repair, so each path answers a query identically.
``manifest["index"]`` records what the saved file holds (``indexed_upto``, ``deleted_applied``,
its sha256); an open adds what the file lacks.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from bellm_search._fs import file_sha256, remove_stale_temps
from bellm_search.collection.manifest import INDEX_FILE, MANIFEST, read_manifest, write_manifest
from bellm_search.config import IndexConfig
from bellm_search.errors import CollectionError

log = logging.getLogger(__name__)


class IndexState:
    """Owns the loaded VectorIndex (``index``, None until ``load``) of one open collection."""

    def __init__(self, path: Path, store: Any, manifest: dict[str, Any], dim: int) -> None:
        self.path, self.store, self.manifest, self.dim = path, store, manifest, dim
        self.config = IndexConfig.from_dict(manifest["index_config"])
        self.index: Any = None

    # ------------------------------------------------------------------ load
    def load(self) -> Any:
        """The index, loaded (and caught up) or built on first use."""
        if self.index is None:
            self.index = self.load_saved() if self.saved() else self.build()
        return self.index

    def saved(self) -> bool:
        return bool(self.manifest["index"].get("factory")) and (self.path / INDEX_FILE).is_file()

    def load_saved(self) -> Any:
        """index.faiss as saved, plus the stored vectors and deletions it lacks."""
        from bellm_search.index.faiss_index import VectorIndex

        index = VectorIndex.load(self.path / INDEX_FILE, self.config)
        state = self.manifest["index"]
        upto = int(state["indexed_upto"])
        deleted = self.store.deleted_ids() if self.store.get_state("n_deleted", 0) != state.get("deleted_applied", 0) else None
        added = index.catch_up(self.store.iter_vectors(start=upto), upto, deleted)
        if added:
            log.info("index caught up with %d stored vectors", added)
        return index

    def behind(self) -> bool:
        """Whether the saved index lacks stored vectors or deletions (a killed write; open caught up)."""
        state = self.manifest["index"]
        return (state.get("indexed_upto") != self.store.next_id()
                or state.get("deleted_applied") != self.store.get_state("n_deleted", 0))

    # ------------------------------------------------------------------ build
    def build(self, strict: bool = False, config: IndexConfig | None = None) -> Any:
        """A fresh index from the stored vectors (no re-encoding), trained on a seeded sample, with
        ``config`` (default: the collection's). An index that cannot be trained yet starts as exact
        Flat, or (``strict``: an explicit rebuild) is an error."""
        from bellm_search.index.factory import training_sample
        from bellm_search.index.faiss_index import VectorIndex, factory_for

        cfg = config or self.config
        n = self.store.num_vectors()
        chosen = factory_for(n, self.dim, cfg)
        index = VectorIndex.create(self.dim, chosen, cfg)
        if index.min_train:
            if n < index.min_train:
                if strict:
                    raise CollectionError(f"cannot train {chosen} on {n} vectors: it needs >= {index.min_train} "
                                          "(lower --nlist, or add documents first)")
                log.info("%s needs %d vectors to train; exact Flat until then", chosen, index.min_train)
                index = VectorIndex.create(self.dim, "Flat", cfg)
            else:
                ids = self.store.live_ids(with_vectors=True)[training_sample(n, index.training_size(n), cfg.seed)]
                index.train(self.store.get_vectors(ids))
        for ids, vecs in self.store.iter_vectors():
            index.add(vecs, ids)
        return index

    def rebuild(self, config: IndexConfig | None = None, strict: bool = True) -> Any:
        """Replace the index by one built from the stored vectors (new settings) and save it. The
        settings are the collection's only once that index is built."""
        self.index = None  # memory holds one index, not both (a failed build: the next use reloads the file)
        index = self.build(strict=strict, config=config)
        if config is not None:
            self.config = config
            self.manifest["index_config"] = config.to_dict()
        self.index = index
        self.save()
        return index

    def should_grow(self) -> bool:
        """Whether the (Flat) index should become the collection's IVF index now: the settings
        ask for one at this size (above flat_max, or explicitly) and enough vectors can train it."""
        from bellm_search.index.factory import parse_factory, wants_ivf
        from bellm_search.index.faiss_index import factory_for

        if self.index is None or self.index.is_ivf:
            return False
        n = self.store.num_vectors()
        return wants_ivf(n, self.config) and n >= parse_factory(factory_for(n, self.dim, self.config), self.dim).min_train

    def maybe_grow(self) -> None:
        """Flat -> IVF-PQ once the collection outgrows flat_max (or can train its configured IVF).
        The Flat index is released first (the saved file and the catch-up cover a failure here)."""
        if self.should_grow():
            log.info("collection has %d vectors: training its IVF index from the stored vectors", self.store.num_vectors())
            self.index = None
            self.index = self.build()

    # ------------------------------------------------------------------ save
    def save(self) -> None:
        """Write index.faiss (atomic), then record in the manifest what it holds."""
        if self.index is None:
            return
        upto, deleted = self.store.next_id(), self.store.get_state("n_deleted", 0)
        remove_stale_temps(self.path / INDEX_FILE)
        remove_stale_temps(self.path / MANIFEST)
        sha: list[str] = []

        def announce(tmp: Path) -> None:
            # Before the rename, the manifest on disk (otherwise unchanged) learns the new file's
            # checksum: a kill between the rename and the manifest below leaves a file it knows,
            # with the old, lagging state, which open catches up (re-adding vectors is idempotent).
            sha.append(file_sha256(tmp))
            on_disk = read_manifest(self.path)
            on_disk["index"]["next_sha256"] = sha[0]
            write_manifest(self.path, on_disk)

        self.index.save(self.path / INDEX_FILE, before_replace=announce)
        self.manifest["index"] = {"indexed_upto": upto, "deleted_applied": deleted, "factory": self.index.factory,
                                  "ntotal": self.index.ntotal, "sha256": sha[0]}
        self.manifest["counts"] = {"documents": self.store.count(), "vectors": self.store.num_vectors()}
        write_manifest(self.path, self.manifest)
