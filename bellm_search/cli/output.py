"""What a person sees: results on stdout, messages and the one progress bar on stderr."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer


def emit(data: Any, as_json: bool, text: str | None = None) -> None:
    """Results go to stdout: JSON for machines, a line of text otherwise."""
    if as_json:
        typer.echo(json.dumps(data, ensure_ascii=False))
    elif text is not None:
        typer.echo(text)


def note(message: str) -> None:
    """Messages for humans go to stderr."""
    typer.echo(message, err=True)


def progress_bar(desc: str, unit: str = "doc", total: int | None = None) -> Any:
    """The command's one progress bar (shown only on a terminal; library calls show none)."""
    from tqdm.auto import tqdm

    return tqdm(desc=desc, unit=unit, total=total, disable=not sys.stderr.isatty(), dynamic_ncols=True)


def output_file(path: Path | None) -> Path | None:
    """Check a file the command will write before any slow work (``_fs.check_output_path``)."""
    from bellm_search._fs import check_output_path

    return None if path is None else check_output_path(path)
