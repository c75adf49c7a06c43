"""The ``bellm-search`` command line: the app, its commands, and one ``main()`` mapping errors to exit codes.

Each command group lives in its own module (embed, collection, dedup, train, serve); shared options
are in ``options``. Heavy libraries are imported inside commands only.
"""
from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from bellm_search.cli import collection, dedup, embed, serve, train
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


@app.callback()
def _main(
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output (-vv for debug).")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors.")] = False,
) -> None:
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("bellm_search").setLevel(logging.INFO if not quiet and verbose == 0 else level)
    for noisy in ("transformers", "peft", "faiss"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


app.command()(embed.embed)
app.command("prepare-model")(embed.prepare_model)
for command in (collection.ingest, collection.query, collection.delete, collection.reindex, collection.info,
                collection.check, dedup.dedup):
    app.command()(command)
app.command("train", help="Train a BeLLM LoRA adapter (AnglE loss) on NLI triples or scored pairs.")(train.train_command)
app.command("serve", help="Serve a collection over HTTP (FastAPI on uvicorn) with micro-batched encoding.")(serve.serve_command)
app.add_typer(eval_app, name="eval")
eval_app.command("dedup")(dedup.eval_dedup)
eval_app.command("sts", help="Spearman x100 of cosine vs gold scores (STS-B TSV or JSONL).")(train.eval_sts_command)


def main(argv: list[str] | None = None) -> None:
    """Run the app; known errors become one line on stderr and exit code 1."""
    try:
        app(args=argv, standalone_mode=False)
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


if __name__ == "__main__":  # python -m bellm_search.cli.main (what the server tests and scripts start)
    main()
