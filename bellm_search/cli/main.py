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
EngineOpt = Annotated[str, typer.Option("--engine", help="local (this process) | ray (Ray Data actor pool)")]
AddressOpt = Annotated[Optional[str], typer.Option("--address", help="Ray cluster: auto | ray://HOST:PORT (default: a local Ray).")]
NumEncodersOpt = Annotated[int, typer.Option("--num-encoders", help="Ray encoder actors.", min=1)]
GpusOpt = Annotated[float, typer.Option("--gpus-per-encoder", help="GPUs per Ray encoder actor.", min=0)]


@app.command()
def embed(
    input: Annotated[list[str], typer.Argument(help="Corpus: .jsonl, .txt (one text per line) or - for stdin (ray: several files or globs).")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Where to write the float32 .npy (n, dim).")] = None,
    text_field: TextFieldOpt = "text",
    id_field: IdFieldOpt = "id",
    skip_invalid: SkipInvalidOpt = False,
    engine: EngineOpt = "local",
    output_dir: Annotated[Optional[Path], typer.Option("--output-dir", help="ray: shards folder (emb/*.npy + meta/*.parquet).")] = None,
    address: AddressOpt = None, num_encoders: NumEncodersOpt = 1, gpus_per_encoder: GpusOpt = 0.0,
    model: ModelOpt = None, adapter: AdapterOpt = None, bidirectional_layers: BidirOpt = None,
    pooling: PoolingOpt = None, prompt: PromptOpt = None, max_length: MaxLenOpt = None,
    batch_size: BatchOpt = None, device: DeviceOpt = None, dtype: DTypeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Embed every text of INPUT into OUTPUT.npy (one row per valid line, in input order), or into
    embedding shards with --engine ray."""
    from bellm_search.errors import ConfigError

    opts = encoder_options(model, adapter, bidirectional_layers, pooling, prompt, max_length, None, device, dtype)
    if engine == "ray":
        if output_dir is None:
            raise ConfigError("--engine ray writes shards: give --output-dir DIR")
        from bellm_search.distributed.ray_embed import embed_with_ray

        summary = embed_with_ray(list(input), output_dir, opts, address=address, num_encoders=num_encoders,
                                 gpus_per_encoder=gpus_per_encoder, text_field=text_field, id_field=id_field,
                                 batch_size=batch_size or 256, skip_invalid=skip_invalid)
        note(f"embedded {summary['rows']} texts -> {output_dir} ({summary['shards']} shards, {summary['seconds']:.1f}s)")
        emit(summary, as_json)
        return
    if engine != "local":
        raise ConfigError(f"--engine {engine!r}: use local or ray")
    if output is None or len(input) != 1:
        raise ConfigError("the local engine embeds one INPUT into --output FILE.npy")
    _embed_local(input[0], output, text_field, skip_invalid, {**opts, **({"batch_size": batch_size} if batch_size else {})}, as_json)


def _embed_local(input: str, output: Path, text_field: str, skip_invalid: bool, opts: dict[str, Any], as_json: bool) -> None:
    from bellm_search.corpus import CorpusOptions, ReadStats, read_texts
    from bellm_search.encoder.to_npy import encode_to_npy

    stats = ReadStats()
    texts = read_texts(input, CorpusOptions(text_field=text_field, skip_invalid=skip_invalid), stats)
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


# ----------------------------------------------------------------------------- collections
CollectionOpt = Annotated[Optional[str], typer.Option(
    "--collection", "-c", envvar="BELLM_COLLECTION",
    help="Collection: a name under indexes/ or a path (default indexes/default; env BELLM_COLLECTION).")]
NoWaitOpt = Annotated[bool, typer.Option("--no-wait", help="Fail at once if another process is writing.")]
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


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


def open_collection(value: str | None, *, readonly: bool = False, **encoder_opts: Any) -> Any:
    from bellm_search.collection.core import Collection

    return Collection.open(collection_path(value), readonly=readonly, **encoder_opts)


def _progress_bar(desc: str, unit: str = "doc") -> Any:
    from tqdm.auto import tqdm

    return tqdm(desc=desc, unit=unit, disable=not sys.stderr.isatty(), dynamic_ncols=True)


@app.command()
def ingest(
    corpora: Annotated[Optional[list[str]], typer.Argument(help="Corpus files: .jsonl, .txt or - for stdin (several allowed).")] = None,
    collection: CollectionOpt = None,
    text_field: TextFieldOpt = "text",
    id_field: IdFieldOpt = "id",
    skip_invalid: SkipInvalidOpt = False,
    skip_near_duplicates: Annotated[Optional[float], typer.Option(
        "--skip-near-duplicates", help="Record a new document as a duplicate when its cosine to a stored one is >= this.")] = None,
    normalize: Annotated[bool, typer.Option("--normalize", help="Social-media normalisation for exact duplicates (new collections).")] = False,
    chunk_size: Annotated[int, typer.Option("--chunk-size", help="Documents per durable commit.")] = 2048,
    from_embeddings: Annotated[Optional[Path], typer.Option("--from-embeddings", help="Build from embedding shards (emb/ + meta/) made anywhere; no encoding.")] = None,
    engine: EngineOpt = "local",
    address: AddressOpt = None, num_encoders: NumEncodersOpt = 1, gpus_per_encoder: GpusOpt = 0.0,
    model: ModelOpt = None, adapter: AdapterOpt = None, bidirectional_layers: BidirOpt = None,
    pooling: PoolingOpt = None, prompt: PromptOpt = None, max_length: MaxLenOpt = None,
    batch_size: BatchOpt = None, device: DeviceOpt = None, dtype: DTypeOpt = None,
    no_wait: NoWaitOpt = False, as_json: JsonOpt = False,
) -> None:
    """Add documents to a collection (created on first use). Re-running resumes: known ids are skipped."""
    from bellm_search.collection.core import Collection, MANIFEST
    from bellm_search.corpus import CorpusOptions, ReadStats, read_corpus

    path = collection_path(collection)
    opts = encoder_options(model, adapter, bidirectional_layers, pooling, prompt, max_length, batch_size, device, dtype)
    if from_embeddings is not None or engine == "ray":
        _ingest_distributed(path, corpora, from_embeddings, engine, opts, text_field, id_field, skip_invalid,
                            chunk_size, normalize, skip_near_duplicates, address, num_encoders, gpus_per_encoder,
                            not no_wait, as_json)
        return
    if (path / MANIFEST).is_file():
        coll = Collection.open(path, **opts)
    else:
        coll = Collection.create(path, normalize_social=normalize, **opts)
    if not corpora:
        from bellm_search.errors import ConfigError

        raise ConfigError("give at least one CORPUS file (or --from-embeddings DIR)")
    options = CorpusOptions(text_field=text_field, id_field=id_field, skip_invalid=skip_invalid,
                            prefix_ids=len(corpora) > 1)
    read = ReadStats()
    records = (rec for corpus in corpora for rec in read_corpus(corpus, options, read))
    with coll, _progress_bar("ingest") as bar:
        stats = coll.ingest(records, chunk_size=chunk_size, skip_near_duplicates=skip_near_duplicates,
                            progress=bar.update, wait=not no_wait)
        total = coll.store.count()
    stats.invalid = read.invalid
    for problem in read.problems:
        note(f"skipped {problem}")
    rate = (stats.added + stats.exact_duplicates + stats.near_duplicates) / max(stats.seconds, 1e-9)
    note(f"{path}: added {stats.added}, skipped (known id) {stats.skipped_known}, exact duplicates "
         f"{stats.exact_duplicates}, near duplicates {stats.near_duplicates}, invalid lines {stats.invalid} "
         f"in {stats.seconds:.1f}s ({rate:.0f} docs/s); {total} documents")
    emit({**stats.to_dict(), "collection": str(path), "documents": total}, as_json)


def _ingest_distributed(path, corpora, from_embeddings, engine, opts, text_field, id_field, skip_invalid,
                        chunk_size, normalize, near, address, num_encoders, gpus, wait, as_json) -> None:
    from bellm_search.distributed import ray_embed as distributed
    from bellm_search.errors import ConfigError

    if from_embeddings is not None:
        if corpora:
            raise ConfigError("--from-embeddings takes its documents from the shards: give no CORPUS")
        stats = distributed.ingest_from_embeddings(path, from_embeddings, encoder_options=opts or None,
                                                   chunk_size=chunk_size, normalize_social=normalize,
                                                   skip_near_duplicates=near, wait=wait)
    else:
        _, stats = distributed.ingest_with_ray(path, list(corpora), encoder_options=opts, address=address,
                                               num_encoders=num_encoders, gpus_per_encoder=gpus, text_field=text_field,
                                               id_field=id_field, skip_invalid=skip_invalid, chunk_size=chunk_size,
                                               normalize_social=normalize, skip_near_duplicates=near, wait=wait)
    note(f"{path}: added {stats.added}, skipped (known id) {stats.skipped_known}, exact duplicates "
         f"{stats.exact_duplicates}, near duplicates {stats.near_duplicates} in {stats.seconds:.1f}s")
    emit({**stats.to_dict(), "collection": str(path)}, as_json)


def _read_queries(file: Path) -> list[str]:
    from bellm_search.corpus import CorpusOptions, read_texts

    return read_texts(str(file), CorpusOptions())


@app.command()
def query(
    text: Annotated[Optional[str], typer.Argument(help="Query text (or use --file).")] = None,
    file: Annotated[Optional[Path], typer.Option("--file", "-f", help="Queries: .jsonl with 'text' or .txt, one per line.")] = None,
    k: Annotated[int, typer.Option("-k", help="Results per query.", min=1, max=10000)] = 10,
    nprobe: Annotated[Optional[int], typer.Option("--nprobe", help="IVF lists to visit (default from the collection).", min=1)] = None,
    where: Annotated[Optional[list[str]], typer.Option("--where", help="Metadata filter FIELD=VALUE (repeatable).")] = None,
    collection: CollectionOpt = None,
    device: DeviceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Search a collection: the k nearest documents to each query."""
    from bellm_search.collection.core import parse_where
    from bellm_search.errors import ConfigError

    if (text is None) == (file is None):
        raise ConfigError("give a query TEXT or --file, not both and not neither")
    texts = [text] if text is not None else _read_queries(file)
    opts = {"device": device} if device else {}
    with open_collection(collection, readonly=True, **opts) as coll:
        results = coll.query(texts, k=k, nprobe=nprobe, where=parse_where(where or []))
    for qi, (qtext, hits) in enumerate(zip(texts, results)):
        if as_json:
            for rank, hit in enumerate(hits, start=1):
                emit({"query": qi, "rank": rank, **hit.to_dict()}, True)
            continue
        if len(texts) > 1:
            typer.echo(f"# {qtext}")
        for rank, hit in enumerate(hits, start=1):
            snippet = hit.text.replace("\n", " ")
            typer.echo(f"{rank:>3}  {hit.score:.4f}  {hit.id:<16}  {snippet[:100]}")


@app.command()
def delete(
    ids: Annotated[list[str], typer.Argument(help="Source ids of the documents to delete.")],
    collection: CollectionOpt = None,
    no_wait: NoWaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete documents by id (tombstoned; they never come back in results or dedup)."""
    with open_collection(collection) as coll:
        deleted, unknown = coll.delete(ids, wait=not no_wait)
    if unknown:
        note(f"not found (or already deleted): {', '.join(unknown[:10])}{' ...' if len(unknown) > 10 else ''}")
    note(f"deleted {deleted} document(s)")
    emit({"deleted": deleted, "unknown": unknown}, as_json)


@app.command()
def reindex(
    factory: Annotated[Optional[str], typer.Option("--factory", help="FAISS factory string, e.g. 'IVF4096,PQ144x4fs', 'IVF4096,PQ72' or 'Flat'.")] = None,
    nlist: Annotated[Optional[int], typer.Option("--nlist", min=1)] = None,
    m: Annotated[Optional[int], typer.Option("--m", help="PQ sub-quantizers (must divide the dimension).", min=1)] = None,
    opq: Annotated[Optional[bool], typer.Option("--opq/--no-opq", help="OPQ rotation before PQ.")] = None,
    collection: CollectionOpt = None,
    no_wait: NoWaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Rebuild the index from the stored vectors (no re-encoding)."""
    start = time.perf_counter()
    with open_collection(collection) as coll:
        desc = coll.reindex(factory=factory, nlist=nlist, m=m, opq=opq, wait=not no_wait)
    note(f"rebuilt {desc['factory']} over {desc['ntotal']} vectors in {time.perf_counter() - start:.1f}s")
    emit(desc, as_json)


@app.command()
def info(collection: CollectionOpt = None, as_json: JsonOpt = False) -> None:
    """Show a collection: counts, dimension, index type and parameters, encoder, disk size."""
    with open_collection(collection, readonly=True) as coll:
        data = coll.info()
    if as_json:
        emit(data, True)
        return
    idx, enc = data["index"], data["encoder"]
    lines = [
        f"collection   {data['path']}",
        f"documents    {data['documents']} ({data['vectors']} vectors, {data['deleted']} deleted)",
        f"dimension    {data['dim']}",
        f"index        {idx.get('factory')} ({idx.get('type')}; nlist={idx.get('nlist')} m={idx.get('m')} "
        f"nbits={idx.get('nbits')}; {idx.get('bytes_per_vector')} bytes/vector; gpu={idx.get('gpu')})",
        f"encoder      {enc['model']} adapter={enc.get('adapter')} k={enc['bidirectional_layers']} "
        f"pooling={enc['pooling']} max_length={enc['max_length']}",
        f"disk         {data['disk_bytes'] / 1e6:.1f} MB",
    ]
    typer.echo("\n".join(lines))


@app.command()
def check(
    repair: Annotated[bool, typer.Option("--repair", help="Rebuild the derived index from the stored vectors.")] = False,
    collection: CollectionOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify a collection (index checksum and count, id maps); --repair rebuilds the index."""
    from bellm_search.collection.core import Collection

    path = collection_path(collection)
    with Collection.open(path, readonly=not repair) as coll:
        report = coll.check(repair=repair)
    for problem in report["problems"]:
        note(f"problem: {problem}")
    if report["repaired"]:
        note("repaired: index rebuilt from the stored vectors" + ("" if report["ok"] else "; problems remain"))
    note(f"{path}: {'ok' if report['ok'] else 'NOT ok'}")
    emit(report, as_json)
    if not report["ok"]:
        raise typer.Exit(1)


# ----------------------------------------------------------------------------- dedup
@app.command()
def dedup(
    corpus: Annotated[Optional[str], typer.Argument(help="Optional corpus (.jsonl/.txt) to ingest first; else the collection as it is.")] = None,
    collection: Annotated[Optional[str], typer.Option("--collection", "-c", envvar="BELLM_COLLECTION",
        help="Collection (name or path). With CORPUS and no --collection a temporary collection is used.")] = None,
    threshold: Annotated[Optional[float], typer.Option("--threshold", "-t", help="Pair-score threshold (default: the calibrated one).")] = None,
    lexical_weight: Annotated[Optional[float], typer.Option("--lexical-weight", "-w", min=0.0, max=0.99,
        help="Pair score = (1-w)*cosine + w*character-5-gram Jaccard of the social-normalised texts (0: pure cosine; default: the calibrated w).")] = None,
    k: Annotated[int, typer.Option("-k", help="Neighbours searched per document.", min=1, max=1000)] = 10,
    keep: Annotated[str, typer.Option("--keep", help="first | longest | shortest | field:NAME (largest value wins).")] = "first",
    normalize: Annotated[bool, typer.Option("--normalize", help="Social-media normalisation for exact duplicates (new collections).")] = False,
    nprobe: Annotated[Optional[int], typer.Option("--nprobe", min=1)] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the result here (JSONL or id list).")] = None,
    emit_: Annotated[str, typer.Option("--emit", help="clusters | keep | remove | pairs")] = "clusters",
    text_field: TextFieldOpt = "text", id_field: IdFieldOpt = "id", skip_invalid: SkipInvalidOpt = False,
    model: ModelOpt = None, adapter: AdapterOpt = None, bidirectional_layers: BidirOpt = None,
    pooling: PoolingOpt = None, batch_size: BatchOpt = None, device: DeviceOpt = None, dtype: DTypeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Find near-duplicate clusters in a collection (or in CORPUS, ingested first)."""
    import shutil
    import tempfile

    from bellm_search.dedup.keep import parse_keep
    from bellm_search.dedup.job import run_dedup
    from bellm_search.errors import ConfigError

    if emit_ not in ("clusters", "keep", "remove", "pairs"):
        raise ConfigError(f"--emit {emit_!r}: use clusters, keep, remove or pairs")
    parse_keep(keep)
    if threshold is not None and not -1.0 <= threshold <= 1.0:
        raise ConfigError("--threshold is a similarity score in [-1, 1]")
    from bellm_search.dedup.job import resolve_scoring

    resolve_scoring(threshold, lexical_weight)  # a threshold-less non-default weight fails before any ingest
    temp = tempfile.mkdtemp(prefix="bellm-dedup-") if corpus and not collection else None
    target = str(Path(temp) / "collection") if temp else collection
    opts = encoder_options(model, adapter, bidirectional_layers, pooling, None, None, batch_size, device, dtype)
    try:
        if corpus:
            ingest(corpora=[corpus], collection=target, text_field=text_field, id_field=id_field,
                   skip_invalid=skip_invalid, skip_near_duplicates=None, normalize=normalize, chunk_size=2048,
                   from_embeddings=None, engine="local", address=None, num_encoders=1, gpus_per_encoder=0.0,
                   **opts, prompt=None, max_length=None, no_wait=False, as_json=False)
        with open_collection(target, **({"device": device} if device else {})) as coll:
            result = run_dedup(coll, threshold, k, keep, nprobe, output, emit_, lexical_weight)  # type: ignore[arg-type]
    finally:
        if temp:
            shutil.rmtree(temp, ignore_errors=True)
    note(f"{result.documents} documents: {result.clusters} clusters, {result.removed} duplicates to remove "
         f"({result.removed_exact} exact, {result.removed_near} near) at {result.score} >= {result.threshold:.3f} "
         f"in {result.seconds:.1f}s" + (f"; {emit_} -> {output}" if output else ""))
    emit(result.to_dict(), as_json)


@eval_app.command("dedup")
def eval_dedup(
    pairs: Annotated[str, typer.Argument(help="Labelled pairs: JSONL {text1,text2,label}, twitter-url dir, pit2015 .data, mrpc .txt")],
    fmt: Annotated[str, typer.Option("--format", help="auto | jsonl | twitter-url | pit2015 | mrpc")] = "auto",
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write a precision/recall/F1 curve PNG here.")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Use only the first N pairs.", min=1)] = None,
    lexical_weight: Annotated[Optional[float], typer.Option("--lexical-weight", "-w", min=0.0, max=0.99,
        help="Score pairs as dedup does: (1-w)*cosine + w*5-gram Jaccard (0: pure cosine; default: the calibrated w).")] = None,
    model: ModelOpt = None, adapter: AdapterOpt = None, bidirectional_layers: BidirOpt = None,
    pooling: PoolingOpt = None, prompt: PromptOpt = None, max_length: MaxLenOpt = None,
    batch_size: BatchOpt = None, device: DeviceOpt = None, dtype: DTypeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Calibrate duplicate detection on labelled pairs: AP, P/R/F1 over thresholds, best-F1 threshold."""
    from bellm_search.eval.pairs import evaluate_pairs

    opts = encoder_options(model, adapter, bidirectional_layers, pooling, prompt, max_length, batch_size, device, dtype)
    report = evaluate_pairs(pairs, fmt, opts, plot=plot, limit=limit, lexical_weight=lexical_weight)
    if as_json:
        emit(report, True)
        return
    typer.echo(f"pairs {report['pairs']} (positive {report['positives']})  AP {report['ap'] * 100:.1f}  "
               f"best F1 {report['f1'] * 100:.1f} at {report['score']} >= {report['threshold']:.3f} "
               f"(P {report['precision'] * 100:.1f}, R {report['recall'] * 100:.1f})")
    for row in report["curve"]:
        typer.echo(f"  t={row['threshold']:.2f}  P={row['precision'] * 100:5.1f}  R={row['recall'] * 100:5.1f}  F1={row['f1'] * 100:5.1f}")
    if plot:
        note(f"plot -> {plot}")


# ----------------------------------------------------------------------------- training and STS
def _register_training() -> None:
    from bellm_search.cli.train import eval_sts_command, train_command

    app.command("train", help="Train a BeLLM LoRA adapter (AnglE loss) on NLI triples or scored pairs.")(train_command)
    eval_app.command("sts", help="Spearman x100 of cosine vs gold scores (STS-B TSV or JSONL).")(eval_sts_command)


_register_training()


def _register_serve() -> None:
    from bellm_search.serve.app import serve_command

    app.command("serve", help="Serve a collection over HTTP (FastAPI on uvicorn) with micro-batched encoding.")(serve_command)


_register_serve()


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
