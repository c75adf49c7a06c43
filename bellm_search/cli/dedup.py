"""``bellm-search dedup`` and ``eval dedup``."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from bellm_search.cli.options import (
    AdapterOpt, BatchOpt, BidirOpt, DeviceOpt, DTypeOpt, IdFieldOpt, JsonOpt, MaxLenOpt, ModelOpt, NormalizeOpt,
    NprobeOpt, PoolingOpt, PromptOpt, SkipInvalidOpt, TextFieldOpt, encoder_options, open_collection,
)
from bellm_search.cli.output import emit, note

LexicalWeightOpt = Annotated[Optional[float], typer.Option(
    "--lexical-weight", "-w", min=0.0, max=0.99,
    help="Pair score = (1-w)*cosine + w*character-5-gram Jaccard of the social-normalised texts (0: pure cosine; default: the calibrated w).")]


def dedup(
    corpus: Annotated[Optional[str], typer.Argument(help="Optional corpus (.jsonl/.txt) to ingest first; else the collection as it is.")] = None,
    collection: Annotated[Optional[str], typer.Option("--collection", "-c", envvar="BELLM_COLLECTION",
        help="Collection (name or path). With CORPUS and no --collection a temporary collection is used.")] = None,
    threshold: Annotated[Optional[float], typer.Option("--threshold", "-t", help="Pair-score threshold (default: the calibrated one).")] = None,
    lexical_weight: LexicalWeightOpt = None,
    k: Annotated[int, typer.Option("-k", help="Neighbours searched per document.", min=1, max=1000)] = 10,
    keep: Annotated[str, typer.Option("--keep", help="first | longest | shortest | field:NAME (largest value wins).")] = "first",
    normalize: NormalizeOpt = False,
    nprobe: NprobeOpt = None,
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

    from bellm_search.cli.collection import ingest
    from bellm_search.dedup.job import resolve_scoring, run_dedup
    from bellm_search.dedup.keep import parse_keep
    from bellm_search.errors import ConfigError

    if emit_ not in ("clusters", "keep", "remove", "pairs"):
        raise ConfigError(f"--emit {emit_!r}: use clusters, keep, remove or pairs")
    parse_keep(keep)
    if threshold is not None and not -1.0 <= threshold <= 1.0:
        raise ConfigError("--threshold is a similarity score in [-1, 1]")
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


def eval_dedup(
    pairs: Annotated[str, typer.Argument(help="Labelled pairs: JSONL {text1,text2,label}, twitter-url dir, pit2015 .data, mrpc .txt")],
    fmt: Annotated[str, typer.Option("--format", help="auto | jsonl | twitter-url | pit2015 | mrpc")] = "auto",
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write a precision/recall/F1 curve PNG here.")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Use only the first N pairs.", min=1)] = None,
    lexical_weight: LexicalWeightOpt = None,
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
