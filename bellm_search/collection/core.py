"""A collection on disk: LMDB (source of truth) + a FAISS index derived from it + manifest.json.

    <dir>/manifest.json   format, versions, encoder identity, index config, dim, counts
    <dir>/index.faiss     derived: rebuilt or caught up from the stored vectors, never re-encoded
    <dir>/meta.lmdb/      records, id maps, text hashes, fp16 vectors, tombstones, state

Every ingest chunk commits records and vectors in one LMDB transaction, so a crash at any
point loses nothing and duplicates nothing; re-running an ingest skips the source ids already
stored. On open, vectors the saved index does not yet hold are added from LMDB.
"""
from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bellm_search import __version__
from bellm_search.config import EMBEDDED_MODEL, EncoderConfig
from bellm_search.corpus import Record
from bellm_search.pairs.normalize import text_hash
from bellm_search.errors import CollectionError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST, INDEX_FILE, META_DIR, LOCK_FILE = "manifest.json", "index.faiss", "meta.lmdb", ".write.lock"
IDENTITY_KEYS = ("model", "adapter_sha256", "bidirectional_layers", "pooling", "prompt", "max_length")


@dataclass
class IngestStats:
    added: int = 0
    skipped_known: int = 0
    exact_duplicates: int = 0
    near_duplicates: int = 0
    invalid: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Hit:
    id: str
    score: float
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- small helpers
def adapter_sha256(adapter: str | None) -> str | None:
    """Content hash of an adapter's weights: the identity of a vector space, wherever it lives."""
    if not adapter:
        return None
    folder = Path(adapter)
    digest = hashlib.sha256()
    for name in ("adapter_model.safetensors", "adapter_model.bin", "adapter_config.json"):
        if (folder / name).is_file():
            digest.update((folder / name).read_bytes())
    return digest.hexdigest()


def encoder_identity(config: EncoderConfig) -> dict[str, Any]:
    ident = config.identity()
    ident["adapter_sha256"] = adapter_sha256(config.adapter)
    return ident


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, ensure_ascii=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:  # e.g. disk full: no half-written temp file left behind
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temps(path: Path) -> None:
    """Delete the ``.NAME.tmp-PID`` files a killed writer of ``path`` left behind (PID not running
    on this machine; never read, only wasted space). Best effort."""
    for tmp in Path(path).parent.glob(f".{glob.escape(Path(path).name)}.tmp-*"):
        pid = tmp.name.rpartition("-")[2]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # still running (or not ours to signal): leave it
        except ProcessLookupError:
            pass
        except OSError:
            continue
        tmp.unlink(missing_ok=True)


def parse_where(items: Iterable[str]) -> dict[str, str]:
    """["lang=en", "user=bob"] -> {"lang": "en", "user": "bob"}."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CollectionError(f"--where {item!r}: expected FIELD=VALUE")
        out[key] = value
    return out


def matches(meta: dict[str, Any], where: dict[str, str]) -> bool:
    """Metadata filter: the field's value equals the given text (numbers and booleans as JSON)."""
    for key, want in where.items():
        if key not in meta:
            return False
        have = meta[key]
        if (have if isinstance(have, str) else json.dumps(have)) != want:
            return False
    return True


def to_record(item: Record | dict[str, Any], line: int) -> Record:
    """API callers pass dicts {"id", "text", ...}; the corpus reader passes Records."""
    if isinstance(item, Record):
        return item
    data = dict(item)
    if not isinstance(data.get("text"), str):
        raise CollectionError(f"record {line}: 'text' must be a string")
    source_id = str(data.pop("id", line))
    return Record(source_id, data.pop("text"), data, "<api>", line)


@contextmanager
def writer_lock(folder: Path, wait: bool = True) -> Iterator[None]:
    """One writer per collection (any number of readers): an flock on <dir>/.write.lock."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise CollectionError(f"{folder} is being written by another process (retry, or drop --no-wait)") from None
            log.warning("waiting for another process writing to %s ...", folder)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ----------------------------------------------------------------------------- the collection
class Collection:
    """Create with ``Collection.create(path)``, open with ``Collection.open(path)``."""

    def __init__(self, path: Path, manifest: dict[str, Any], readonly: bool, encoder_config: EncoderConfig) -> None:
        from bellm_search.index.faiss_index import IndexConfig
        from bellm_search.store import Store

        self.path = path
        self.manifest = manifest
        self.readonly = readonly
        self.encoder_config = encoder_config
        self.index_config = IndexConfig.from_dict(manifest["index_config"])
        self.social = bool(manifest.get("normalize_social", False))
        self.store = Store(path / META_DIR, readonly=readonly, dim=None if readonly else manifest["dim"])
        stored_dim = self.store.dim
        if stored_dim not in (None, self.dim):  # a read-only open does not pass dim to the store
            self.store.close()
            raise CollectionError(f"{path / MANIFEST}: dim {self.dim}, but the store holds {stored_dim}-d vectors")
        self._encoder: Any = None
        self._index: Any = None
        self._index_may_wait = True  # an index that cannot be trained yet starts as Flat

    # ------------------------------------------------------------------ create / open
    @classmethod
    def create(cls, path: str | Path, encoder: Any = None, index_config: Any = None, *,
               normalize_social: bool = False, exist_ok: bool = False, **encoder_options: Any) -> "Collection":
        """A new empty collection. ``encoder``: an Encoder, an EncoderConfig or None (options)."""
        from bellm_search.encoder.resolve import resolve_config
        from bellm_search.index.faiss_index import IndexConfig

        path = Path(path)
        if (path / MANIFEST).is_file():
            if exist_ok:
                return cls.open(path, encoder=encoder, **encoder_options)
            raise CollectionError(f"{path} already holds a collection")
        config, instance = _split_encoder(encoder, encoder_options, resolve_config)
        if instance is None:
            from bellm_search.encoder.encode import Encoder

            instance = Encoder(config)
        manifest = {
            "format_version": FORMAT_VERSION,
            "package_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "encoder": _encoder_record(config),
            "index_config": (index_config or IndexConfig()).to_dict(),
            "dim": instance.dim,
            "normalize_social": normalize_social,
            "index": {"indexed_upto": 0, "deleted_applied": 0, "factory": None},
            "counts": {},
        }
        path.mkdir(parents=True, exist_ok=True)
        coll = cls(path, manifest, readonly=False, encoder_config=config)  # the store before the manifest:
        write_json_atomic(path / MANIFEST, manifest)  # a kill between leaves no half collection
        coll._encoder = instance
        return coll

    @classmethod
    def open(cls, path: str | Path, *, readonly: bool = False, encoder: Any = None, **encoder_options: Any) -> "Collection":
        """Open an existing collection; a different encoder than the manifest records is refused."""
        path = Path(path)
        manifest = read_manifest(path)
        config, instance = _manifest_encoder(manifest, encoder, encoder_options)
        coll = cls(path, manifest, readonly=readonly, encoder_config=config)
        coll._encoder = instance
        return coll

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "Collection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ lazily built parts
    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            from bellm_search.encoder.encode import Encoder

            self._encoder = Encoder(self.encoder_config)
        return self._encoder

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def index(self) -> Any:
        if self._index is None:
            self._index = self._load_index()
        return self._index

    def _load_index(self) -> Any:
        from bellm_search.index.faiss_index import VectorIndex

        state = self.manifest["index"]
        if (self.path / INDEX_FILE).is_file() and state.get("factory"):
            index = VectorIndex.load(self.path / INDEX_FILE, self.index_config)
            self._catch_up(index, int(state["indexed_upto"]), int(state.get("deleted_applied", 0)))
            return index
        return self._build_index(self.index_config.factory)

    def _catch_up(self, index: Any, upto: int, deleted_applied: int) -> None:
        """Add vectors stored after the index was saved (idempotent: remove first), apply deletions."""
        added = 0
        for ids, vecs in self.store.iter_vectors(start=upto):
            index.remove(ids)
            index.add(vecs, ids)
            added += len(ids)
        if self.store.get_state("n_deleted", 0) != deleted_applied:
            index.remove(self.store.deleted_ids())
        if added:
            log.info("index caught up with %d stored vectors", added)

    def _build_index(self, factory: str | None) -> Any:
        """A fresh index from the stored vectors (no re-encoding); trained on a seeded sample."""
        from bellm_search.index.faiss_index import VectorIndex, choose_factory, training_sample, training_size

        n = self.store.num_vectors()
        chosen = factory or choose_factory(n, self.dim, self.index_config)
        index = VectorIndex.create(self.dim, chosen, self.index_config)
        if not index.is_trained:
            nlist = _nlist_of(chosen)
            if n < nlist * 30:
                if not self._index_may_wait:
                    raise CollectionError(f"cannot train {chosen} on {n} vectors: need >= {nlist * 30} (lower --nlist)")
                log.info("%s needs %d vectors to train; exact Flat until then", chosen, nlist * 30)
                return self._build_index("Flat")
            size = training_size(nlist, n)
            ids = self._live_ids()[training_sample(n, size, self.index_config.seed)]
            index.train(self.store.get_vectors(ids))
        for ids, vecs in self.store.iter_vectors():
            index.add(vecs, ids)
        return index

    def _live_ids(self) -> np.ndarray:
        return self.store.live_ids(with_vectors=True)

    def save_index(self) -> None:
        """Write index.faiss (atomic), then record in the manifest what it holds."""
        if self._index is None:
            return
        upto = self.store.next_id()
        deleted = self.store.get_state("n_deleted", 0)
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
            write_json_atomic(self.path / MANIFEST, on_disk)

        self._index.save(self.path / INDEX_FILE, before_replace=announce)
        self.manifest["index"] = {"indexed_upto": upto, "deleted_applied": deleted,
                                  "factory": self._index.factory, "ntotal": self._index.ntotal,
                                  "sha256": sha[0]}
        self._write_manifest()

    def _index_behind(self) -> bool:
        """Whether the saved index lacks stored vectors or deletions (a killed write; open caught up)."""
        state = self.manifest["index"]
        return (state.get("indexed_upto") != self.store.next_id()
                or state.get("deleted_applied") != self.store.get_state("n_deleted", 0))

    def _write_manifest(self) -> None:
        self.manifest["counts"] = {"documents": self.store.count(), "vectors": self.store.num_vectors()}
        self.manifest["package_version"] = __version__
        write_json_atomic(self.path / MANIFEST, self.manifest)

    # ------------------------------------------------------------------ ingest
    def ingest(self, records: Iterable[Record | dict[str, Any]], *, chunk_size: int = 2048,
               skip_near_duplicates: float | None = None, progress: Callable[[int], Any] | None = None,
               wait: bool = True, vectors: np.ndarray | None = None) -> IngestStats:
        """Add records; known ids are skipped, exact duplicates recorded without encoding.

        ``vectors`` (n, dim), aligned with ``records``, skips the encoder (embeddings made elsewhere
        with the same encoder)."""
        self._check_writable()
        stats, start = IngestStats(), time.perf_counter()
        with writer_lock(self.path, wait):
            index = self.index
            chunk: list[Record] = []
            offset = 0
            for n, item in enumerate(records, start=1):
                chunk.append(to_record(item, n))
                if len(chunk) >= chunk_size:
                    given = None if vectors is None else vectors[offset:offset + len(chunk)]
                    self._ingest_chunk(chunk, stats, index, skip_near_duplicates, given)
                    offset += len(chunk)
                    if progress:
                        progress(len(chunk))
                    chunk = []
                    if self._should_grow():  # switch during the ingest: a Flat never holds more than flat_max
                        index = None
                        self._maybe_grow_index()
                        index = self.index
            if chunk:
                given = None if vectors is None else vectors[offset:offset + len(chunk)]
                self._ingest_chunk(chunk, stats, index, skip_near_duplicates, given)
                if progress:
                    progress(len(chunk))
            index = None
            self._maybe_grow_index()
            self.save_index()
        stats.seconds = time.perf_counter() - start
        return stats

    def _check_writable(self) -> None:
        if self.readonly:
            raise CollectionError(f"{self.path} was opened read-only")

    def _ingest_chunk(self, chunk: list[Record], stats: IngestStats, index: Any, near: float | None,
                      given: np.ndarray | None = None) -> None:
        with self.store.writer() as w:
            fresh, followers = self._plan_chunk(w, chunk, stats)
            vecs = self._vectors_for(fresh, chunk, given)
            dup_of = self._near_duplicates(vecs, index, near) if near is not None else {}
            first_of_row: dict[int, int] = {}  # row -> int id its exact copies point to
            added_ids: list[int] = []
            for row, (rec, h) in enumerate(fresh):
                if row in dup_of:
                    target, score = dup_of[row]
                    target = target if target >= 0 else first_of_row[-target - 1]
                    w.add_doc(rec.id, _doc(rec, dup_of=target, score=score), text_hash=h, dup_of=(target, score))
                    first_of_row[row] = target
                    stats.near_duplicates += 1
                else:
                    first_of_row[row] = w.add_doc(rec.id, _doc(rec), text_hash=h, vector=vecs[row])
                    added_ids.append(row)
            for rec, row in followers:  # exact copies of a record first seen in this chunk
                w.add_doc(rec.id, _doc(rec, dup_of=first_of_row[row], score=1.0), dup_of=(first_of_row[row], 1.0))
                stats.exact_duplicates += 1
        stats.added += len(added_ids)
        if added_ids:  # after the commit: the index only ever holds durable vectors
            ids = np.asarray([first_of_row[r] for r in added_ids], dtype=np.int64)
            index.add(vecs[added_ids], ids)

    def _vectors_for(self, fresh: list[tuple[Record, bytes]], chunk: list[Record], given: np.ndarray | None) -> np.ndarray:
        if not fresh:
            return np.zeros((0, self.dim), np.float32)
        if given is None:
            return self.encoder.encode([r.text for r, _ in fresh])
        if given.shape != (len(chunk), self.dim):
            raise CollectionError(f"vectors of shape {given.shape} do not match {len(chunk)} records x {self.dim} dims")
        row_of = {id(rec): i for i, rec in enumerate(chunk)}
        vecs = np.asarray(given[[row_of[id(r)] for r, _ in fresh]], dtype=np.float32)
        return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)

    def _plan_chunk(self, w: Any, chunk: list[Record], stats: IngestStats) -> tuple[list, list]:
        """Record skips and exact duplicates of stored docs; return (to encode, in-chunk copies)."""
        fresh: list[tuple[Record, bytes]] = []
        followers: list[tuple[Record, int]] = []  # (record, row in fresh it copies)
        row_of_hash: dict[bytes, int] = {}
        seen: set[str] = set()
        for rec in chunk:
            if rec.id in seen or w.lookup_key(rec.id) is not None:
                stats.skipped_known += 1
                continue
            seen.add(rec.id)
            h = text_hash(rec.text, social=self.social)
            if h in row_of_hash:
                followers.append((rec, row_of_hash[h]))
                continue
            first = w.lookup_hash(h)
            if first is not None:
                w.add_doc(rec.id, _doc(rec, dup_of=first, score=1.0), dup_of=(first, 1.0))
                stats.exact_duplicates += 1
                continue
            row_of_hash[h] = len(fresh)
            fresh.append((rec, h))
        return fresh, followers

    def _near_duplicates(self, vecs: np.ndarray, index: Any, threshold: float) -> dict[int, tuple[int, float]]:
        """Rows of ``vecs`` that duplicate a stored doc (id >= 0) or an earlier row (-(row+1))."""
        out: dict[int, tuple[int, float]] = {}
        if len(vecs) and index.ntotal:
            D, I = self._search_vectors(vecs, 1, None)
            for row in np.nonzero(D[:, 0] >= threshold)[0]:
                out[int(row)] = (int(I[row, 0]), float(D[row, 0]))
        sims = vecs @ vecs.T
        kept: list[int] = []  # rows that will be added, in order
        for row in range(len(vecs)):
            if row in out:
                continue
            if kept:
                best = int(np.argmax(sims[row, kept]))
                if sims[row, kept[best]] >= threshold:
                    out[row] = (-(kept[best] + 1), float(sims[row, kept[best]]))
                    continue
            kept.append(row)
        return out

    def _should_grow(self) -> bool:
        """Whether the (Flat) index should become the collection's IVF index now."""
        cfg = self.index_config
        if self._index is None or "IVF" in self._index.factory:
            return False
        n = self.store.num_vectors()
        if cfg.factory and "IVF" in cfg.factory:
            return n >= _nlist_of(cfg.factory) * 30
        return not cfg.factory and n > cfg.flat_max

    def _maybe_grow_index(self) -> None:
        """Flat -> IVF-PQ once the collection outgrows flat_max (or can train its configured IVF).
        The Flat index is released first: memory holds one index, not both."""
        if not self._should_grow():
            return
        log.info("collection has %d vectors: training its IVF index from the stored vectors", self.store.num_vectors())
        self._index = None  # the saved index file and the catch-up cover a failure here
        self._index = self._build_index(self.index_config.factory)

    # ------------------------------------------------------------------ search
    def _search_vectors(self, xq: np.ndarray, k: int, nprobe: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, int ids); IVF candidates over-fetched and re-ranked with stored vectors."""
        from bellm_search.index.faiss_index import rerank

        index = self.index
        if "IVF" not in index.factory:
            return index.search(xq, k)
        _, cand = index.search(xq, k * self.index_config.rerank, nprobe)
        return rerank(xq, cand, self.store.get_vectors, k)

    def query(self, texts: str | list[str], k: int = 10, *, nprobe: int | None = None,
              where: dict[str, str] | None = None) -> list[Hit] | list[list[Hit]]:
        """Nearest documents to a text (a list of hits) or to each of several texts."""
        single = isinstance(texts, str)
        xq = self.encoder.encode([texts] if single else list(texts))
        hits = self.query_vectors(xq, k, nprobe=nprobe, where=where)
        return hits[0] if single else hits

    def query_vectors(self, xq: np.ndarray, k: int = 10, *, nprobe: int | None = None,
                      where: dict[str, str] | None = None) -> list[list[Hit]]:
        if k < 1:
            raise CollectionError("k must be >= 1")
        total = max(self.index.ntotal, 1)
        fetch = k if not where else min(total, k * 10)
        while True:
            D, I = self._search_vectors(np.asarray(xq, np.float32), fetch, nprobe)
            results = [self._hits(D[i], I[i], k, where) for i in range(len(I))]
            if all(len(r) >= k for r in results) or fetch >= total:
                return results
            fetch = min(total, fetch * 4)

    def _hits(self, scores: np.ndarray, ids: np.ndarray, k: int, where: dict[str, str] | None) -> list[Hit]:
        live = [(int(i), float(s)) for i, s in zip(ids, scores) if i >= 0]
        docs = self.store.get_docs([i for i, _ in live])
        hits = []
        for (_, score), doc in zip(live, docs):
            if doc is None or (where and not matches(doc.get("meta", {}), where)):
                continue  # deleted, or filtered out
            hits.append(Hit(doc["id"], score, doc["text"], doc.get("meta", {})))
            if len(hits) == k:
                break
        return hits

    # ------------------------------------------------------------------ delete / reindex / info
    def delete(self, source_ids: Iterable[str], wait: bool = True) -> tuple[int, list[str]]:
        """Tombstone documents by source id; returns (deleted, unknown ids)."""
        self._check_writable()
        deleted, unknown = 0, []
        with writer_lock(self.path, wait):
            index = self.index
            with self.store.writer() as w:
                targets = []
                for sid in source_ids:
                    int_id = w.lookup_key(str(sid))
                    if int_id is None or not w.delete(int_id):
                        unknown.append(str(sid))
                        continue
                    targets.append(int_id)
                # a deleted first copy hands its vector to its earliest exact copy (re-added under a
                # new int id, so a crash before the index save is caught up like any add)
                promoted = w.promote_duplicates(targets) if targets else []
            deleted = len(targets)
            if targets:
                index.remove(np.asarray(targets, dtype=np.int64))
            if promoted:
                new_ids = np.asarray([new for _, new in promoted], dtype=np.int64)
                index.add(self.store.get_vectors(new_ids), new_ids)
            if targets or self._index_behind():  # a re-run also saves what a killed delete did not
                self.save_index()
        return deleted, unknown

    def reindex(self, factory: str | None = None, nlist: int | None = None, m: int | None = None,
                opq: bool | None = None, wait: bool = True) -> dict[str, Any]:
        """Rebuild the index from the stored vectors (no re-encoding) with new settings."""
        from bellm_search.index.faiss_index import IndexConfig

        self._check_writable()
        cfg = self.index_config.to_dict()
        cfg.update({k: v for k, v in {"factory": factory, "nlist": nlist, "m": m, "opq": opq}.items() if v is not None})
        with writer_lock(self.path, wait):
            self.index_config = IndexConfig.from_dict(cfg)
            self._index_may_wait = False  # an explicit rebuild that cannot train is an error
            try:
                self._index = self._build_index(self.index_config.factory)
            finally:
                self._index_may_wait = True
            self.manifest["index_config"] = self.index_config.to_dict()
            self.save_index()
        return self._index.describe()

    def info(self) -> dict[str, Any]:
        desc = self.index.describe()
        size = sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
        return {
            "path": str(self.path),
            "documents": self.store.count(),
            "vectors": self.store.num_vectors(),
            "deleted": int(self.store.get_state("n_deleted", 0)),
            "dim": self.dim,
            "index": desc,
            "bytes_per_vector": desc.get("bytes_per_vector"),
            "encoder": self.manifest["encoder"],
            "normalize_social": self.social,
            "disk_bytes": size,
            "format_version": self.manifest["format_version"],
        }

    # ------------------------------------------------------------------ check / repair
    def check(self, repair: bool = False) -> dict[str, Any]:
        """Verify the collection; with ``repair`` rebuild the derived index from LMDB."""
        problems = self._check_store() + self._check_index()
        repaired = False
        if repair and problems:
            self._check_writable()
            with writer_lock(self.path):
                self._index = self._build_index(self.index_config.factory)
                self.save_index()
            repaired = True
            problems_after = self._check_store() + self._check_index()
        else:
            problems_after = problems
        return {"ok": not problems_after, "problems": problems, "repaired": repaired,
                "remaining": problems_after if repaired else problems}

    def _check_store(self) -> list[str]:
        problems = []
        live = links = 0
        for int_id, doc in self.store.iter_docs():
            live += 1
            links += "dup_of" in doc
            if self.store.lookup_key(doc.get("id", "")) != int_id:
                problems.append(f"document {int_id}: id map does not point back to it")
            if "dup_of" not in doc and not isinstance(doc.get("text"), str):
                problems.append(f"document {int_id}: record without text")
        if live != self.store.count():
            problems.append(f"document count {self.store.count()} but {live} live records")
        table = len(self.store.dup_links()[0])
        if links != table:
            problems.append(f"{links} records are duplicates but the duplicate-link table holds {table}")
        return problems[:50]

    def _check_index(self) -> list[str]:
        from bellm_search.index.faiss_index import VectorIndex

        state, file = self.manifest["index"], self.path / INDEX_FILE
        if not state.get("factory"):
            return []  # never saved (a first ingest was killed): every open builds it from the stored vectors
        if not file.is_file():
            return [f"{INDEX_FILE} is missing"]
        if state.get("sha256") and file_sha256(file) not in (state["sha256"], state.get("next_sha256")):
            return [f"{INDEX_FILE} does not match the checksum in the manifest (corrupt or replaced)"]
        try:
            index = VectorIndex.load(file, self.index_config)
        except CollectionError as exc:
            return [str(exc)]
        self._catch_up(index, int(state["indexed_upto"]), int(state.get("deleted_applied", 0)))
        stored = self.store.num_vectors()
        if index.ntotal != stored:
            return [f"index holds {index.ntotal} vectors but {stored} are stored"]
        return []

    # ------------------------------------------------------------------ helpers for dedup
    def search_vectors(self, xq: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self._search_vectors(xq, k, nprobe)


# ----------------------------------------------------------------------------- module helpers
def _doc(rec: Record, dup_of: int | None = None, score: float | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"text": rec.text, "meta": rec.meta}
    if dup_of is not None:
        doc["dup_of"] = int(dup_of)
        doc["dup_score"] = round(float(score), 6) if score is not None else None
    return doc


def _nlist_of(factory: str) -> int:
    import re

    found = re.search(r"IVF(\d+)", factory)
    return int(found.group(1)) if found else 1


def read_manifest(path: Path) -> dict[str, Any]:
    file = path / MANIFEST
    if not file.is_file():
        raise CollectionError(f"{path} is not a collection (no {MANIFEST}); create one with `bellm-search ingest`")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad UTF-8 or JSON, huge numbers
        raise CollectionError(f"{file} is unreadable ({exc}); run `bellm-search check`") from None
    if not isinstance(manifest, dict):
        raise CollectionError(f"{file}: expected a JSON object, got {type(manifest).__name__}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CollectionError(f"{file}: unsupported collection format {manifest.get('format_version')!r}")
    for key in ("encoder", "index_config", "dim", "index"):
        if key not in manifest:
            raise CollectionError(f"{file}: missing {key!r}; run `bellm-search check`")
    _check_manifest_types(file, manifest)
    return manifest


_OPT_STR, _OPT_INT = (str, type(None)), (int, type(None))
_MANIFEST_TYPES: dict[str | None, dict[str, Any]] = {  # section (None = top level) -> field -> type(s)
    None: {"encoder": dict, "index_config": dict, "index": dict, "dim": int},
    "encoder": {"model": str, "adapter": _OPT_STR, "adapter_sha256": _OPT_STR, "bidirectional_layers": int,
                "pooling": str, "prompt": str, "max_length": int, "padding_side": str},
    "index_config": {"factory": _OPT_STR, "nlist": _OPT_INT, "m": _OPT_INT, "nbits": int, "opq": bool,
                     "flat_max": int, "nprobe": int, "rerank": int, "gpu": str, "seed": int},
    "index": {"indexed_upto": int, "deleted_applied": int, "factory": _OPT_STR, "sha256": _OPT_STR,
              "next_sha256": _OPT_STR},
}
_MANIFEST_MAX = {"dim": 1 << 16, "max_length": 1 << 20, "bidirectional_layers": 1 << 12, "nlist": 1 << 22,
                 "nprobe": 1 << 22, "m": 1 << 12, "rerank": 10_000, "seed": 2**31 - 1}  # beyond: absurd or huge allocations
_MANIFEST_REQUIRED = {"encoder": ("model", "bidirectional_layers", "pooling", "prompt", "max_length"),
                      "index": ("indexed_upto",)}


def _check_manifest_types(file: Path, manifest: dict[str, Any]) -> None:
    """Every field the code reads has its type (integers >= 0 and bounded), so a corrupt or hand-edited
    manifest is a one-line error here rather than a crash later."""
    from bellm_search.errors import ConfigError
    from bellm_search.index.faiss_index import IndexConfig

    for section, types in _MANIFEST_TYPES.items():
        fields = manifest if section is None else manifest[section]
        where = "" if section is None else f"{section}."
        for key in _MANIFEST_REQUIRED.get(section or "", ()):
            if key not in fields:
                raise CollectionError(f"{file}: missing {where}{key}")
        for key, kind in types.items():
            value = fields.get(key)
            kinds = kind if isinstance(kind, tuple) else (kind,)
            wrong = not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)
            if key in fields and (wrong or (isinstance(value, int) and not 0 <= value <= _MANIFEST_MAX.get(key, 2**63 - 1))):
                raise CollectionError(f"{file}: {where}{key} has an invalid value {value!r:.60}")
    if manifest["dim"] < 1:
        raise CollectionError(f"{file}: dim must be >= 1, got {manifest['dim']}")
    try:
        IndexConfig.from_dict(manifest["index_config"])
    except (ConfigError, TypeError, ValueError) as exc:
        raise CollectionError(f"{file}: invalid index_config ({exc})") from None


def _encoder_record(config: EncoderConfig) -> dict[str, Any]:
    """What the manifest keeps: the identity, plus how to rebuild the encoder."""
    from bellm_search.encoder.resolve import default_adapter_dir

    record = encoder_identity(config)
    default = config.adapter and Path(config.adapter).resolve() == default_adapter_dir().resolve()
    record["adapter"] = "default" if default else config.adapter
    record["padding_side"] = config.padding_side
    return record


def _split_encoder(encoder: Any, options: dict[str, Any], resolve: Callable[..., EncoderConfig]) -> tuple[EncoderConfig, Any]:
    if encoder is None:
        return resolve(**options), None
    if isinstance(encoder, EncoderConfig):
        return encoder, None
    return encoder.config, encoder


def _manifest_encoder(manifest: dict[str, Any], encoder: Any, options: dict[str, Any]) -> tuple[EncoderConfig, Any]:
    """The encoder config the manifest records; user options must describe the same space."""
    from bellm_search.encoder.resolve import default_adapter_dir, resolve_config

    rec = manifest["encoder"]
    adapter = str(default_adapter_dir()) if rec.get("adapter") == "default" else rec.get("adapter")
    model = None if rec["model"] == EMBEDDED_MODEL else rec["model"]
    runtime = {k: options.pop(k) for k in ("device", "dtype", "batch_size", "max_batch_tokens") if k in options}
    if encoder is not None or options:
        config, instance = _split_encoder(encoder, options, resolve_config)
        theirs = encoder_identity(config)
        if any(theirs.get(k) != rec.get(k) for k in IDENTITY_KEYS):
            diff = {k: (rec.get(k), theirs.get(k)) for k in IDENTITY_KEYS if theirs.get(k) != rec.get(k)}
            raise CollectionError(
                f"this collection was built with a different encoder {diff} (collection, given); "
                "vectors from different encoders cannot be mixed: use another --collection or omit the encoder options"
            )
        return config, instance
    config = EncoderConfig(model=model, adapter=adapter if adapter != "none" else None,
                           bidirectional_layers=rec["bidirectional_layers"], pooling=rec["pooling"],
                           prompt=rec["prompt"], max_length=rec["max_length"],
                           padding_side=rec.get("padding_side", "right"), **runtime)
    if adapter and adapter_sha256(adapter) != rec.get("adapter_sha256"):
        raise CollectionError(f"the adapter at {adapter} has changed since this collection was built")
    return config, None
