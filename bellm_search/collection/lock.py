"""One writer per collection (any number of readers): an flock on <dir>/.write.lock."""
from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bellm_search.errors import CollectionError

log = logging.getLogger(__name__)

LOCK_FILE = ".write.lock"


@contextmanager
def writer_lock(folder: Path, wait: bool = True) -> Iterator[None]:
    """Hold the collection's writer lock; ``wait=False`` refuses at once when another process has it."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise CollectionError(f"{folder} is being written by another process (retry, or drop --no-wait)") from None
            log.warning("waiting for another process writing to %s ...", folder)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
