"""The ``bellm-search`` command line: the app, its commands, and one ``main()`` mapping errors to exit codes.

Each command group lives in its own module (embed, collection, dedup, train, serve); shared options
are in ``options``. Heavy libraries are imported inside commands only.
"""
from __future__ import annotations

import logging
import sys
import warnings
from typing import Annotated

import typer

from bellm_search.cli import collection, dedup, embed, label, serve, train
from bellm_search.errors import BellmError

app = typer.Typer(
    name="bellm-search",
    help="Vector search and near-duplicate detection for text with BeLLM embeddings (FAISS + LMDB).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
eval_app = typer.Typer(help="Evaluate embeddings: STS correlation, duplicate-detection calibration.", no_args_is_help=True)
log = logging.getLogger("bellm_search")


# Library warnings we cannot fix at their cause: peft reads transformers' deprecated
# ``is_gradient_checkpointing`` property whenever it wraps a model (peft/peft_model.py).
UNFIXABLE_WARNINGS = ((FutureWarning, r"`is_gradient_checkpointing` is deprecated"),)


@app.callback()
def _main(
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output: -v info and every library warning, -vv debug.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors: no warnings, no progress messages.")] = False,
) -> None:
    configure_output(verbose, quiet)


def configure_output(verbose: int, quiet: bool) -> None:
    """The one place that decides what reaches stderr besides results and the command's messages:
    default = warnings of this package (and of libraries, less the known unfixable ones);
    -v = also INFO and every library warning; -vv = DEBUG; -q = errors only."""
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("bellm_search").setLevel(level)
    if not quiet and verbose == 0:
        logging.getLogger("bellm_search.serve").setLevel(logging.INFO)  # a server's log is its output
    for noisy in ("transformers", "peft", "faiss", "ray"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    if quiet:
        warnings.simplefilter("ignore")
    elif verbose == 0:
        for category, message in UNFIXABLE_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)


app.command()(embed.embed)
app.command("prepare-model")(embed.prepare_model)
for command in (collection.ingest, collection.query, collection.delete, collection.reindex, collection.info,
                collection.check, dedup.dedup):
    app.command()(command)
app.command("train", help="Train a BeLLM LoRA adapter (AnglE loss) on NLI triples or scored pairs.")(train.train_command)
app.command("serve", help="Serve a collection over HTTP (FastAPI on uvicorn) with micro-batched encoding.")(serve.serve_command)
app.add_typer(eval_app, name="eval")
eval_app.command("dedup")(dedup.eval_dedup)
app.command()(label.label)
app.command()(label.calibrate)
eval_app.command("sts", help="Spearman x100 of cosine vs gold scores (STS-B TSV or JSONL).")(train.eval_sts_command)


def main(argv: list[str] | None = None) -> None:
    """Run the app; known errors become one line on stderr and exit code 1."""
    try:
        code = app(args=argv, standalone_mode=False)  # a command's typer.Exit(n) comes back as n here
    except BellmError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # click (vendored by typer) usage errors carry their own exit code
        code = getattr(exc, "exit_code", None)
        if isinstance(code, int):
            if hasattr(exc, "show"):
                exc.show()
            sys.exit(code)
        if type(exc).__name__ == "Abort":
            sys.exit(1)
        from bellm_search.errors import storage_error

        message = storage_error(exc)
        if message is None:
            raise
        log.debug("storage error", exc_info=True)  # the traceback with -vv
        typer.echo(f"error: {message}", err=True)
        sys.exit(1)
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":  # python -m bellm_search.cli.main (what the server tests and scripts start)
    main()
