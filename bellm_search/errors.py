"""The error hierarchy. Every error a user can cause is a ``BellmError``: the CLI prints its
message on one line and exits 1. Anything else is a bug and keeps its traceback."""
from __future__ import annotations

import sys


class BellmError(Exception):
    """A known, user-facing error."""


class CorpusError(BellmError):
    """Bad input in a corpus file; the message names ``path:line``."""

    def __init__(self, path: str, line: int, problem: str) -> None:
        self.path, self.line, self.problem = path, line, problem
        super().__init__(f"{path}:{line}: {problem}")


class ConfigError(BellmError):
    """An invalid option or configuration value."""


class ModelError(BellmError):
    """A model or adapter that cannot be found or loaded."""


class CollectionError(BellmError):
    """A collection that cannot be created, opened or written."""


class MissingDependency(BellmError):
    """An optional dependency is not installed; the message names the pip extra."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(f"{package} is not installed: pip install 'bellm-search[{extra}]'")


RESUME = "; what was committed before is kept: free space (or fix the cause) and re-run the command to resume"


def storage_error(exc: BaseException, resume: str = RESUME) -> str | None:
    """One line for a failed disk write (disk full, file size or quota limit, I/O error, read-only or
    forbidden folder) from Python, LMDB or FAISS; None for anything else (a bug keeps its traceback)."""
    import errno

    disk = ("Input/output error", "No space left", "File too large", "quota exceeded", "Read-only file system")
    where = f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename else ""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return f"cannot write{where}: {exc.strerror}{resume}"
    if isinstance(exc, OSError) and exc.errno in (errno.EIO, errno.EROFS, errno.EACCES, errno.EPERM):
        return f"{exc.strerror}{where}"
    lmdb = sys.modules.get("lmdb")
    if lmdb is not None and isinstance(exc, lmdb.Error):
        if any(words in str(exc) for words in disk):  # LMDB reports a short write (disk full) as EIO
            return f"the collection's LMDB store could not write ({exc}; the disk may be full){resume}"
        return f"the collection's LMDB store failed: {exc}"
    if isinstance(exc, RuntimeError) and "write error in " in str(exc):  # FAISS: "... write error in PATH: n != m (why)"
        return f"cannot write the index {str(exc).split('write error in ', 1)[1]}{resume}"
    return None
