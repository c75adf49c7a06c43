"""Embedding shards on disk, in the layout embedding-reader and autofaiss read.

    <dir>/emb/0000.npy              float32 (rows, dim) vectors
    <dir>/meta/0000.parquet         the same rows, same order: id, text, meta (JSON), source, line
    <dir>/embedding_config.json     encoder identity, dim, row counts: written last (= complete)

Shards are numbered from 0 in input order; concatenating them in number order gives the rows
in input order (file by file, line by line). Every file is written to a temporary name and
renamed, so a shard either exists whole or not at all. numpy and pyarrow only: no Ray here.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bellm_search._fs import atomic_write, read_json_object, write_json_atomic
from bellm_search.corpus import Record
from bellm_search.errors import BellmError, ConfigError

EMB_DIR, META_DIR, CONFIG_FILE = "emb", "meta", "embedding_config.json"
FORMAT = "bellm-search-embeddings"
FORMAT_VERSION = 1
META_COLUMNS = ("id", "text", "meta", "source", "line")


@dataclass
class ShardRows:
    """One shard's rows: vectors plus the columns of its meta parquet, aligned row by row."""

    vectors: np.ndarray  # (n, d) float32
    ids: list[str]
    texts: list[str]
    metas: list[str]  # JSON objects as text
    sources: list[str]  # input file of each row
    lines: np.ndarray  # (n,) int64, 1-based line in its source

    def __post_init__(self) -> None:
        n = len(self.vectors)
        sizes = {len(self.ids), len(self.texts), len(self.metas), len(self.sources), len(self.lines)}
        assert self.vectors.ndim == 2 and sizes == {n}, f"misaligned shard columns: {n} vectors, {sizes}"


def shard_name(number: int) -> str:
    return f"{number:04d}"


def shard_number(path: Path) -> int:
    return int(path.stem)


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        from bellm_search.errors import MissingDependency

        raise MissingDependency("pyarrow", "distributed") from None
    return pyarrow


# ----------------------------------------------------------------------------- writing
def write_shard(root: Path, number: int, rows: ShardRows) -> tuple[Path, Path]:
    """emb/NNNN.npy then meta/NNNN.parquet, each written to a temporary name and renamed."""
    pa = _pyarrow()
    emb, meta = root / EMB_DIR / f"{shard_name(number)}.npy", root / META_DIR / f"{shard_name(number)}.parquet"
    emb.parent.mkdir(parents=True, exist_ok=True)
    meta.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(emb, lambda fh: np.save(fh, np.ascontiguousarray(rows.vectors, dtype=np.float32)), mode="wb")
    table = pa.table({"id": pa.array(rows.ids, pa.string()), "text": pa.array(rows.texts, pa.string()),
                      "meta": pa.array(rows.metas, pa.string()), "source": pa.array(rows.sources, pa.string()),
                      "line": pa.array(np.asarray(rows.lines, np.int64), pa.int64())})
    atomic_write(meta, lambda fh: pa.parquet.write_table(table, fh), mode="wb")
    return emb, meta


def write_config(root: Path, data: dict[str, Any]) -> Path:
    """embedding_config.json (atomic): the marker that the shard set is complete."""
    path = root / CONFIG_FILE
    write_json_atomic(path, {"format": FORMAT, "format_version": FORMAT_VERSION, **data})
    return path


def has_shards(root: Path) -> bool:
    return any((root / EMB_DIR).glob("*.npy")) or any((root / META_DIR).glob("*.parquet")) or (root / CONFIG_FILE).exists()


# ----------------------------------------------------------------------------- the writer
class ShardWriter:
    """Buffers ordered rows and writes full shards; drops (and counts) error rows."""

    def __init__(self, root: Path, shard_rows: int) -> None:
        self.root, self.shard_rows = root, shard_rows
        self.parts: list[dict[str, np.ndarray]] = []
        self.buffered = self.shards = self.rows = self.invalid = 0
        self.dim: int | None = None
        self.problems: list[str] = []
        self.last_key = (-1, -1)

    def add(self, batch: dict[str, np.ndarray]) -> None:
        self._check_order(batch["file_no"], batch["line"])
        bad = batch["error"] != ""
        self.invalid += int(bad.sum())
        self.problems.extend(str(e) for e in batch["error"][bad][: max(0, 5 - len(self.problems))])
        keep = {k: v[~bad] for k, v in batch.items()}
        if not len(keep["id"]):
            return
        self.dim = int(keep["embedding"].shape[1])
        self.parts.append(keep)
        self.buffered += len(keep["id"])
        while self.buffered >= self.shard_rows:
            self._flush(self.shard_rows)

    def close(self) -> None:
        if self.buffered:
            self._flush(self.buffered)

    def _check_order(self, file_no: np.ndarray, line: np.ndarray) -> None:
        keys = list(zip(file_no.tolist(), line.tolist()))
        if keys and (keys[0] <= self.last_key or any(a >= b for a, b in zip(keys, keys[1:]))):
            raise RuntimeError(f"rows arrived out of input order near (file, line) {keys[0]}: "
                               "Ray Data did not preserve order (a bug)")
        if keys:
            self.last_key = keys[-1]

    def _flush(self, n: int) -> None:
        merged = {k: np.concatenate([p[k] for p in self.parts]) for k in self.parts[0]}
        head = {k: v[:n] for k, v in merged.items()}
        rest = {k: v[n:] for k, v in merged.items()}
        self.parts = [rest] if len(rest["id"]) else []
        self.buffered -= n
        rows = ShardRows(head["embedding"], head["id"].tolist(), head["text"].tolist(),
                                head["meta"].tolist(), head["source"].tolist(), head["line"])
        write_shard(self.root, self.shards, rows)
        self.shards += 1
        self.rows += n


# ----------------------------------------------------------------------------- reading
def read_config(root: Path) -> dict[str, Any]:
    path = root / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{root} holds no {CONFIG_FILE}: not a finished shard set "
                          "(make one with `bellm-search embed --engine ray --output-dir DIR`)")
    try:
        data = read_json_object(path, "shard set config")
    except BellmError as exc:
        raise ConfigError(str(exc)) from None
    if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{path}: not a {FORMAT} v{FORMAT_VERSION} file")
    return data


def list_shards(root: Path) -> list[tuple[Path, Path]]:
    """(emb, meta) pairs in shard-number order; a vector file without its meta (or vice versa) is an error."""
    embs = {shard_number(p): p for p in (root / EMB_DIR).glob("*.npy") if p.stem.isdigit()}
    metas = {shard_number(p): p for p in (root / META_DIR).glob("*.parquet") if p.stem.isdigit()}
    if embs.keys() != metas.keys():
        lone = sorted(embs.keys() ^ metas.keys())
        raise ConfigError(f"{root}: shards {lone} lack their {EMB_DIR}/ or {META_DIR}/ half")
    return [(embs[n], metas[n]) for n in sorted(embs)]


def read_vectors(emb: Path) -> np.ndarray:
    """A shard's vectors, memory-mapped (nothing is read until used). Never unpickled: a file of
    Python objects (or no .npy at all) is refused."""
    try:
        return np.load(emb, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{emb}: not a float32 vector file ({exc}); re-create the shard") from None


class ConcatRows:
    """The vectors of several shards as one (rows, dim) sequence, memory-mapped; a slice reads only
    the shards it spans (what ``Collection.ingest(vectors=...)`` takes, one chunk at a time)."""

    def __init__(self, parts: list[np.ndarray]) -> None:
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p) for p in parts])  # row where each part begins
        self.shape = (int(self.starts[-1]), int(parts[0].shape[1]) if parts else 0)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, step = rows.indices(len(self))
        assert step == 1, "only contiguous slices"
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        out = []
        while start < stop:
            part = self.parts[first]
            lo = start - int(self.starts[first])
            hi = min(len(part), stop - int(self.starts[first]))
            out.append(np.asarray(part[lo:hi], dtype=np.float32))
            start += hi - lo
            first += 1
        return np.concatenate(out) if out else np.zeros((0, self.shape[1]), np.float32)


def count_rows(meta: Path) -> int:
    return int(_pyarrow().parquet.ParquetFile(meta).metadata.num_rows)


def iter_records(meta: Path, batch_rows: int = 8192) -> Iterator[Record]:
    """A shard's rows as corpus Records (metadata decoded), streamed in row order."""
    parquet = _pyarrow().parquet.ParquetFile(meta)
    for batch in parquet.iter_batches(batch_size=batch_rows, columns=list(META_COLUMNS)):
        cols = batch.to_pydict()
        for sid, text, meta_json, source, line in zip(*(cols[c] for c in META_COLUMNS)):
            yield Record(sid, text, json.loads(meta_json) if meta_json else {}, source, int(line))


def check_aligned(emb: Path, meta: Path, dim: int) -> int:
    """Rows of a shard after checking that vectors and meta agree; raises ConfigError otherwise."""
    vectors = read_vectors(emb)
    rows = count_rows(meta)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise ConfigError(f"{emb}: vectors of shape {vectors.shape}, expected (rows, {dim})")
    if vectors.shape[0] != rows:
        raise ConfigError(f"{emb} has {vectors.shape[0]} rows but {meta} has {rows}: a damaged shard")
    return rows
