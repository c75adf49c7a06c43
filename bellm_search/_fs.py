"""File-system helpers used everywhere: the one atomic write, reading a JSON object, cleaning
the temp files a killed writer left, and a file's sha256. Stdlib only."""
from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from bellm_search.errors import BellmError


def temp_name(path: Path) -> Path:
    """The temp file a writer of ``path`` uses: hidden, in the same folder, tagged with our PID."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (best effort where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_output_path(path: Path, create_folder: bool = False) -> Path:
    """Refuse, before any work, a file path that cannot be written: a directory, or a path under a
    file. ``create_folder`` makes a missing folder."""
    path = Path(path)
    if path.is_dir():
        raise BellmError(f"{path} is a directory: give a file name to write (-o FILE)")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise BellmError(f"cannot write {path}: {parent} is a file, not a folder")
    if create_folder:
        path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path to write; on success it is fsynced and renamed over ``path`` and the
    folder fsynced. On any error (disk full, a kill signal turned exception) the temp is removed
    and ``path`` is untouched. Refuses a ``path`` that is a directory, with a one-line message."""
    path = Path(path)
    if path.is_dir():
        raise BellmError(f"{path} is a directory: give a file name to write")
    if not path.parent.is_dir():
        raise BellmError(f"cannot write {path}: folder {path.parent} does not exist")
    tmp = temp_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write(path: Path, write: Callable[[IO[Any]], None], mode: str = "w") -> None:
    """Write ``path`` atomically by calling ``write(fh)`` on a temp file (text mode "w" in UTF-8,
    or "wb")."""
    with atomic_path(path) as tmp:
        kwargs = {"encoding": "utf-8"} if "b" not in mode else {}
        with open(tmp, mode, **kwargs) as fh:
            write(fh)
            fh.flush()


def write_json_atomic(path: Path, data: Any) -> None:
    """``data`` as indented UTF-8 JSON, atomically."""
    def write(fh: IO[str]) -> None:
        json.dump(data, fh, indent=2, ensure_ascii=False)
        fh.write("\n")

    atomic_write(path, write)


def read_json_object(path: Path, what: str = "file") -> dict[str, Any]:
    """A JSON object from ``path``; any other content raises one clear line naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BellmError(f"{what} {path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BellmError(f"{what} {path} is unreadable: {e}") from None
    if not isinstance(data, dict):
        raise BellmError(f"{what} {path} is not a JSON object")
    return data


def remove_stale_temps(path: Path) -> None:
    """Delete the ``.NAME.tmp-PID`` files a killed writer of ``path`` left behind (PID not running
    on this machine; never read, only wasted space). Best effort."""
    for tmp in Path(path).parent.glob(f".{glob.escape(Path(path).name)}.tmp-*"):
        pid = tmp.name.rpartition("-")[2]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # still running (or not ours to signal): leave it
        except ProcessLookupError:
            pass
        except OSError:
            continue
        tmp.unlink(missing_ok=True)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
