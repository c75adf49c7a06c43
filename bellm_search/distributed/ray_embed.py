"""Beyond one machine: Ray Data encoding into embedding shards, and collections built from shards.

    embed_with_ray(inputs, DIR, ...)            JSONL -> Ray Data -> encoder actor pool -> DIR/emb, DIR/meta
    ingest_from_embeddings(COLL, DIR, ...)      shards made anywhere -> LMDB + index (no re-encoding)
    ingest_with_ray(COLL, inputs, ...)          the two chained

Pipeline: one read task per input file (the project's validated corpus reader, so ids, metadata
and ``path:line`` errors are exactly those of the local path), cut into ``batch_size`` blocks ->
``map_batches`` with a callable class on an actor pool (``ActorPoolStrategy(size=num_encoders)``,
``num_gpus`` each; each actor builds its Encoder once) -> the driver writes shards. Ray runs
with ``preserve_order`` and every row carries its (file, line) position; the writer checks that
positions only increase, so shard 0000 holds the first rows of the first file and the shards,
concatenated in number order, are the input order. A crashed actor is restarted and its batch
re-run (``max_restarts``/``max_task_retries``); an actor call's output exists only once the call
has finished, so no row is lost or written twice.

Ray is optional (``pip install 'bellm-search[distributed]'``) and imported only in here.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from bellm_search import __version__
from bellm_search.collection.core import IngestStats
from bellm_search.config import EMBEDDED_MODEL, EncoderConfig
from bellm_search.corpus import CorpusOptions, ReadStats, read_corpus
from bellm_search.errors import BellmError, CollectionError, ConfigError, CorpusError, MissingDependency
from bellm_search.distributed import shards

log = logging.getLogger(__name__)

READ_BLOCK_ROWS = 4096  # rows per batch a file reader yields (Ray merges them into blocks)
SHARD_ROWS = 100_000  # rows per written shard (the last one may be shorter)


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or MissingDependency naming the pip extra."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise MissingDependency("ray", "distributed") from None
    return ray


def expand_inputs(inputs: list[str]) -> list[str]:
    """Files and globs -> existing files: globs sorted, given order kept, repeats dropped."""
    files: list[str] = []
    for item in inputs:
        matched = sorted(glob.glob(item)) if glob.has_magic(item) else [item]
        if not matched:
            raise CorpusError(item, 0, "the pattern matches no file")
        for path in matched:
            if not os.path.isfile(path):
                raise CorpusError(path, 0, "no such file")
            if path not in files:
                files.append(path)
    return files


def _as_config(encoder: dict[str, Any] | EncoderConfig) -> EncoderConfig:
    if isinstance(encoder, EncoderConfig):
        return encoder
    from bellm_search.encoder.resolve import resolve_config

    return resolve_config(**encoder)


def encoder_record(config: EncoderConfig) -> dict[str, Any]:
    """The encoder as a collection manifest records it (identity + how to rebuild)."""
    from bellm_search.collection.core import _encoder_record

    return _encoder_record(config)


# ----------------------------------------------------------------------------- Ray stages
class _Collect(ReadStats):
    """ReadStats that also keeps each skipped line's error, so it can travel as a row."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: list[CorpusError] = []

    def skip(self, error: CorpusError) -> None:
        super().skip(error)
        self.errors.append(error)


def _rows_block(rows: list[tuple]) -> dict[str, np.ndarray]:
    file_no, line, ids, texts, metas, sources, errors = zip(*rows)
    obj = lambda xs: np.array(xs, dtype=object)  # noqa: E731 -- strings stay Python objects
    return {"file_no": np.array(file_no, np.int64), "line": np.array(line, np.int64), "id": obj(ids),
            "text": obj(texts), "meta": obj(metas), "source": obj(sources), "error": obj(errors)}


class RemoteCorpusError(Exception):
    """A CorpusError that survives pickling out of a Ray worker (CorpusError's does not). The line
    comes first: Ray Data appends its retry advice to a leading string argument, or adds one."""

    def __init__(self, line: int, path: str, problem: str, *notes: str) -> None:
        super().__init__(line, path, problem, *notes)

    def to_corpus_error(self) -> CorpusError:
        line, path, problem = self.args[:3]
        return CorpusError(path, line, problem)


def read_files(batch: dict[str, np.ndarray], text_field: str, id_field: str, skip_invalid: bool,
               prefix_ids: bool) -> Iterator[dict[str, np.ndarray]]:
    """Ray stage: each input file -> blocks of rows in line order; skipped lines become error rows."""
    try:
        yield from _read_files(batch, CorpusOptions(text_field, id_field, skip_invalid, prefix_ids))
    except CorpusError as exc:
        raise RemoteCorpusError(exc.line, exc.path, exc.problem) from None


def _read_files(batch: dict[str, np.ndarray], options: CorpusOptions) -> Iterator[dict[str, np.ndarray]]:
    for file_no, path in zip(batch["file_no"], batch["path"]):
        rows: list[tuple] = []
        stats = _Collect()
        for rec in read_corpus(str(path), options, stats):
            rows.extend(_error_rows(stats, file_no, path))
            rows.append((file_no, rec.line, rec.id, rec.text, json.dumps(rec.meta, ensure_ascii=False), rec.path, ""))
            if len(rows) >= READ_BLOCK_ROWS:
                yield _rows_block(rows)
                rows = []
        rows.extend(_error_rows(stats, file_no, path))
        if rows:
            yield _rows_block(rows)


def _error_rows(stats: _Collect, file_no: int, path: str) -> list[tuple]:
    out = [(file_no, e.line, "", "", "{}", str(path), str(e)) for e in stats.errors]
    stats.errors.clear()
    return out


class EncodeActor:
    """Ray stage (callable class = actor pool): builds the Encoder once, embeds each batch.

    ``crash_marker`` is for tests: the first actor that finds the file missing creates it and
    exits hard, as a node loss or an OOM kill would end it."""

    def __init__(self, config: dict[str, Any], crash_marker: str | None = None) -> None:
        from bellm_search.encoder.encode import Encoder

        self.encoder = Encoder(EncoderConfig.from_dict(config))
        self.crash_marker = crash_marker

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.crash_marker and not os.path.exists(self.crash_marker):
            Path(self.crash_marker).touch()
            os._exit(1)
        ok = batch["error"] == ""
        vectors = np.zeros((len(ok), self.encoder.dim), np.float32)  # (B, d); error rows stay zero
        if ok.any():
            vectors[ok] = self.encoder.encode([str(t) for t in batch["text"][ok]], show_progress_bar=False)
        return {**batch, "embedding": vectors}


# ----------------------------------------------------------------------------- the driver side
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
        rows = shards.ShardRows(head["embedding"], head["id"].tolist(), head["text"].tolist(),
                                head["meta"].tolist(), head["source"].tolist(), head["line"])
        shards.write_shard(self.root, self.shards, rows)
        self.shards += 1
        self.rows += n


@contextmanager
def ray_session(address: str | None) -> Iterator[Any]:
    """Use the running Ray session, or connect/start one (``address``: None = local, "auto",
    "ray://host:10001") and shut it down afterwards."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    local = {"include_dashboard": False, "logging_level": logging.WARNING} if address is None else {}
    ray.init(address=address, **local)
    try:
        yield ray
    finally:
        ray.shutdown()


@contextmanager
def _ordered(ray: Any) -> Iterator[None]:
    """Ray Data keeps the input order of blocks for this run; the previous setting is restored."""
    ctx = ray.data.DataContext.get_current()
    saved = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True
    try:
        yield
    finally:
        ctx.execution_options.preserve_order = saved


def encoder_cpus(cluster_cpus: float, num_encoders: int, gpus_per_encoder: float) -> float:
    """CPUs each encoder actor reserves: 1 beside a GPU; for CPU actors, a share of the cluster that
    leaves one CPU for reading files (all of it taken, reading would wait forever)."""
    if gpus_per_encoder > 0:
        return 1.0
    share = (cluster_cpus - 1) / num_encoders
    if share <= 0:
        raise ConfigError(f"a Ray cluster with {cluster_cpus:g} CPU(s) has none left for encoders after reading files")
    return min(1.0, share)


def build_dataset(ray: Any, files: list[str], config: EncoderConfig, *, num_encoders: int, gpus_per_encoder: float,
                  cpus_per_encoder: float, text_field: str, id_field: str, batch_size: int, skip_invalid: bool,
                  max_retries: int, crash_marker: str | None = None) -> Any:
    """The lazy Ray Data pipeline: files -> rows -> rows + "embedding" (nothing runs yet).

    A read task's output is merged into large blocks, and an actor never splits a block, so the
    rows are cut back into ``batch_size`` blocks (a streaming repartition, fused into the read)."""
    items = [{"file_no": i, "path": p} for i, p in enumerate(files)]
    ds = ray.data.from_items(items, override_num_blocks=len(files))
    ds = ds.map_batches(read_files, batch_size=1, batch_format="numpy",
                        fn_kwargs={"text_field": text_field, "id_field": id_field, "skip_invalid": skip_invalid,
                                   "prefix_ids": len(files) > 1})
    ds = ds.repartition(target_num_rows_per_block=batch_size)
    with warnings.catch_warnings():
        # Ray >= 2.60 flags every extra remote argument as deprecated, yet offers no named
        # parameter for the actor restart/retry limits; the extra pins ray < 2.64 meanwhile.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*", category=DeprecationWarning)
        return ds.map_batches(EncodeActor, fn_constructor_kwargs={"config": config.to_dict(), "crash_marker": crash_marker},
                              batch_size=batch_size, batch_format="numpy",
                              compute=ray.data.ActorPoolStrategy(size=num_encoders),
                              num_gpus=gpus_per_encoder, num_cpus=cpus_per_encoder,
                              max_restarts=max_retries, max_task_retries=max_retries)


def _user_error(exc: BaseException) -> BellmError | None:
    """The project's own error (a corpus line with its path:line) inside Ray's wrappers, if any."""
    seen: set[int] = set()
    todo: list[Any] = [exc]
    while todo:
        current = todo.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        if type(current) is RemoteCorpusError:  # not Ray's RayTaskError(RemoteCorpusError) wrapper
            return current.to_corpus_error()
        todo += [current.__cause__, current.__context__, getattr(current, "cause", None)]
    return None


def embed_with_ray(inputs: list[str], output_dir: Path, encoder_options: dict[str, Any] | EncoderConfig, *,
                   address: str | None = None, num_encoders: int = 1, gpus_per_encoder: float = 0.0,
                   text_field: str = "text", id_field: str = "id", batch_size: int = 256,
                   skip_invalid: bool = False, shard_rows: int = SHARD_ROWS, cpus_per_encoder: float | None = None,
                   max_retries: int = 3, crash_marker: str | None = None) -> dict[str, Any]:
    """Embed JSONL/TXT files (paths or globs) with a Ray actor pool into shards under ``output_dir``.

    Returns a summary: rows, dim, shards, invalid lines, seconds, texts/s. ``output_dir`` must be
    empty or new. ``crash_marker`` (tests): kill one actor once to exercise the retries."""
    _check_embed_args(num_encoders, gpus_per_encoder, batch_size, shard_rows, max_retries)
    output_dir = Path(output_dir)
    if shards.has_shards(output_dir):
        raise ConfigError(f"{output_dir} already holds embedding shards: choose a new --output-dir or delete it")
    files = expand_inputs(inputs)
    config = _as_config(encoder_options)
    start = time.perf_counter()
    writer = ShardWriter(output_dir, shard_rows)
    with ray_session(address) as ray, _ordered(ray):
        if cpus_per_encoder is None:
            cpus_per_encoder = encoder_cpus(ray.cluster_resources().get("CPU", 0.0), num_encoders, gpus_per_encoder)
        ds = build_dataset(ray, files, config, num_encoders=num_encoders, gpus_per_encoder=gpus_per_encoder,
                           cpus_per_encoder=cpus_per_encoder, text_field=text_field, id_field=id_field,
                           batch_size=batch_size, skip_invalid=skip_invalid, max_retries=max_retries,
                           crash_marker=crash_marker)
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                writer.add(batch)
        except Exception as exc:
            own = _user_error(exc)
            if own is None:
                raise
            raise own from None
    writer.close()
    seconds = time.perf_counter() - start
    summary = {"output_dir": str(output_dir), "rows": writer.rows, "dim": writer.dim, "shards": writer.shards,
               "files": len(files), "invalid_lines": writer.invalid, "problems": writer.problems,
               "seconds": round(seconds, 3), "texts_per_s": round(writer.rows / max(seconds, 1e-9), 2),
               "num_encoders": num_encoders, "gpus_per_encoder": gpus_per_encoder}
    shards.write_config(output_dir, {
        "encoder": encoder_record(config), "dim": writer.dim, "rows": writer.rows, "shards": writer.shards,
        "inputs": files, "text_field": text_field, "id_field": id_field, "invalid_lines": writer.invalid,
        "package_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return summary


def _check_embed_args(num_encoders: int, gpus: float, batch_size: int, shard_rows: int, retries: int) -> None:
    if num_encoders < 1:
        raise ConfigError(f"--num-encoders must be >= 1, got {num_encoders}")
    if gpus < 0:
        raise ConfigError(f"--gpus-per-encoder must be >= 0 (0 = CPU actors), got {gpus}")
    if batch_size < 1 or shard_rows < 1:
        raise ConfigError("--batch-size and the shard size must be >= 1")
    if retries < 0:
        raise ConfigError("max_retries must be >= 0")


# ----------------------------------------------------------------------------- shards -> collection
class GivenVectors:
    """Stands in for the encoder while a collection is built from shards: the vectors are given."""

    def __init__(self, config: EncoderConfig, dim: int) -> None:
        self.config, self.dim, self.truncated = config, dim, 0

    def encode(self, texts: list[str], **_: Any) -> np.ndarray:
        raise CollectionError("building from embedding shards: nothing should be encoded here (a bug)")


def config_from_record(record: dict[str, Any]) -> EncoderConfig:
    """Rebuild the encoder a shard set (or manifest) records; the adapter must exist here."""
    from bellm_search.encoder.resolve import default_adapter_dir

    adapter = record.get("adapter")
    adapter = str(default_adapter_dir()) if adapter == "default" else adapter
    settings = {k: record[k] for k in ("bidirectional_layers", "pooling", "prompt", "max_length", "padding_side")
                if k in record}
    model = None if record.get("model") == EMBEDDED_MODEL else record.get("model")
    return EncoderConfig(model=model, adapter=adapter if adapter not in (None, "none") else None, **settings)


def check_same_space(ours: dict[str, Any], theirs: dict[str, Any], what: str) -> None:
    """Refuse vectors from another encoder: compare the identity keys of two encoder records."""
    from bellm_search.collection.core import IDENTITY_KEYS

    diff = {k: (ours.get(k), theirs.get(k)) for k in IDENTITY_KEYS if ours.get(k) != theirs.get(k)}
    if diff:
        raise CollectionError(f"{what} were made with a different encoder {diff} (expected, shards): vectors from "
                              "different encoders cannot be mixed; re-embed with the same --model/--adapter options")


def _open_or_create(path: Path, info: dict[str, Any], encoder_options: dict[str, Any] | EncoderConfig | None,
                    normalize_social: bool) -> Any:
    from bellm_search.collection.core import MANIFEST, Collection, encoder_identity

    if (path / MANIFEST).is_file():
        if isinstance(encoder_options, EncoderConfig):
            coll = Collection.open(path, encoder=encoder_options)
        else:
            coll = Collection.open(path, **(encoder_options or {}))
        try:
            check_same_space(coll.manifest["encoder"], info["encoder"], f"these shards (collection {path})")
            if coll.dim != info["dim"]:
                raise CollectionError(f"shards have {info['dim']} dims, collection {path} has {coll.dim}")
        except CollectionError:
            coll.close()
            raise
        return coll
    config = _as_config(encoder_options) if encoder_options else config_from_record(info["encoder"])
    check_same_space(encoder_identity(config), info["encoder"], "these shards (given encoder options)")
    return Collection.create(path, encoder=GivenVectors(config, int(info["dim"])), normalize_social=normalize_social)


def ingest_from_embeddings(collection_path: Path, shards_dir: Path, *,
                           encoder_options: dict[str, Any] | EncoderConfig | None = None, chunk_size: int = 2048,
                           normalize_social: bool = False, skip_near_duplicates: float | None = None,
                           progress: Callable[[int], Any] | None = None, wait: bool = True) -> IngestStats:
    """Build or extend a collection from shards (read in order, a chunk at a time), encoding nothing.

    New collections take the encoder the shards record (or ``encoder_options``, which must describe
    the same space); existing ones must match it. Known ids are skipped, so re-running resumes."""
    shards_dir = Path(shards_dir)
    info = shards.read_config(shards_dir)
    pairs = shards.list_shards(shards_dir)
    if len(pairs) != info["shards"]:
        raise ConfigError(f"{shards_dir}: {len(pairs)} shards on disk, {info['shards']} recorded in "
                          f"{shards.CONFIG_FILE}: copy the whole directory")
    total = IngestStats(invalid=int(info.get("invalid_lines", 0)))
    if not pairs:  # an empty corpus: nothing to add, no dimension to create a collection with
        return total
    for emb, meta in pairs:
        shards.check_aligned(emb, meta, int(info["dim"]))
    # One ingest over all shards: LMDB still commits chunk by chunk (resumable), but the index is
    # trained and saved once, not rewritten after every shard.
    records = (rec for _, meta in pairs for rec in shards.iter_records(meta))
    vectors = shards.ConcatRows([shards.read_vectors(emb) for emb, _ in pairs])
    with _open_or_create(Path(collection_path), info, encoder_options, normalize_social) as coll:
        stats = coll.ingest(records, vectors=vectors, chunk_size=chunk_size,
                            skip_near_duplicates=skip_near_duplicates, progress=progress, wait=wait)
    stats.invalid = total.invalid
    return stats


def ingest_with_ray(collection_path: Path, inputs: list[str], *, encoder_options: dict[str, Any],
                    shards_dir: Path | None = None, address: str | None = None, num_encoders: int = 1,
                    gpus_per_encoder: float = 0.0, text_field: str = "text", id_field: str = "id",
                    batch_size: int = 256, skip_invalid: bool = False, chunk_size: int = 2048,
                    normalize_social: bool = False, skip_near_duplicates: float | None = None,
                    progress: Callable[[int], Any] | None = None,
                    wait: bool = True) -> tuple[dict[str, Any], IngestStats]:
    """``ingest --engine ray``: embed with Ray into shards, then ingest them. Without ``shards_dir``
    the shards go to a temporary folder beside the collection, removed afterwards."""
    from bellm_search.collection.core import MANIFEST, Collection

    collection_path = Path(collection_path)
    if (collection_path / MANIFEST).is_file():  # embed with the collection's own encoder
        with Collection.open(collection_path, **encoder_options) as coll:
            config = coll.encoder_config
    else:
        config = _as_config(encoder_options)
    collection_path.parent.mkdir(parents=True, exist_ok=True)
    temp = None if shards_dir else tempfile.mkdtemp(prefix=f".{collection_path.name}.shards-", dir=collection_path.parent)
    where = Path(shards_dir or temp)
    try:
        summary = embed_with_ray(inputs, where, config, address=address, num_encoders=num_encoders,
                                 gpus_per_encoder=gpus_per_encoder, text_field=text_field, id_field=id_field,
                                 batch_size=batch_size, skip_invalid=skip_invalid)
        stats = ingest_from_embeddings(collection_path, where, encoder_options=config, chunk_size=chunk_size,
                                       normalize_social=normalize_social, skip_near_duplicates=skip_near_duplicates,
                                       progress=progress, wait=wait)
    finally:
        if temp:
            shutil.rmtree(temp, ignore_errors=True)
    return summary, stats
