"""Beyond one machine: Ray Data encoding into embedding shards (``distributed.shards``; a
collection is built from them by ``distributed.ingest``).

    embed_with_ray(inputs, DIR, ...)            JSONL -> Ray Data -> encoder actor pool -> DIR/emb, DIR/meta

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
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from bellm_search import __version__
from bellm_search.collection.manifest import encoder_record
from bellm_search.config import EncoderConfig
from bellm_search.corpus import CorpusOptions, ReadStats, read_corpus
from bellm_search.errors import BellmError, ConfigError, CorpusError, MissingDependency
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


def as_config(encoder: dict[str, Any] | EncoderConfig) -> EncoderConfig:
    """Encoder options (as for ``resolve_config``) or a ready config -> the config."""
    if isinstance(encoder, EncoderConfig):
        return encoder
    from bellm_search.encoder.resolve import resolve_config

    return resolve_config(**encoder)


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
    """Ray stage (callable class = actor pool): builds the Encoder once, embeds each batch."""

    def __init__(self, config: dict[str, Any]) -> None:
        from bellm_search.encoder.encode import Encoder

        self.encoder = Encoder(EncoderConfig.from_dict(config))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = batch["error"] == ""
        vectors = np.zeros((len(ok), self.encoder.dim), np.float32)  # (B, d); error rows stay zero
        if ok.any():
            vectors[ok] = self.encoder.encode([str(t) for t in batch["text"][ok]], show_progress_bar=False)
        return {**batch, "embedding": vectors}


# ----------------------------------------------------------------------------- the driver side
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
                  max_retries: int) -> Any:
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
        return ds.map_batches(EncodeActor, fn_constructor_kwargs={"config": config.to_dict()},
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
                   max_retries: int = 3) -> dict[str, Any]:
    """Embed JSONL/TXT files (paths or globs) with a Ray actor pool into shards under ``output_dir``.

    Returns a summary: rows, dim, shards, invalid lines, seconds, texts/s. ``output_dir`` must be
    empty or new. A crashed encoder actor is restarted and its batch re-run (``max_retries``)."""
    _check_embed_args(num_encoders, gpus_per_encoder, batch_size, shard_rows, max_retries)
    output_dir = Path(output_dir)
    if shards.has_shards(output_dir):
        raise ConfigError(f"{output_dir} already holds embedding shards: choose a new --output-dir or delete it")
    files = expand_inputs(inputs)
    config = as_config(encoder_options)
    start = time.perf_counter()
    writer = shards.ShardWriter(output_dir, shard_rows)
    with ray_session(address) as ray, _ordered(ray):
        if cpus_per_encoder is None:
            cpus_per_encoder = encoder_cpus(ray.cluster_resources().get("CPU", 0.0), num_encoders, gpus_per_encoder)
        ds = build_dataset(ray, files, config, num_encoders=num_encoders, gpus_per_encoder=gpus_per_encoder,
                           cpus_per_encoder=cpus_per_encoder, text_field=text_field, id_field=id_field,
                           batch_size=batch_size, skip_invalid=skip_invalid, max_retries=max_retries)
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
