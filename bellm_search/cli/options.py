"""Every option shared by several commands, once, and the helpers that turn them into settings.

Only typer is imported here: ``bellm-search --help`` must stay free of torch and faiss.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

# ----------------------------------------------------------------------------- encoder
ModelOpt = Annotated[Optional[str], typer.Option("--model", help="Base model: local folder or hub id (default: embedded SmolLM2-135M-Instruct).")]
AdapterOpt = Annotated[Optional[str], typer.Option("--adapter", help="LoRA adapter folder ('none' = no adapter; default: the shipped BeLLM adapter).")]
BidirOpt = Annotated[Optional[int], typer.Option("--bidirectional-layers", help="Top layers made bidirectional (0 = causal).", min=0)]
PoolingOpt = Annotated[Optional[str], typer.Option("--pooling", help="last | mean")]
PromptOpt = Annotated[Optional[str], typer.Option("--prompt", help="Prompt with {text}; default is the BeLLM prompt for last pooling.")]
MaxLenOpt = Annotated[Optional[int], typer.Option("--max-length", help="Max tokens per text (longer texts are truncated).")]
BatchOpt = Annotated[Optional[int], typer.Option("--batch-size", help="Max texts per encoder batch.")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="auto | cpu | cuda | cuda:N | cuda:0,cuda:1 | cuda:all")]
DTypeOpt = Annotated[Optional[str], typer.Option("--dtype", help="auto | float32 | bfloat16 | float16 | int8 (CPU: int8 linear layers)")]

# ----------------------------------------------------------------------------- input and output
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
TextFieldOpt = Annotated[Optional[str], typer.Option("--text-field", help="JSONL field holding the text (default: text).")]
IdFieldOpt = Annotated[Optional[str], typer.Option("--id-field", help="JSONL field holding the document id (default: id; else the line number).")]
SkipInvalidOpt = Annotated[bool, typer.Option("--skip-invalid", help="Skip and count invalid lines instead of stopping.")]
NormalizeOpt = Annotated[bool, typer.Option("--normalize-social", help="Exact duplicates compared after social-media normalisation (RT markers, URLs, @mentions and # dropped, case-folded; new collections).")]
NprobeOpt = Annotated[Optional[int], typer.Option("--nprobe", help="IVF lists to visit (default from the collection).", min=1)]

# ----------------------------------------------------------------------------- Ray
EngineOpt = Annotated[str, typer.Option("--engine", help="local (this process) | ray (Ray Data actor pool)")]
AddressOpt = Annotated[Optional[str], typer.Option("--address", help="Ray cluster: auto | ray://HOST:PORT (default: a local Ray).")]
NumEncodersOpt = Annotated[int, typer.Option("--num-encoders", help="Ray encoder actors.", min=1)]
GpusOpt = Annotated[float, typer.Option("--gpus-per-encoder", help="GPUs per Ray encoder actor.", min=0)]

# ----------------------------------------------------------------------------- collections
CollectionOpt = Annotated[Optional[str], typer.Option(
    "--collection", "-c", envvar="BELLM_COLLECTION",
    help="Collection: a name under indexes/ or a path (default indexes/default; env BELLM_COLLECTION).")]
NoWaitOpt = Annotated[bool, typer.Option("--no-wait", help="Fail at once if another process is writing.")]
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def encoder_options(model=None, adapter=None, bidirectional_layers=None, pooling=None, prompt=None,
                    max_length=None, batch_size=None, device=None, dtype=None) -> dict[str, Any]:
    """CLI flags -> keyword settings for ``resolve_config`` (unset flags left out)."""
    given = dict(model=model, adapter=adapter, bidirectional_layers=bidirectional_layers, pooling=pooling,
                 prompt=prompt, max_length=max_length, batch_size=batch_size, device=device, dtype=dtype)
    return {k: v for k, v in given.items() if v is not None}


def refuse_unused(reason: str, **given: Any) -> None:
    """Options a command would accept and never read are refused: ``refuse_unused("with --from-embeddings",
    text_field=...)`` raises for each one given (not None and not False)."""
    from bellm_search.errors import ConfigError

    names = [f"--{name.replace('_', '-')}" for name, value in given.items() if value not in (None, False)]
    if names:
        raise ConfigError(f"{', '.join(names)} {'is' if len(names) == 1 else 'are'} not used {reason}: leave "
                          f"{'it' if len(names) == 1 else 'them'} out")


def collection_path(value: str | None) -> Path:
    """A bare name lives under ./indexes/ and may not escape it; anything with a slash is a path."""
    from bellm_search.errors import CollectionError

    value = value or "default"
    if "/" in value or value.startswith("~"):
        return Path(value).expanduser()
    if value in (".", "..") or not set(value) <= NAME_CHARS:
        raise CollectionError(f"collection name {value!r}: use letters, digits, '.', '_' or '-' (or give a path)")
    root = Path("indexes")
    path = root / value
    if path.is_symlink():
        raise CollectionError(f"collection name {value!r} is a symbolic link; give the real path instead")
    return path


def collection_folder(value: str | None) -> Path:
    """``collection_path`` for a command that may create the collection: neither it nor a folder
    above it may be a file."""
    from bellm_search.errors import CollectionError

    path = collection_path(value)
    for folder in (path, *path.parents):
        if folder.exists() and not folder.is_dir():
            where = "" if folder == path else f" ({folder} is a file)"
            raise CollectionError(f"collection {path} cannot be a folder{where}: give a folder path or a name")
    return path


def input_files(paths: list[str]) -> list[str]:
    """Corpus files (or - for stdin) checked before any slow work: each must be a readable file."""
    from bellm_search.errors import ConfigError

    for name in paths:
        if name != "-" and not Path(name).is_file():
            problem = "is a directory" if Path(name).is_dir() else "does not exist"
            raise ConfigError(f"{name} {problem}: give a .jsonl or .txt file (or - for stdin)")
    return paths


def open_collection(value: str | None, *, readonly: bool = False, **encoder_opts: Any) -> Any:
    from bellm_search.collection.core import Collection

    return Collection.open(collection_path(value), readonly=readonly, **encoder_opts)
