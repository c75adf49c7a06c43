"""Collection commands: ``ingest``, ``query``, ``delete``, ``reindex``, ``info``, ``check``."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from bellm_search.cli.options import (
    AdapterOpt, AddressOpt, BatchOpt, BidirOpt, CollectionOpt, DeviceOpt, DTypeOpt, EngineOpt, GpusOpt, IdFieldOpt,
    JsonOpt, MaxLenOpt, ModelOpt, NoWaitOpt, NormalizeOpt, NprobeOpt, NumEncodersOpt, PoolingOpt, PromptOpt,
    SkipInvalidOpt, TextFieldOpt, collection_folder, collection_path, encoder_options, input_files, open_collection,
    refuse_unused,
)
from bellm_search.cli.output import emit, note, progress_bar


def ingest(
    corpora: Annotated[Optional[list[str]], typer.Argument(help="Corpus files: .jsonl, .txt or - for stdin (several allowed).")] = None,
    collection: CollectionOpt = None,
    text_field: TextFieldOpt = None,
    id_field: IdFieldOpt = None,
    skip_invalid: SkipInvalidOpt = False,
    near_duplicate_threshold: Annotated[Optional[float], typer.Option(
        "--near-duplicate-threshold", min=-1.0, max=1.0,
        help="Record a new document as a near duplicate (stored, no vector) when its cosine to a stored one is >= this.")] = None,
    near_duplicates: Annotated[bool, typer.Option(
        "--near-duplicates",
        help="Record a new document as a near duplicate (stored, no vector, linked to its first copy) when the "
             "collection's calibrated pair model says so (needs a calibration fitting the encoder: the shipped one, "
             "or `bellm-search label` + `calibrate`).")] = False,
    normalize: NormalizeOpt = False,
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

    path = collection_folder(collection)
    opts = encoder_options(model, adapter, bidirectional_layers, pooling, prompt, max_length, batch_size, device, dtype)
    near_model = _near_model(path, opts, from_embeddings, near_duplicate_threshold) if near_duplicates else None
    if from_embeddings is not None or engine == "ray":
        _ingest_distributed(path, corpora, from_embeddings, engine, opts, text_field, id_field, skip_invalid,
                            chunk_size, normalize, (near_duplicate_threshold, near_model), address, num_encoders,
                            gpus_per_encoder, not no_wait, as_json)
        return
    if not corpora:
        from bellm_search.errors import ConfigError

        raise ConfigError("give at least one CORPUS file (or --from-embeddings DIR)")
    input_files(corpora)  # before the model loads
    if (path / MANIFEST).is_file():
        coll = Collection.open(path, **opts)
    else:
        coll = Collection.create(path, normalize_social=normalize, **opts)
    options = CorpusOptions(text_field=text_field or "text", id_field=id_field or "id", skip_invalid=skip_invalid,
                            prefix_ids=len(corpora) > 1, documents=True)
    read = ReadStats()
    records = (rec for corpus in corpora for rec in read_corpus(corpus, options, read))
    with coll, progress_bar("ingest") as bar:
        stats = coll.ingest(records, chunk_size=chunk_size, skip_near_duplicates=near_duplicate_threshold,
                            near_model=near_model, progress=bar.update, wait=not no_wait)
        total = coll.store.count()
    stats.invalid = read.invalid
    _say_ingested(path, stats, read, total, as_json)


def _say_ingested(path: Path, stats: Any, read: Any, total: int, as_json: bool) -> None:
    for problem in read.problems:
        note(f"skipped {problem}")
    rate = (stats.added + stats.exact_duplicates + stats.near_duplicates) / max(stats.seconds, 1e-9)
    more = [(stats.deleted_earlier, "deleted earlier"), (stats.repeated_ids, "repeated ids with another text"),
            (read.blank, "blank lines")]
    note(f"{path}: added {stats.added}, skipped (known id) {stats.skipped_known}, exact duplicates "
         f"{stats.exact_duplicates}, near duplicates {stats.near_duplicates}, invalid lines {stats.invalid}"
         + "".join(f", {name} {n}" for n, name in more if n)
         + f" in {stats.seconds:.1f}s ({rate:.0f} docs/s); {total} documents")
    emit({**stats.to_dict(), "blank_lines": read.blank, "collection": str(path), "documents": total}, as_json)


def _near_model(path: Path, opts: dict, shards: Optional[Path], threshold: Optional[float]) -> Any:
    """``decision_for`` (the collection's calibrated pair model, for ``--near-duplicates``), once it
    is checked, before anything is read or encoded, that a calibration fits the encoder: the
    collection's, or the one a new collection will get (from the options, else the shards)."""
    from types import SimpleNamespace

    from bellm_search.collection.manifest import MANIFEST, encoder_identity, read_manifest
    from bellm_search.dedup.calibration import CalibrationMismatch, decision_for
    from bellm_search.errors import ConfigError

    if threshold is not None:
        raise ConfigError("give --near-duplicates (the calibrated pair model) or --near-duplicate-threshold "
                          "(a cosine), not both")
    new = not (path / MANIFEST).is_file()
    if not new:
        manifest = read_manifest(path)
    elif shards is not None and not opts:
        from bellm_search.distributed.shards import read_config

        manifest = {"encoder": read_config(shards)["encoder"]}
    else:
        from bellm_search.encoder.resolve import resolve_config

        manifest = {"encoder": encoder_identity(resolve_config(**opts))}
    try:
        decision_for(SimpleNamespace(path=path, manifest=manifest))
    except CalibrationMismatch as exc:
        first = " (a new collection: ingest it without --near-duplicates first)" if new else ""
        raise CalibrationMismatch(f"--near-duplicates: {exc}{first}".replace("--threshold", "--near-duplicate-threshold")) from None
    return decision_for


def _ingest_distributed(path, corpora, from_embeddings, engine, opts, text_field, id_field, skip_invalid,
                        chunk_size, normalize, near_rule, address, num_encoders, gpus, wait, as_json) -> None:
    from bellm_search.distributed import ingest as distributed
    from bellm_search.errors import ConfigError

    near, near_model = near_rule
    if from_embeddings is not None:
        if corpora:
            raise ConfigError("--from-embeddings takes its documents from the shards: give no CORPUS")
        refuse_unused("with --from-embeddings (the shards hold ids and texts already)", text_field=text_field,
                      id_field=id_field, skip_invalid=skip_invalid, address=address)
        stats = distributed.ingest_from_embeddings(path, from_embeddings, encoder_options=opts or None,
                                                   chunk_size=chunk_size, normalize_social=normalize,
                                                   skip_near_duplicates=near, near_model=near_model, wait=wait)
    else:
        _, stats = distributed.ingest_with_ray(path, list(corpora), encoder_options=opts, address=address,
                                               num_encoders=num_encoders, gpus_per_encoder=gpus, text_field=text_field or "text",
                                               id_field=id_field or "id", skip_invalid=skip_invalid, chunk_size=chunk_size,
                                               normalize_social=normalize, skip_near_duplicates=near,
                                               near_model=near_model, wait=wait)
    note(f"{path}: added {stats.added}, skipped (known id) {stats.skipped_known}, exact duplicates "
         f"{stats.exact_duplicates}, near duplicates {stats.near_duplicates} in {stats.seconds:.1f}s")
    emit({**stats.to_dict(), "collection": str(path)}, as_json)


def _read_queries(file: Path) -> list[str]:
    from bellm_search.corpus import CorpusOptions, read_texts

    return read_texts(str(file), CorpusOptions())


def query(
    text: Annotated[Optional[str], typer.Argument(help="Query text (or use --file).")] = None,
    file: Annotated[Optional[Path], typer.Option("--file", "-f", help="Queries: .jsonl with 'text' or .txt, one per line.")] = None,
    k: Annotated[int, typer.Option("--top-k", "-k", help="Results per query.", min=1, max=10000)] = 10,
    nprobe: NprobeOpt = None,
    where: Annotated[Optional[list[str]], typer.Option("--where", help="Metadata filter FIELD=VALUE (repeatable).")] = None,
    collection: CollectionOpt = None,
    device: DeviceOpt = None,
    list_copies: Annotated[bool, typer.Option("--list-copies", help="List each exact copy of a hit (same text) as a result of its own; by default they are collapsed under the first ('+N copies').")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Search a collection: the k nearest documents to each query."""
    from bellm_search.collection.search import parse_where
    from bellm_search.errors import ConfigError

    if (text is None) == (file is None):
        raise ConfigError("give a query TEXT or --file, not both and not neither")
    texts = [text] if text is not None else _read_queries(file)
    opts = {"device": device} if device else {}
    with open_collection(collection, readonly=True, **opts) as coll:
        results = coll.query(texts, k=k, nprobe=nprobe, where=parse_where(where or []), list_copies=list_copies)
    for qi, (qtext, hits) in enumerate(zip(texts, results)):
        if as_json:
            for rank, hit in enumerate(hits, start=1):
                emit({"query": qi, "rank": rank, **hit.to_dict()}, True)
            continue
        if len(texts) > 1:
            typer.echo(f"# {qtext}")
        for rank, hit in enumerate(hits, start=1):
            snippet = hit.text.replace("\n", " ")
            copies = f"  (+{hit.copies} copies)" if hit.copies else ""
            typer.echo(f"{rank:>3}  {hit.score:.4f}  {hit.id:<16}  {snippet[:100]}{copies}")


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


def reindex(
    factory: Annotated[Optional[str], typer.Option("--factory", help="FAISS factory string, e.g. 'IVF4096,PQ144x4fs', 'IVF4096,PQ72' or 'Flat'.")] = None,
    nlist: Annotated[Optional[int], typer.Option("--nlist", help="IVF lists (cells).", min=1)] = None,
    m: Annotated[Optional[int], typer.Option("--pq-m", help="PQ sub-quantizers (must divide the dimension).", min=1)] = None,
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


def check(
    repair: Annotated[bool, typer.Option("--repair", help="Rebuild the derived index from the stored vectors.")] = False,
    collection: CollectionOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify a collection (index checksum and count, id maps); --repair rebuilds the index."""
    from bellm_search.collection.core import Collection
    from bellm_search.errors import CollectionError

    path = collection_path(collection)
    try:
        coll = Collection.open(path, readonly=not repair)
    except CollectionError as exc:  # a damaged or lost store is refused; --json still gets its report
        if as_json:
            emit({"path": str(path), "ok": False, "repaired": False, "store": "refused", "problems": [str(exc)]}, True)
        raise
    with coll:
        report = coll.check(repair=repair)
    for problem in report["problems"]:
        note(f"problem: {problem}")
    if report["repaired"]:
        note("repaired: index rebuilt from the stored vectors" + ("" if report["ok"] else "; problems remain"))
    note(f"{path}: {'ok' if report['ok'] else 'NOT ok'}")
    emit(report, as_json)
    if not report["ok"]:
        raise typer.Exit(1)
