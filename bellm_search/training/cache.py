"""Lower-layer states of every distinct training text, computed once and kept on disk.

With LoRA on the top N layers only, the layers below are frozen and causal: the state of a text
entering layer L-N never changes during training. ``StateCache`` holds those states flat
(sum L_i, H) with offsets; the file is keyed by the model, the first trained layer, the dtype and
the token ids, so every run over the same texts reuses it. Loaded with ``weights_only=True``
(never unpickles arbitrary objects) and memory-mapped (no private copy).
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
    """Lower-layer states of every distinct text, flat (sum L_i, H) with offsets."""

    def __init__(self, flat: torch.Tensor, lengths: torch.Tensor) -> None:
        self.flat, self.lengths = flat, lengths
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.flat[self.offsets[i]: self.offsets[i + 1]]

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


def load_or_build(root: Path, model_path: str, base: nn.Module, start: int, ids: list[list[int]], pad_id: int,
                  max_tokens: int, show: bool | None, autocast: Callable[[], Any]) -> StateCache:
    """The cache file for these texts under ``root``; built (and saved) when missing."""
    dtype = next(base.parameters()).dtype
    path = root / f"lower-{cache_key(model_path, start, dtype, ids)}.pt"
    if path.is_file():
        log.info("using cached lower-layer states %s", path)
        return StateCache.load(path)
    t0 = time.time()
    with autocast():
        cache = StateCache.build(base, start, ids, pad_id, max_tokens, show)
    log.info("cached %d texts below layer %d in %.0f s", len(ids), start, time.time() - t0)
    cache.save(path)
    return cache
