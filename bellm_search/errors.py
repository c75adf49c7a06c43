"""The error hierarchy. Every error a user can cause is a ``BellmError``: the CLI prints its
message on one line and exits 1. Anything else is a bug and keeps its traceback."""
from __future__ import annotations


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
