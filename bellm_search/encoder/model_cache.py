"""A cache of base models with their LoRA adapter already merged, in the compute dtype.

Merging the shipped adapter into the embedded model (peft: wrap every targeted linear layer, load
the LoRA weights, add B @ A into each weight, unwrap) is the largest fixed cost of a process that
encodes (several seconds on 2 cores) and needs peft imported. The merged weights are a pure
function of the base weights, the adapter files, the dtype they are merged in and the code doing
the arithmetic, so they are stored once under ``<cache_dir>/models/merged/<key>/`` (a plain
``save_pretrained`` folder) and later processes load that folder with one ``from_pretrained``,
which gives the very same tensors: the vectors are bitwise those of the uncached path
(tests/test_model_cache.py).

The key covers the base model folder (each weight and config file's name, size and mtime), the
adapter files (sha256), the dtype, and the torch, transformers and peft versions; any change
gives another entry. Entries are written file by file with ``_fs.atomic_path`` and marked complete
by ``bellm_cache.json`` written last (atomically, holding the key), so a half-written entry is
never read; two writers of one entry write identical files. Only local base folders of at least
``MIN_BYTES`` are cached (the embedded model is one); the newest ``KEEP`` entries are kept. ``BELLM_MODEL_CACHE=0`` turns
the cache off.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from bellm_search._fs import atomic_path, file_sha256, read_json_object, write_json_atomic
from bellm_search.config import cache_dir
from bellm_search.errors import BellmError

log = logging.getLogger(__name__)

FORMAT = 1
MARKER = "bellm_cache.json"
KEEP = 3  # newest entries kept (each is a full copy of the model's weights)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json")
STALE_TEMP_S = 3600.0
MIN_BYTES = 32 << 20  # smaller models merge in milliseconds: not worth a copy on disk (nor test debris)


def merged_root(root: Path | None = None) -> Path:
    return root or cache_dir() / "models" / "merged"


def enabled() -> bool:
    return os.environ.get("BELLM_MODEL_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "none"


def _folder_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(suffixes))


def cache_key(base: Path, adapter: Path, dtype: str) -> dict[str, Any] | None:
    """Everything the merged weights depend on (see the module docstring); None when the model is
    too small to be worth caching."""
    base_files = [[p.name, st.st_size, st.st_mtime_ns] for p in _folder_files(base, WEIGHT_SUFFIXES)
                  for st in (p.stat(),)]
    if sum(size for _, size, _ in base_files) < MIN_BYTES:
        return None
    adapter_files = [[p.name, file_sha256(p)] for p in _folder_files(adapter, (".safetensors", ".bin", "adapter_config.json"))]
    import torch
    import transformers

    return {"format": FORMAT, "base": str(base.resolve()), "base_files": base_files,
            "adapter_files": adapter_files, "dtype": dtype, "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": _version("peft")}


def entry_dir(key: dict[str, Any], root: Path | None = None) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:32]
    return merged_root(root) / digest


def lookup(key: dict[str, Any], root: Path | None = None) -> Path | None:
    """The complete entry for ``key``, or None."""
    folder = entry_dir(key, root)
    marker = folder / MARKER
    if not marker.is_file():
        return None
    try:
        if read_json_object(marker, "model cache marker") != key:
            return None  # a digest collision or a foreign file: never trust it
    except BellmError:
        return None
    try:
        os.utime(marker)  # most recently used: kept by prune()
    except OSError:
        pass
    return folder


def store(model: Any, key: dict[str, Any], root: Path | None = None) -> Path:
    """Write ``model`` (a merged base model) as the entry for ``key``; its marker last."""
    folder = entry_dir(key, root)
    folder.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".save-", dir=folder.parent))
    try:
        model.save_pretrained(scratch)
        for src in sorted(scratch.iterdir()):
            with atomic_path(folder / src.name) as tmp:
                os.replace(src, tmp)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    write_json_atomic(folder / MARKER, key)
    prune(root, keep=folder)
    return folder


def prune(root: Path | None = None, keep: Path | None = None) -> None:
    """Keep the ``KEEP`` most recently used entries (and ``keep``); drop old scratch folders. Best effort."""
    top = merged_root(root)
    entries, now = [], time.time()
    for child in top.iterdir() if top.is_dir() else ():
        if child.name.startswith(".save-"):
            if now - child.stat().st_mtime > STALE_TEMP_S:
                shutil.rmtree(child, ignore_errors=True)
        elif (child / MARKER).is_file():
            entries.append(((child / MARKER).stat().st_mtime, child))
        elif child.is_dir() and now - child.stat().st_mtime > STALE_TEMP_S:
            shutil.rmtree(child, ignore_errors=True)  # an entry whose writer died (a live one is younger)
    entries.sort(reverse=True)
    for _, child in entries[KEEP:]:
        if child != keep:
            shutil.rmtree(child, ignore_errors=True)
