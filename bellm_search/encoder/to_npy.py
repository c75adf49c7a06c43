"""Embedding a list of texts into a .npy file, chunk by chunk, written atomically."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

CHUNK = 8192


def encode_to_npy(texts: list[str], output: Path, options: dict[str, Any],
                  progress: Callable[[int], Any] | None = None) -> tuple[tuple[int, int], int]:
    """Encode ``texts`` with an encoder built from ``options``; returns ((rows, dim), truncated).
    ``progress(n)`` is called after each chunk of n texts."""
    from bellm_search.encoder.encode import Encoder

    encoder = Encoder(**options)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp.npy")
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(texts), encoder.dim))
    for start in range(0, len(texts), CHUNK):
        arr[start:start + CHUNK] = encoder.encode(texts[start:start + CHUNK])
        if progress:
            progress(min(CHUNK, len(texts) - start))
    arr.flush()
    del arr
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, output)
    return (len(texts), encoder.dim), encoder.truncated
