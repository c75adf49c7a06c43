"""manifest.json: what a collection is (format, encoder identity, index settings and state, dim).

The one place that reads, validates and writes it, and that turns an encoder into the record
the manifest keeps (and back). ``distributed/`` uses the same records for embedding shards.
Validation goes through the pydantic models of ``collection.schema`` (imported when a manifest
is read, so ``bellm-search --help`` stays light).
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
from pathlib import Path
from typing import Any

from bellm_search import __version__
from bellm_search._fs import read_json_object, write_json_atomic
from bellm_search.config import EMBEDDED_MODEL, EncoderConfig, IndexConfig
from bellm_search.errors import BellmError, CollectionError

FORMAT_VERSION = 1
MANIFEST, INDEX_FILE, META_DIR = "manifest.json", "index.faiss", "meta.lmdb"
IDENTITY_KEYS = ("model", "adapter_sha256", "bidirectional_layers", "pooling", "prompt", "max_length")
RUNTIME_KEYS = ("device", "dtype", "batch_size", "max_batch_tokens")  # how to run it, not which space
REBUILD_KEYS = ("bidirectional_layers", "pooling", "prompt", "max_length", "padding_side")


# ----------------------------------------------------------------------------- encoder identity
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


def encoder_record(config: EncoderConfig) -> dict[str, Any]:
    """What a manifest (or a shard set) keeps: the identity, plus how to rebuild the encoder."""
    from bellm_search.encoder.resolve import default_adapter_dir

    record = encoder_identity(config)
    default = config.adapter and Path(config.adapter).resolve() == default_adapter_dir().resolve()
    record["adapter"] = "default" if default else config.adapter
    record["padding_side"] = config.padding_side
    return record


def config_from_record(record: dict[str, Any], **runtime: Any) -> EncoderConfig:
    """The encoder a record describes, with the given runtime options (device, dtype, batch size)."""
    from bellm_search.encoder.resolve import default_adapter_dir

    adapter = record.get("adapter")
    adapter = str(default_adapter_dir()) if adapter == "default" else adapter
    settings = {k: record[k] for k in REBUILD_KEYS if k in record}
    model = None if record.get("model") == EMBEDDED_MODEL else record.get("model")
    return EncoderConfig(model=model, adapter=adapter if adapter not in (None, "none") else None,
                         **settings, **{k: v for k, v in runtime.items() if v is not None})


def check_same_space(ours: dict[str, Any], theirs: dict[str, Any], what: str, sides: str = "collection, given") -> None:
    """Refuse vectors from another encoder: compare the identity keys of two encoder records."""
    diff = {k: (ours.get(k), theirs.get(k)) for k in IDENTITY_KEYS if ours.get(k) != theirs.get(k)}
    if diff:
        raise CollectionError(f"{what}: a different encoder {diff} ({sides}); vectors from different encoders "
                              "cannot be mixed: use another --collection, or the same --model/--adapter options "
                              "(or none)")


def encoder_for(record: dict[str, Any], encoder: Any, options: dict[str, Any]) -> tuple[EncoderConfig, Any]:
    """(config, instance or None) to open a collection whose manifest holds ``record``.

    ``encoder``: None, an EncoderConfig or an encoder object (``.config``). ``options``: keyword
    settings as for ``resolve_config``; identity options must describe the recorded space, runtime
    options (device, dtype, batch size, token budget) are applied whichever way the config is made."""
    from bellm_search.encoder.resolve import resolve_config

    options = dict(options)
    runtime = {k: options.pop(k) for k in RUNTIME_KEYS if k in options}
    if encoder is None and not options:
        config = config_from_record(record, **runtime)
        if config.adapter and adapter_sha256(config.adapter) != record.get("adapter_sha256"):
            raise CollectionError(f"the adapter at {config.adapter} has changed since this collection was built")
        return config, None
    if encoder is None:
        config, instance = resolve_config(**options, **runtime), None
    elif isinstance(encoder, EncoderConfig):
        config, instance = dataclasses.replace(encoder, **runtime), None
    else:
        config, instance = encoder.config, encoder
    check_same_space(record, encoder_identity(config), "this collection was built with")
    return config, instance


# ----------------------------------------------------------------------------- the file
def new_manifest(config: EncoderConfig, dim: int, index_config: IndexConfig | None,
                 normalize_social: bool) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "encoder": encoder_record(config),
        "index_config": (index_config or IndexConfig()).to_dict(),
        "dim": int(dim),
        "normalize_social": bool(normalize_social),
        "index": {"indexed_upto": 0, "deleted_applied": 0, "factory": None},
        "counts": {},
    }


def read_manifest(path: Path) -> dict[str, Any]:
    """The validated manifest of the collection at ``path`` (a dict, as stored)."""
    file = Path(path) / MANIFEST
    if not file.is_file():
        raise CollectionError(f"{path} is not a collection (no {MANIFEST}); create one with `bellm-search ingest`")
    try:
        manifest = read_json_object(file, "collection manifest")
    except RecursionError:
        raise CollectionError(f"{file} is unreadable (nested too deeply); run `bellm-search check`") from None
    except BellmError as exc:
        raise CollectionError(f"{exc}; run `bellm-search check`") from None
    validate_manifest(file, manifest)
    return manifest


def validate_manifest(file: Path, manifest: dict[str, Any]) -> None:
    """Every field the code reads has its type and range, so a corrupt or hand-edited manifest is a
    one-line error here rather than a crash later."""
    from pydantic import ValidationError

    from bellm_search.collection.schema import Manifest
    from bellm_search.errors import ConfigError

    if manifest.get("format_version") != FORMAT_VERSION:
        raise CollectionError(f"{file}: unsupported collection format {manifest.get('format_version')!r}")
    try:
        Manifest.model_validate(manifest)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        if first["type"] == "missing":
            raise CollectionError(f"{file}: missing {where}; run `bellm-search check`") from None
        raise CollectionError(f"{file}: {where} has an invalid value {first.get('input')!r:.60} "
                              f"({first['msg']})") from None
    try:
        IndexConfig.from_dict(manifest["index_config"])
    except (ConfigError, TypeError, ValueError) as exc:
        raise CollectionError(f"{file}: invalid index_config ({exc})") from None


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Atomically replace ``path``/manifest.json (the package version is refreshed)."""
    manifest["package_version"] = __version__
    write_json_atomic(Path(path) / MANIFEST, manifest)
