"""LMDB store of a collection: records, id maps, text hashes, fp16 vectors and state.

LMDB is the source of truth; the FAISS index is derived from it elsewhere. ``path`` is the
LMDB environment folder itself (a collection keeps it at ``<collection>/meta.lmdb``).

Named DBs (int ids are 8-byte big-endian keys, so cursor order = id order):

    docs     int id -> record JSON (the record as given plus {"id": source id})
    keys     source id -> int id (kept after delete: re-ingesting a deleted id stays skipped)
    hashes   normalised-text hash -> int id of the live document that owns it
    dochash  int id -> text hash (lets delete drop the hash entry the doc owns)
    vecs     int id -> fp16 vector bytes (kept after delete, see ``include_deleted``)
    state    str -> JSON (next_id, dim, counters, map_size, checkpoints of other modules)
    tombs    int id -> b"" for deleted documents
    dupof    int id -> (int64 first copy, float32 score) for records stored with ``dup_of`` (no
             vector): lets dedup read the duplicate links without decoding every record
    shingles int id -> the text's shingle hashes as little-endian uint64 bytes (b"" without text),
             written with the record by the caller (``pairs.shingles``); kept after delete
    words    int id -> the text's word hashes, the same way (``pairs.features.word_hashes``)

A store is refused on open when it is missing (only ``create=True`` makes one) or when its data
file is shorter than its pages (a read past the end would kill the process with SIGBUS).
One ``Store`` per path per process: LMDB forbids opening one environment twice in a process,
and an environment must never cross ``fork()`` (open a new ``Store`` in the child). Reads are
thread-safe; writes go through ``with store.writer() as w:``, committed in one transaction.
Only one process may write a store at a time; a concurrent writer is detected at commit.
"""
from __future__ import annotations

import hashlib
import json
import struct
import logging
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import lmdb
import numpy as np

from bellm_search._sync import ReadWriteLock
from bellm_search.errors import CollectionError

log = logging.getLogger(__name__)

DB_NAMES = ("docs", "keys", "hashes", "dochash", "vecs", "state", "tombs", "dupof", "shingles", "words")
LATER_DBS = ("dupof", "shingles", "words")  # a read-only open of an older store goes without them
DUPOF = struct.Struct("<qf")
COUNTERS = ("n_docs", "n_vectors", "n_deleted")
MAX_READERS = 1024
MAX_KEY = 511  # LMDB's default maximum key size
GROW_ATTEMPTS = 8


# ---------------------------------------------------------------- encoding helpers

def id_key(int_id: int) -> bytes:
    return int(int_id).to_bytes(8, "big")


def key_id(key: bytes) -> int:
    return int.from_bytes(key, "big")


def source_key(source_id: str) -> bytes:
    """Source id as an LMDB key; ids over LMDB's key limit become a digest (0xff never starts UTF-8)."""
    if not isinstance(source_id, str) or not source_id:
        raise CollectionError(f"source id must be a non-empty string, got {source_id!r}")
    raw = source_id.encode("utf-8")
    return raw if len(raw) <= MAX_KEY else b"\xff" + hashlib.blake2b(raw, digest_size=32).digest()


def hash_key(h: bytes) -> bytes:
    if not isinstance(h, (bytes, bytearray)) or not 0 < len(h) <= MAX_KEY:
        raise CollectionError(f"text hash must be 1..{MAX_KEY} bytes, got {h!r:.40}")
    return bytes(h)


def dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def fp16_bytes(vector: Any, dim: int) -> bytes:
    """Validate one vector (shape (dim,), finite) and return it as little-endian fp16 bytes."""
    v = np.asarray(vector, dtype=np.float32)
    if v.shape != (dim,):
        raise CollectionError(f"vector has shape {v.shape}, the store expects ({dim},)")
    with np.errstate(over="ignore"):
        h = v.astype("<f2")
    if not np.isfinite(h).all():
        raise CollectionError("vector has NaN/inf values (or values beyond fp16 range)")
    return h.tobytes()


# ---------------------------------------------------------------- the environment

class _Env:
    """Opening, verifying and migrating the LMDB environment, and its transactions: the part of a
    store that is not about records."""

    def __init__(self, path: str | Path, readonly: bool, create: bool, map_size: int) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._env = self._open_env(map_size, create)
        self._pid = os.getpid()
        self._gate = ReadWriteLock()  # transactions share it; a map resize takes it alone
        self._write_lock = threading.Lock()
        self._writer_thread: int | None = None
        self._check_complete()
        self._dbs = self._open_dbs()
        self._adopt_recorded_map_size()

    def _open_env(self, map_size: int, create: bool) -> lmdb.Environment:
        data = self.path / "data.mdb"
        if not data.is_file() and (self.readonly or not create):
            raise CollectionError(
                f"no store at {self.path}: its data.mdb holds the only copy of the documents, ids and vectors "
                "(the index cannot rebuild it); restore it from a backup, or re-ingest the corpus into a new collection")
        if not self.readonly:
            self.path.mkdir(parents=True, exist_ok=True)
        size = max(int(map_size), data.stat().st_size if data.is_file() else 0)
        try:
            return lmdb.open(str(self.path), readonly=self.readonly, lock=True, subdir=True,
                             max_dbs=len(DB_NAMES) + 2, max_readers=MAX_READERS, map_size=size)
        except lmdb.Error as e:
            raise CollectionError(f"cannot open store {self.path}: {e}") from e

    def _check_complete(self) -> None:
        """Refuse a data file shorter than its pages (cut short by a copy, a full disk or a truncate):
        LMDB maps it and the first read past its end kills the process with SIGBUS."""
        need = (self._env.info()["last_pgno"] + 1) * self._env.stat()["psize"]
        have = (self.path / "data.mdb").stat().st_size
        if have < need:
            self._env.close()
            raise CollectionError(
                f"store {self.path} is damaged: data.mdb holds {have} bytes but its pages need {need} "
                "(the file was cut short); restore it from a backup, or re-ingest the corpus into a new collection")

    def _open_dbs(self) -> dict[str, Any]:
        try:
            if self.readonly:
                dbs = {}
                for n in DB_NAMES:
                    try:
                        dbs[n] = self._env.open_db(n.encode(), create=False)
                    except lmdb.NotFoundError:
                        if n not in LATER_DBS:  # stores written before a later DB existed lack it
                            raise
                return dbs
            with self._env.begin(write=True) as txn:
                dbs = {n: self._env.open_db(n.encode(), txn=txn) for n in DB_NAMES}
                if txn.get(b"dupof_indexed", db=dbs["state"]) is None:
                    _backfill_dupof(txn, dbs)
                return dbs
        except lmdb.Error as e:
            self._env.close()
            raise CollectionError(f"{self.path} is not a bellm-search store ({e})") from e

    def _adopt_recorded_map_size(self) -> None:
        recorded = self.get_state("map_size", 0)
        if recorded > self._env.info()["map_size"]:
            self._env.set_mapsize(recorded)

    def close(self) -> None:
        self._env.close()

    @contextmanager
    def _txn(self, write: bool = False) -> Iterator[lmdb.Transaction]:
        """A short transaction; read ones adopt a map grown by another process."""
        if os.getpid() != self._pid:
            raise CollectionError("a Store cannot cross fork(): open a new Store in this process")
        for attempt in (0, 1):
            with self._gate.read():
                try:
                    txn = self._env.begin(write=write)
                except lmdb.MapResizedError:
                    if attempt:
                        raise
                    txn = None
                if txn is not None:
                    try:
                        yield txn
                    except BaseException:
                        txn.abort()
                        raise
                    txn.commit()  # read txns: commit == abort
                    return
            with self._gate.write():  # no txn open in this process: adopt the size another one grew to
                self._env.set_mapsize(0)

    def _grow(self, need: int) -> int:
        """Enlarge the map to at least double (no txn may be open in this process)."""
        with self._gate.write():
            size = max(2 * self._env.info()["map_size"], self._env.info()["map_size"] + 2 * need)
            self._env.set_mapsize(size)
            size = self._env.info()["map_size"]
        log.info("grew LMDB map of %s to %d MiB", self.path, size >> 20)
        return size

    def _write(self, apply: Callable[[lmdb.Transaction], None], size: int) -> int | None:
        """Run ``apply`` in one write txn; on a full map grow it and run it again. Returns the new map
        size when it grew (the caller records it), else None."""
        map_size = None
        for _ in range(GROW_ATTEMPTS):
            try:
                with self._txn(write=True) as txn:
                    apply(txn)
                    if map_size is not None:
                        txn.put(b"map_size", dumps(map_size), db=self._dbs["state"])
                return map_size
            except lmdb.MapFullError:
                map_size = self._grow(size + 4096)
        raise CollectionError(f"store {self.path}: map still full after {GROW_ATTEMPTS} enlargements")

    def _state(self, txn: lmdb.Transaction, key: str, default: Any = None) -> Any:
        raw = txn.get(key.encode("utf-8"), db=self._dbs["state"])
        return default if raw is None else json.loads(raw)

    def get_state(self, key: str, default: Any = None) -> Any:
        with self._txn() as txn:
            return self._state(txn, key, default)

    def _scan(self, db: str, pos: int, stop: int | None, batch: int,
              include_deleted: bool) -> tuple[list[int], list[bytes], int | None]:
        """Up to ``batch`` (id, value) from ``pos`` in one txn; also the next position (None = end)."""
        ids: list[int] = []
        vals: list[bytes] = []
        with self._txn() as txn, txn.cursor(db=self._dbs[db]) as cur:
            if not cur.set_range(id_key(pos)):
                return ids, vals, None
            for k, v in cur.iternext():
                i = key_id(k)
                if stop is not None and i >= stop:
                    return ids, vals, None
                if include_deleted or txn.get(k, db=self._dbs["tombs"]) is None:
                    ids.append(i)
                    vals.append(v)
                if len(ids) == batch:
                    return ids, vals, i + 1
        return ids, vals, None

    def _iter(self, db: str, start: int, stop: int | None, batch: int,
              include_deleted: bool) -> Iterator[tuple[list[int], list[bytes]]]:
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        pos: int | None = max(0, start)
        while pos is not None:
            ids, vals, pos = self._scan(db, pos, stop, batch, include_deleted)
            if ids:
                yield ids, vals


def _backfill_dupof(txn: lmdb.Transaction, dbs: dict[str, Any]) -> None:
    """One-time migration: index the ``dup_of`` links of records written before the dupof DB
    (collections write ``dup_of``/``dup_score`` into the record as well)."""
    with txn.cursor(db=dbs["docs"]) as cur:
        for k, v in cur:
            if b'"dup_of"' in v and txn.get(k, db=dbs["tombs"]) is None:
                doc = json.loads(v)
                if isinstance(doc.get("dup_of"), int):
                    txn.put(k, DUPOF.pack(int(doc["dup_of"]), float(doc.get("dup_score") or 1.0)), db=dbs["dupof"])
    txn.put(b"dupof_indexed", b"1", db=dbs["state"])


# ---------------------------------------------------------------- the store

class Store(_Env):
    """An LMDB environment holding one collection's records, vectors and shingle hashes.

    ``create``: make the environment when it does not exist (only a new collection does; opening
    one whose store is gone is refused rather than starting an empty one)."""

    def __init__(self, path: str | Path, *, readonly: bool = False, create: bool = False, dim: int | None = None,
                 map_size: int = 1 << 30) -> None:
        if dim is not None and (not isinstance(dim, int) or dim <= 0):
            raise CollectionError(f"dim must be a positive integer, got {dim!r}")
        super().__init__(path, readonly, create, map_size)
        self._links: tuple[tuple[int, int], tuple[np.ndarray, ...]] | None = None
        self._check_dim(dim)

    def _check_dim(self, dim: int | None) -> None:
        stored = self.dim
        if dim is None or stored == dim:
            return
        if stored is not None:
            self.close()
            raise CollectionError(f"store {self.path} holds {stored}-d vectors, got dim={dim}")
        if not self.readonly:
            with self.writer() as w:
                w._dim = dim  # committed with the (otherwise empty) block

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ counters

    @property
    def dim(self) -> int | None:
        return self.get_state("dim")

    def next_id(self) -> int:
        return self.get_state("next_id", 0)

    def count(self) -> int:
        """Live documents (exact duplicates included; deleted ones not)."""
        with self._txn() as txn:
            return self._state(txn, "n_docs", 0) - self._state(txn, "n_deleted", 0)

    def num_vectors(self) -> int:
        """Live documents that have a vector."""
        return self.get_state("n_vectors", 0)

    # ------------------------------------------------------------ records and keys

    def _live_doc(self, txn: lmdb.Transaction, int_id: int) -> dict | None:
        if int_id < 0 or txn.get(id_key(int_id), db=self._dbs["tombs"]) is not None:
            return None
        raw = txn.get(id_key(int_id), db=self._dbs["docs"])
        return None if raw is None else json.loads(raw)

    def get_doc(self, int_id: int) -> dict | None:
        """The record of a live document; None when unknown or deleted."""
        return self.get_docs([int_id])[0]

    def get_docs(self, int_ids: Iterable[int]) -> list[dict | None]:
        with self._txn() as txn:
            return [self._live_doc(txn, int(i)) for i in int_ids]

    def lookup_key(self, source_id: str) -> int | None:
        """Int id of a source id, deleted or not (``get_doc`` is None for a deleted one)."""
        return self.lookup_keys([source_id])[0]

    def lookup_keys(self, source_ids: list[str]) -> list[int | None]:
        with self._txn() as txn:
            raws = [txn.get(source_key(s), db=self._dbs["keys"]) for s in source_ids]
        return [None if r is None else key_id(r) for r in raws]

    def lookup_hash(self, h: bytes) -> int | None:
        """Int id of the live document owning this text hash."""
        with self._txn() as txn:
            raw = txn.get(hash_key(h), db=self._dbs["hashes"])
        return None if raw is None else key_id(raw)

    def text_hash(self, int_id: int) -> bytes | None:
        """The text hash a document was stored with (None: stored without one)."""
        with self._txn() as txn:
            return txn.get(id_key(int_id), db=self._dbs["dochash"])

    def deleted_ids(self) -> np.ndarray:
        with self._txn() as txn, txn.cursor(db=self._dbs["tombs"]) as cur:
            ids = [key_id(k) for k in cur.iternext(keys=True, values=False)]
        return np.array(ids, dtype=np.int64)

    def live_ids(self, with_vectors: bool = False) -> np.ndarray:
        """Int ids of live documents (or of live documents that have a vector), sorted; keys only."""
        with self._txn() as txn, txn.cursor(db=self._dbs["vecs" if with_vectors else "docs"]) as cur:
            ids = np.frombuffer(b"".join(cur.iternext(keys=True, values=False)), dtype=">i8").astype(np.int64)
        gone = self.deleted_ids()
        return ids[~np.isin(ids, gone)] if len(gone) else ids

    def iter_docs(self, start: int = 0, batch: int = 4096) -> Iterator[tuple[int, dict]]:
        """(int id, record) of live documents in id order."""
        for ids, vals in self._iter("docs", start, None, batch, False):
            yield from zip(ids, map(json.loads, vals))

    # ------------------------------------------------------------ vectors

    def get_vectors(self, int_ids: Any) -> np.ndarray:
        """Stored vectors (deleted docs included) as float32 (n, dim); a missing one is an error."""
        ids = np.asarray(int_ids, dtype=np.int64).reshape(-1)
        dim = self.dim or 0
        out = np.empty((len(ids), dim), dtype="<f2")
        with self._txn() as txn:
            for row, i in enumerate(ids.tolist()):
                raw = txn.get(id_key(i), db=self._dbs["vecs"]) if i >= 0 else None
                if raw is None:
                    raise CollectionError(f"no vector stored for id {i} in {self.path}")
                out[row] = np.frombuffer(raw, dtype="<f2")
        return out.astype(np.float32)

    def iter_vectors(self, start: int = 0, stop: int | None = None, batch: int = 65536,
                     include_deleted: bool = False, dtype: Any = np.float32) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids int64 (b,), vecs float32 (b, dim)) in id order for ids in [start, stop) with a
        vector. Each batch is its own read txn, so no txn stays open between yields.
        ``dtype=np.float16``: the stored half floats as they are (read-only, no conversion copy)."""
        dim = self.dim
        for ids, vals in self._iter("vecs", start, stop, batch, include_deleted):
            vecs = np.frombuffer(b"".join(vals), dtype="<f2").reshape(len(ids), dim)
            yield np.array(ids, dtype=np.int64), vecs.astype(dtype, copy=False)

    # ------------------------------------------------------------ shingle hashes

    def shingles(self, int_ids: Iterable[int], compute: Callable[[dict], bytes] | None = None,
                 db_name: str = "shingles") -> list[np.ndarray]:
        """The stored shingle hashes (sorted unique uint64) of each document; an empty array for one
        stored without text. One not stored (a store not yet migrated, or an unknown id) is
        ``compute(record)`` when given, else an error. ``db_name="words"``: the word hashes."""
        out: list[np.ndarray] = []
        with self._txn() as txn:
            db = self._dbs.get(db_name)
            for i in map(int, int_ids):
                raw = txn.get(id_key(i), db=db) if db is not None and i >= 0 else None
                if raw is None:
                    doc = txn.get(id_key(i), db=self._dbs["docs"]) if i >= 0 else None
                    if compute is None or doc is None:
                        raise CollectionError(f"no {db_name} stored for id {i} in {self.path}")
                    raw = compute(json.loads(doc))
                out.append(np.frombuffer(raw, dtype="<u8"))
        return out

    def fill_shingles(self, compute: Callable[[dict], bytes], batch: int = 2048, db_name: str = "shingles") -> int:
        """Migration: store ``compute(record)`` for every document that has no shingle hashes yet
        (deleted ones included, as their vectors are), one committed txn per batch, so a crash keeps
        what was done and a re-run finishes. Returns how many it filled (0 at once when complete).
        ``db_name="words"``: the word hashes."""
        if self.readonly:
            raise CollectionError(f"store {self.path} was opened readonly")
        db = self._dbs[db_name]
        with self._txn() as txn:
            if txn.stat(self._dbs["docs"])["entries"] == txn.stat(db)["entries"]:
                return 0
        filled = 0
        for ids, vals in self._iter("docs", 0, None, batch, True):
            with self._txn() as txn:
                todo = [(i, v) for i, v in zip(ids, vals) if txn.get(id_key(i), db=db) is None]
            rows = [(id_key(i), compute(json.loads(v))) for i, v in todo]
            if rows:
                with self._write_lock:
                    self._write(lambda t: [t.put(k, v, db=db) for k, v in rows], sum(len(v) + 8 for _, v in rows))
                filled += len(rows)
        if filled:
            log.info("stored the %s hashes of %d documents of %s", db_name.rstrip("s"), filled, self.path)
        return filled

    # ------------------------------------------------------------ duplicate links

    def dup_links(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(duplicate, first copy, score) of every live document stored as a duplicate."""
        dup, first, score = [], [], []
        if "dupof" in self._dbs:
            with self._txn() as txn, txn.cursor(db=self._dbs["dupof"]) as cur:
                for k, v in cur:
                    f, sc = DUPOF.unpack(v)
                    dup.append(key_id(k))
                    first.append(f)
                    score.append(sc)
        else:
            for int_id, doc in self.iter_docs():
                if isinstance(doc.get("dup_of"), int):
                    dup.append(int_id)
                    first.append(int(doc["dup_of"]))
                    score.append(float(doc.get("dup_score") or 1.0))
        d = np.asarray(dup, dtype=np.int64)
        gone = self.deleted_ids()
        ok = ~np.isin(d, gone) if len(gone) else np.ones(len(d), dtype=bool)
        return d[ok], np.asarray(first, dtype=np.int64)[ok], np.asarray(score, dtype=np.float32)[ok]

    def linked(self, int_ids: Iterable[int], min_score: float = 1.0) -> list[np.ndarray]:
        """For each id: the live documents linked to it as duplicates with a score >= min_score
        (exact copies at 1.0), in id order. The reverse link table is cached until the store changes."""
        with self._txn() as txn:
            version = (self._state(txn, "next_id", 0), self._state(txn, "n_deleted", 0))
        if self._links is None or self._links[0] != version:
            dup, first, score = self.dup_links()
            order = np.lexsort((dup, first))
            self._links = (version, (dup[order], first[order], score[order]))
        dup, first, score = self._links[1]
        out = []
        for i in map(int, int_ids):
            lo, hi = np.searchsorted(first, i, "left"), np.searchsorted(first, i, "right")
            out.append(dup[lo:hi][score[lo:hi] >= min_score])
        return out

    # ------------------------------------------------------------ writes

    def writer(self) -> Writer:
        """``with store.writer() as w:`` buffers writes and commits them in one txn at exit."""
        if self.readonly:
            raise CollectionError(f"store {self.path} was opened readonly")
        return Writer(self)


class Writer:
    """A write batch: buffered operations with a pending view, applied in one LMDB txn."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._open = False

    def __enter__(self) -> Writer:
        s = self._store
        if s._writer_thread == threading.get_ident():
            raise CollectionError("nested store.writer() blocks in one thread are not supported")
        s._write_lock.acquire()
        try:
            with s._txn() as txn:
                self._base_next = s._state(txn, "next_id", 0)
                self._dim: int | None = s._state(txn, "dim")
        except BaseException:
            s._write_lock.release()
            raise
        s._writer_thread = threading.get_ident()
        self._next = self._base_next
        self._ops: list[tuple[str, bytes, bytes | None]] = []
        self._keys: dict[bytes, int] = {}
        self._hashes: dict[bytes, int | None] = {}
        self._added: dict[int, tuple[bool, bytes | None]] = {}  # id -> (has vector, hash)
        self._deleted: set[int] = set()
        self._delta = dict.fromkeys(COUNTERS, 0)
        self._open = True
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        try:
            if exc_type is None and self._open:
                self._commit()
        finally:
            self._open = False
            self._store._writer_thread = None
            self._store._write_lock.release()

    def _check_open(self) -> None:
        if not self._open:
            raise CollectionError("use the writer inside `with store.writer() as w:`")

    # ------------------------------------------------------------ pending view

    def lookup_key(self, source_id: str) -> int | None:
        self._check_open()
        k = source_key(source_id)
        return self._keys[k] if k in self._keys else self._store.lookup_key(source_id)

    def lookup_hash(self, h: bytes) -> int | None:
        self._check_open()
        k = hash_key(h)
        return self._hashes[k] if k in self._hashes else self._store.lookup_hash(k)

    # ------------------------------------------------------------ operations

    def add_doc(self, source_id: str, record: dict, *, text_hash: bytes | None = None,
                vector: np.ndarray | None = None, shingles: bytes | None = None, words: bytes | None = None,
                dup_of: tuple[int, float] | None = None, replaces: int | None = None) -> int:
        """Store a new document under the next int id and return that id. ``shingles`` / ``words``:
        its shingle / word hashes as bytes (see ``Store.shingles``). ``dup_of`` = (int id of the first copy, score)
        records the document as a duplicate (see ``dup_links``). ``replaces``: the int id this
        source id had, deleted earlier in this batch (re-keying)."""
        self._check_open()
        known = self.lookup_key(source_id)
        if known is not None and not (known == replaces and replaces in self._deleted):
            raise CollectionError(f"source id {source_id!r} is already in the store")
        if not isinstance(record, dict):
            raise CollectionError(f"record of {source_id!r} must be a dict, got {type(record).__name__}")
        h = None if text_hash is None else hash_key(text_hash)
        vec = self._vector_bytes(vector)
        try:
            doc = dumps({**record, "id": source_id})
        except (TypeError, ValueError) as e:
            raise CollectionError(f"record of {source_id!r} is not JSON-serialisable: {e}") from e
        int_id, key = self._next, id_key(self._next)
        self._next += 1
        self._put("docs", key, doc)
        self._keys[source_key(source_id)] = int_id
        self._put("keys", source_key(source_id), key)
        if vec is not None:
            self._put("vecs", key, vec)
        if h is not None:
            self._add_hash(h, int_id)
        if shingles is not None:
            self._put("shingles", key, bytes(shingles))
        if words is not None:
            self._put("words", key, bytes(words))
        if dup_of is not None:
            self._put("dupof", key, DUPOF.pack(int(dup_of[0]), float(dup_of[1])))
        self._added[int_id] = (vec is not None, h)
        self._delta["n_docs"] += 1
        self._delta["n_vectors"] += vec is not None
        return int_id

    def _vector_bytes(self, vector: Any) -> bytes | None:
        if vector is None:
            return None
        if self._dim is not None:
            return fp16_bytes(vector, self._dim)
        if np.ndim(vector) != 1 or not np.shape(vector)[0]:
            raise CollectionError(f"vector must be 1-d and non-empty, got shape {np.shape(vector)}")
        vec = fp16_bytes(vector, np.shape(vector)[0])
        self._dim = np.shape(vector)[0]  # the first vector fixes the store's dim
        return vec

    def _add_hash(self, h: bytes, int_id: int) -> None:
        self._put("dochash", id_key(int_id), h)
        if self.lookup_hash(h) is None:
            self._hashes[h] = int_id
            self._put("hashes", h, id_key(int_id))

    def delete(self, int_id: int) -> bool:
        """Tombstone a document; False when unknown or already deleted."""
        self._check_open()
        int_id = int(int_id)
        info = self._doc_info(int_id)
        if info is None:
            return False
        has_vec, h = info
        key = id_key(int_id)
        self._deleted.add(int_id)
        self._put("tombs", key, b"")
        self._put("dupof", key, None)
        if h is not None and self.lookup_hash(h) == int_id:
            self._hashes[h] = None
            self._put("hashes", h, None)
        self._delta["n_deleted"] += 1
        self._delta["n_vectors"] -= has_vec
        return True

    def is_live(self, int_id: int) -> bool:
        """Whether a document is stored (or added in this batch) and not deleted (nor in this batch)."""
        self._check_open()
        return self._doc_info(int(int_id)) is not None

    def put_record(self, int_id: int, record: dict) -> None:
        """Replace the record of a live document (its source id stays: ``record["id"]`` must keep it)."""
        self._check_open()
        if not self.is_live(int_id):
            raise CollectionError(f"no live document {int_id} to update")
        self._put("docs", id_key(int_id), dumps(record))

    def link(self, int_id: int, first: int, score: float) -> None:
        """Record a live document as a duplicate of ``first`` (see ``Store.dup_links``)."""
        self._check_open()
        if not self.is_live(int_id):
            raise CollectionError(f"no live document {int_id} to link")
        self._put("dupof", id_key(int_id), DUPOF.pack(int(first), float(score)))

    def _doc_info(self, int_id: int) -> tuple[bool, bytes | None] | None:
        """(has vector, text hash) of a live document, pending adds included; None otherwise."""
        if int_id < 0 or int_id in self._deleted:
            return None
        if int_id in self._added:
            return self._added[int_id]
        s, key = self._store, id_key(int_id)
        with s._txn() as txn:
            if txn.get(key, db=s._dbs["docs"]) is None or txn.get(key, db=s._dbs["tombs"]) is not None:
                return None
            h = txn.get(key, db=s._dbs["dochash"])
            return txn.get(key, db=s._dbs["vecs"]) is not None, h

    def _put(self, db: str, key: bytes, value: bytes | None) -> None:
        self._ops.append((db, key, value))

    # ------------------------------------------------------------ commit

    def _commit(self) -> None:
        """Apply the buffer in one txn (on a full map: grown, and the whole buffer replayed)."""
        self._store._write(self._apply, sum(len(k) + len(v or b"") for _, k, v in self._ops))

    def _apply(self, txn: lmdb.Transaction) -> None:
        s = self._store
        if s._state(txn, "next_id", 0) != self._base_next:
            raise CollectionError(f"store {s.path} was written by another writer meanwhile; "
                                  "only one process may write a collection at a time")
        for db, key, value in self._ops:
            if value is None:
                txn.delete(key, db=s._dbs[db])  # False (no error) when absent
            else:
                txn.put(key, value, db=s._dbs[db])
        state = {k: s._state(txn, k, 0) + d for k, d in self._delta.items() if d}
        state["next_id"] = self._next
        if self._dim is not None:
            state["dim"] = self._dim
        for k, v in state.items():
            txn.put(k.encode("utf-8"), dumps(v), db=s._dbs["state"])
