"""What a person sees: results on stdout, messages and the one progress bar on stderr."""
from __future__ import annotations

import json
import sys
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


def progress_bar(desc: str, unit: str = "doc") -> Any:
    """The command's one progress bar (shown only on a terminal)."""
    from tqdm.auto import tqdm

    return tqdm(desc=desc, unit=unit, disable=not sys.stderr.isatty(), dynamic_ncols=True)
