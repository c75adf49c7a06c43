"""The ``bellm-search`` command line. Heavy libraries are imported inside commands only."""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from bellm_search.errors import BellmError

app = typer.Typer(
    name="bellm-search",
    help="Vector search and near-duplicate detection for text with BeLLM embeddings (FAISS + LMDB).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
eval_app = typer.Typer(help="Evaluate embeddings: STS correlation, duplicate-detection calibration.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")
log = logging.getLogger("bellm_search")

# ----------------------------------------------------------------------------- shared options
ModelOpt = Annotated[Optional[str], typer.Option("--model", help="Base model: local folder or hub id (default: embedded SmolLM2-135M-Instruct).")]
AdapterOpt = Annotated[Optional[str], typer.Option("--adapter", help="LoRA adapter folder ('none' = no adapter; default: the shipped BeLLM adapter).")]
BidirOpt = Annotated[Optional[int], typer.Option("--bidirectional-layers", help="Top layers made bidirectional (0 = causal).")]
PoolingOpt = Annotated[Optional[str], typer.Option("--pooling", help="last | mean")]
PromptOpt = Annotated[Optional[str], typer.Option("--prompt", help="Prompt with {text}; default is the BeLLM prompt for last pooling.")]
MaxLenOpt = Annotated[Optional[int], typer.Option("--max-length", help="Max tokens per text (longer texts are truncated).")]
BatchOpt = Annotated[Optional[int], typer.Option("--batch-size", help="Max texts per encoder batch.")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="auto | cpu | cuda | cuda:N | cuda:0,cuda:1 | cuda:all")]
DTypeOpt = Annotated[Optional[str], typer.Option("--dtype", help="auto | float32 | bfloat16 | float16")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
TextFieldOpt = Annotated[str, typer.Option("--text-field", help="JSONL field holding the text.")]
IdFieldOpt = Annotated[str, typer.Option("--id-field", help="JSONL field holding the document id (default: line number).")]
SkipInvalidOpt = Annotated[bool, typer.Option("--skip-invalid", help="Skip and count invalid lines instead of stopping.")]


def encoder_options(model=None, adapter=None, bidirectional_layers=None, pooling=None, prompt=None,
                    max_length=None, batch_size=None, device=None, dtype=None) -> dict[str, Any]:
    """CLI flags -> keyword settings for ``resolve_config`` (unset flags left out)."""
    given = dict(model=model, adapter=adapter, bidirectional_layers=bidirectional_layers, pooling=pooling,
                 prompt=prompt, max_length=max_length, batch_size=batch_size, device=device, dtype=dtype)
    return {k: v for k, v in given.items() if v is not None}


def emit(data: Any, as_json: bool, text: str | None = None) -> None:
    """Results go to stdout: JSON for machines, a line of text otherwise."""
    if as_json:
        typer.echo(json.dumps(data, ensure_ascii=False))
    elif text is not None:
        typer.echo(text)


def note(message: str) -> None:
    """Messages for humans go to stderr."""
    typer.echo(message, err=True)


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


# ----------------------------------------------------------------------------- embed
@app.command()
def embed(
    input: Annotated[str, typer.Argument(help="Corpus: .jsonl, .txt (one text per line) or - for stdin.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the float32 .npy (n, dim).")],
    text_field: TextFieldOpt = "text",
    skip_invalid: SkipInvalidOpt = False,
    model: ModelOpt = None, adapter: AdapterOpt = None, bidirectional_layers: BidirOpt = None,
    pooling: PoolingOpt = None, prompt: PromptOpt = None, max_length: MaxLenOpt = None,
    batch_size: BatchOpt = None, device: DeviceOpt = None, dtype: DTypeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Embed every text of INPUT into OUTPUT.npy, one row per valid line, in input order."""
    from bellm_search.corpus import CorpusOptions, ReadStats, read_texts
    from bellm_search.embedding import encode_to_npy

    stats = ReadStats()
    texts = read_texts(input, CorpusOptions(text_field=text_field, skip_invalid=skip_invalid), stats)
    opts = encoder_options(model, adapter, bidirectional_layers, pooling, prompt, max_length, batch_size, device, dtype)
    start = time.perf_counter()
    shape, truncated = encode_to_npy(texts, output, opts)
    seconds = time.perf_counter() - start
    summary = {"output": str(output), "rows": shape[0], "dim": shape[1], "invalid_lines": stats.invalid,
               "truncated": truncated, "seconds": round(seconds, 3)}
    for problem in stats.problems:
        note(f"skipped {problem}")
    note(f"embedded {shape[0]} texts -> {output} ({shape[1]} dims, {seconds:.1f}s, "
         f"{stats.invalid} invalid lines skipped, {truncated} truncated)")
    emit(summary, as_json)


@app.command("prepare-model")
def prepare_model(as_json: JsonOpt = False) -> None:
    """Convert the embedded SmolLM2-135M-Instruct GGUF into a cached bf16 folder (once)."""
    from bellm_search.encoder.loading import prepare_embedded

    path = prepare_embedded()
    emit({"path": str(path)}, as_json, f"embedded model ready: {path}")


# ----------------------------------------------------------------------------- entry point
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
    except Exception as exc:  # click usage errors carry their own exit code
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(1)
        raise
