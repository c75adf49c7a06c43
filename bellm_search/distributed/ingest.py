"""Collections built from embedding shards (made anywhere), and ``ingest --engine ray``.

    ingest_from_embeddings(COLL, DIR, ...)      shards -> LMDB + index (no re-encoding)
    ingest_with_ray(COLL, inputs, ...)          embed_with_ray into shards, then the above

The encoder a shard set records is compared with the collection's through
``collection.manifest`` (the same identity the manifest keeps), so vectors of different
encoders are never mixed.
"""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bellm_search.collection.ingest import IngestStats
from bellm_search.config import EncoderConfig
from bellm_search.errors import CollectionError, ConfigError
from bellm_search.distributed import ray_embed, shards
from bellm_search.distributed.ray_embed import as_config

EncoderOptions = "dict[str, Any] | EncoderConfig"


def _open_or_create(path: Path, info: dict[str, Any], encoder_options: EncoderOptions | None,
                    normalize_social: bool) -> Any:
    from bellm_search.collection.core import Collection
    from bellm_search.collection.manifest import MANIFEST, check_same_space, config_from_record, encoder_identity

    if (path / MANIFEST).is_file():
        given = encoder_options if isinstance(encoder_options, EncoderConfig) else None
        options = {} if given is not None else dict(encoder_options or {})
        coll = Collection.open(path, encoder=given, **options)
        try:
            check_same_space(coll.manifest["encoder"], info["encoder"], f"these shards (collection {path})",
                             "collection, shards")
            if coll.dim != info["dim"]:
                raise CollectionError(f"shards have {info['dim']} dims, collection {path} has {coll.dim}")
        except CollectionError:
            coll.close()
            raise
        return coll
    config = as_config(encoder_options) if encoder_options else config_from_record(info["encoder"])
    check_same_space(encoder_identity(config), info["encoder"], "these shards (given encoder options)", "given, shards")
    return Collection.create(path, config, int(info["dim"]), normalize_social=normalize_social)


def ingest_from_embeddings(collection_path: Path, shards_dir: Path, *, encoder_options: EncoderOptions | None = None,
                           chunk_size: int = 2048, normalize_social: bool = False,
                           skip_near_duplicates: float | None = None, progress: Callable[[int], Any] | None = None,
                           wait: bool = True, near_model: Callable[[Any], Any] | None = None) -> IngestStats:
    """Build or extend a collection from shards (read in order, a chunk at a time), encoding nothing.

    New collections take the encoder the shards record (or ``encoder_options``, which must describe
    the same space); existing ones must match it. Known ids are skipped, so re-running resumes.
    Near duplicates: ``skip_near_duplicates`` (a cosine) or ``near_model``, as ``Collection.ingest``."""
    shards_dir = Path(shards_dir)
    info = shards.read_config(shards_dir)
    pairs = shards.list_shards(shards_dir)
    if len(pairs) != info["shards"]:
        raise ConfigError(f"{shards_dir}: {len(pairs)} shards on disk, {info['shards']} recorded in "
                          f"{shards.CONFIG_FILE}: copy the whole directory")
    invalid = int(info.get("invalid_lines", 0))
    if not pairs:  # an empty corpus: nothing to add, no dimension to create a collection with
        return IngestStats(invalid=invalid)
    for emb, meta in pairs:
        shards.check_aligned(emb, meta, int(info["dim"]))
    # One ingest over all shards: LMDB still commits chunk by chunk (resumable), but the index is
    # trained and saved once, not rewritten after every shard.
    records = (rec for _, meta in pairs for rec in shards.iter_records(meta))
    vectors = shards.ConcatRows([shards.read_vectors(emb) for emb, _ in pairs])
    with _open_or_create(Path(collection_path), info, encoder_options, normalize_social) as coll:
        stats = coll.ingest(records, vectors=vectors, chunk_size=chunk_size,
                            skip_near_duplicates=skip_near_duplicates, near_model=near_model, progress=progress,
                            wait=wait)
    stats.invalid = invalid
    return stats


def ingest_with_ray(collection_path: Path, inputs: list[str], *, encoder_options: dict[str, Any],
                    shards_dir: Path | None = None, address: str | None = None, num_encoders: int = 1,
                    gpus_per_encoder: float = 0.0, text_field: str = "text", id_field: str = "id",
                    batch_size: int = 256, skip_invalid: bool = False, chunk_size: int = 2048,
                    normalize_social: bool = False, skip_near_duplicates: float | None = None,
                    progress: Callable[[int], Any] | None = None, wait: bool = True,
                    near_model: Callable[[Any], Any] | None = None) -> tuple[dict[str, Any], IngestStats]:
    """``ingest --engine ray``: embed with Ray into shards, then ingest them. Without ``shards_dir``
    the shards go to a temporary folder beside the collection, removed afterwards."""
    from bellm_search.collection.core import Collection
    from bellm_search.collection.manifest import MANIFEST

    collection_path = Path(collection_path)
    if (collection_path / MANIFEST).is_file():  # embed with the collection's own encoder
        with Collection.open(collection_path, **encoder_options) as coll:
            config = coll.encoder_config
    else:
        config = as_config(encoder_options)
    collection_path.parent.mkdir(parents=True, exist_ok=True)
    temp = None if shards_dir else tempfile.mkdtemp(prefix=f".{collection_path.name}.shards-", dir=collection_path.parent)
    where = Path(shards_dir or temp)
    try:
        summary = ray_embed.embed_with_ray(inputs, where, config, address=address, num_encoders=num_encoders,
                                           gpus_per_encoder=gpus_per_encoder, text_field=text_field,
                                           id_field=id_field, batch_size=batch_size, skip_invalid=skip_invalid)
        stats = ingest_from_embeddings(collection_path, where, encoder_options=config, chunk_size=chunk_size,
                                       normalize_social=normalize_social, skip_near_duplicates=skip_near_duplicates,
                                       near_model=near_model, progress=progress, wait=wait)
    finally:
        if temp:
            shutil.rmtree(temp, ignore_errors=True)
    return summary, stats
