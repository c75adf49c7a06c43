"""Lower-layer states of every distinct training text, computed once and kept on disk.

With LoRA on the top N layers only, the layers below are frozen and causal: the state of a text
entering layer L-N never changes during training. ``StateCache`` holds those states flat
(sum L_i, H) with offsets; the file is keyed by the model, the first trained layer, the dtype and
the token ids, so every run over the same texts reuses it. Next to it an index (one 64-bit digest
per text, and the model, layer and dtype) lets a run over a subset of those texts (an ablation on
one data file, mined negatives drawn from the same texts) reuse it too instead of building another.
Loaded with ``weights_only=True`` (never unpickles arbitrary objects) and memory-mapped (no private
copy).
"""
from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from bellm_search._fs import atomic_path
from bellm_search.training.data import plan_chunks
from bellm_search.training.model import lower_states

log = logging.getLogger(__name__)


class StateCache:
    """Lower-layer states of every distinct text, flat (sum L_i, H) with offsets.

    ``starts``: where each text's rows begin in ``flat`` (default: packed in order); a view over a
    larger cache passes the positions of its texts there."""

    def __init__(self, flat: torch.Tensor, lengths: torch.Tensor, starts: torch.Tensor | None = None) -> None:
        self.flat, self.lengths = flat, lengths
        self.starts = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]]) if starts is None else starts

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> torch.Tensor:
        s = int(self.starts[i])
        return self.flat[s: s + int(self.lengths[i])]

    def select(self, rows: np.ndarray) -> "StateCache":
        """A view holding only ``rows`` (positions in this cache), in that order; no copy."""
        idx = torch.as_tensor(np.asarray(rows, dtype=np.int64))
        return StateCache(self.flat, self.lengths[idx], self.starts[idx])

    @classmethod
    def build(cls, base: nn.Module, start: int, ids: list[list[int]], pad_id: int, max_tokens: int,
              show: bool | None) -> "StateCache":
        from tqdm.auto import tqdm

        lengths = torch.tensor([len(x) for x in ids], dtype=torch.long)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
        dim = base.config.hidden_size
        flat = torch.empty((int(lengths.sum()), dim), dtype=next(base.parameters()).dtype)
        bar = tqdm(total=len(ids), desc="cache lower layers", unit="text", file=sys.stderr,
                   disable=not (sys.stderr.isatty() if show is None else show), dynamic_ncols=True)
        for batch in plan_chunks(lengths.numpy(), max_tokens, 1.5):
            for i, s in zip(batch, lower_states(base, start, [ids[i] for i in batch], pad_id)):
                flat[offsets[i]: offsets[i + 1]] = s
            bar.update(len(batch))
        bar.close()
        return cls(flat, lengths)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save({"flat": self.flat, "lengths": self.lengths}, tmp)

    @classmethod
    def load(cls, path: Path) -> "StateCache":
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # no private copy
        return cls(data["flat"], data["lengths"])


def cache_key(model_path: str, start: int, dtype: torch.dtype, ids: list[list[int]]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([model_path, start, str(dtype)]).encode())
    for x in ids:
        h.update(np.asarray(x, dtype=np.int64).tobytes() + b"|")
    return h.hexdigest()[:20]


def text_keys(ids: list[list[int]]) -> np.ndarray:
    """One 64-bit digest per text's token ids (collisions: ~n^2 / 2^65, nil at these sizes)."""
    return np.array([int.from_bytes(hashlib.blake2b(np.asarray(x, dtype=np.int64).tobytes(), digest_size=8).digest(),
                                    "little") for x in ids], dtype=np.uint64)


def _header(model_path: str, start: int, dtype: torch.dtype) -> str:
    return json.dumps([model_path, start, str(dtype)])


def _index_path(path: Path) -> Path:
    return path.with_suffix(".index.npz")


def write_index(path: Path, header: str, keys: np.ndarray) -> None:
    """The sidecar that lets runs over a subset of these texts find ``path``."""
    with atomic_path(_index_path(path)) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, keys=keys, header=np.array(header))


def find_superset(root: Path, header: str, keys: np.ndarray) -> tuple[Path, np.ndarray] | None:
    """A cache under ``root`` for the same model, layer and dtype holding every text of ``keys``,
    with each text's position in it; None when there is none."""
    for index in sorted(root.glob("lower-*.index.npz")):
        cache = index.with_name(index.name.removesuffix(".index.npz") + ".pt")
        try:
            with np.load(index) as z:
                if str(z["header"]) != header or not cache.is_file():
                    continue
                have = z["keys"]
        except (OSError, ValueError, KeyError):
            continue
        order = np.argsort(have, kind="stable")
        pos = np.searchsorted(have[order], keys).clip(0, len(have) - 1)
        if len(have) and bool((have[order][pos] == keys).all()):
            return cache, order[pos]
    return None


def load_or_build(root: Path, model_path: str, base: nn.Module, start: int, ids: list[list[int]], pad_id: int,
                  max_tokens: int, show: bool | None, autocast: Callable[[], Any]) -> StateCache:
    """The cache file for these texts under ``root`` (or a view of one holding them all); built
    (and saved, with its index) when there is none."""
    dtype = next(base.parameters()).dtype
    path = root / f"lower-{cache_key(model_path, start, dtype, ids)}.pt"
    header, keys = _header(model_path, start, dtype), text_keys(ids)
    if path.is_file():
        log.info("using cached lower-layer states %s", path)
        if not _index_path(path).is_file():  # made before indexes existed
            write_index(path, header, keys)
        return StateCache.load(path)
    found = find_superset(root, header, keys) if root.is_dir() else None
    if found is not None:
        log.info("using cached lower-layer states %s (%d of its texts)", found[0], len(ids))
        return StateCache.load(found[0]).select(found[1])
    t0 = time.time()
    with autocast():
        cache = StateCache.build(base, start, ids, pad_id, max_tokens, show)
    log.info("cached %d texts below layer %d in %.0f s", len(ids), start, time.time() - t0)
    cache.save(path)
    write_index(path, header, keys)
    return cache
