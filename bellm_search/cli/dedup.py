"""``bellm-search dedup`` and ``eval dedup``."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from bellm_search.cli.options import (
    AdapterOpt, BatchOpt, BidirOpt, DeviceOpt, DTypeOpt, IdFieldOpt, JsonOpt, MaxLenOpt, ModelOpt, NormalizeOpt,
    NprobeOpt, PoolingOpt, PromptOpt, SkipInvalidOpt, TextFieldOpt, encoder_options, open_collection,
)
from bellm_search.cli.output import emit, note, output_file

ScoreOpt = Annotated[str, typer.Option(
    "--score", help="model: the calibrated pair model (cosine + 5-gram Jaccard, containment, length ratio, retweet), "
                    "a probability; cosine: the cosine alone (fast; vectors without text).")]
ThresholdOpt = Annotated[Optional[float], typer.Option(
    "--threshold", "-t", help="Decision threshold: a probability with --score model, a cosine with --score cosine "
                              "(default: the calibrated one; required for an encoder without calibration).")]


def _check_score(score: str, threshold: float | None) -> None:
    from bellm_search.errors import ConfigError

    if score not in ("model", "cosine"):
        raise ConfigError(f"--score {score!r}: use model or cosine")
    if threshold is not None and not -1.0 <= threshold <= 1.0:
        raise ConfigError("--threshold is a probability (--score model) or a cosine in [-1, 1]")


def _decide_early(collection: str | None, corpus: str | None, threshold: float | None, score: str, opts: dict) -> None:
    """Fail before any ingest when no calibration fits the encoder and no threshold is given."""
    from bellm_search.cli.options import collection_path
    from bellm_search.dedup.calibration import decision_for

    path = collection_path(collection) if collection else None
    if path is not None and (path / "manifest.json").is_file():
        with open_collection(collection, readonly=True) as coll:
            decision_for(coll, threshold, pure_cosine=score == "cosine")
    elif threshold is None:
        from types import SimpleNamespace

        from bellm_search.collection.manifest import encoder_identity
        from bellm_search.encoder.resolve import resolve_config

        # the collection the corpus will become: only its encoder identity matters here
        new = SimpleNamespace(path=path or Path("(temporary collection)"),
                              manifest={"encoder": encoder_identity(resolve_config(**opts))})
        decision_for(new, None, pure_cosine=score == "cosine")


def dedup(
    corpus: Annotated[Optional[str], typer.Argument(help="Optional corpus (.jsonl/.txt) to ingest first; else the collection as it is.")] = None,
    collection: Annotated[Optional[str], typer.Option("--collection", "-c", envvar="BELLM_COLLECTION",
        help="Collection (name or path). With CORPUS and no --collection a temporary collection is used.")] = None,
    threshold: ThresholdOpt = None,
    score: ScoreOpt = "model",
    neighbours: Annotated[int, typer.Option("--neighbours", help="Nearest neighbours searched per document for candidate pairs.", min=1, max=1000)] = 10,
    keep: Annotated[str, typer.Option("--keep", help="first | longest | shortest | field:NAME (largest value wins).")] = "first",
    normalize: NormalizeOpt = False,
    nprobe: NprobeOpt = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the result here (JSONL or id list).")] = None,
    emit_: Annotated[str, typer.Option("--emit", help="clusters | keep | remove | pairs (every candidate pair with its features, probability and decision)")] = "clusters",
    report: Annotated[Optional[Path], typer.Option("--report", help="Write an HTML report: cluster sizes, the score histogram with the threshold, clusters near it.")] = None,
    text_field: TextFieldOpt = None, id_field: IdFieldOpt = None, skip_invalid: SkipInvalidOpt = False,
    model: ModelOpt = None, adapter: AdapterOpt = None, bidirectional_layers: BidirOpt = None,
    pooling: PoolingOpt = None, batch_size: BatchOpt = None, device: DeviceOpt = None, dtype: DTypeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Find near-duplicate clusters in a collection (or in CORPUS, ingested first)."""
    import shutil
    import tempfile

    from bellm_search.cli.collection import ingest
    from bellm_search.dedup.calibration import decision_for
    from bellm_search.dedup.job import EMITS, run_dedup
    from bellm_search.dedup.keep import parse_keep
    from bellm_search.errors import ConfigError

    if emit_ not in EMITS:
        raise ConfigError(f"--emit {emit_!r}: use {', '.join(EMITS)}")
    parse_keep(keep)
    _check_score(score, threshold)
    output_file(output)
    output_file(report)
    opts = encoder_options(model, adapter, bidirectional_layers, pooling, None, None, batch_size, device, dtype)
    _decide_early(collection, corpus, threshold, score, opts)
    temp = tempfile.mkdtemp(prefix="bellm-dedup-") if corpus and not collection else None
    target = str(Path(temp) / "collection") if temp else collection
    try:
        if corpus:
            ingest(corpora=[corpus], collection=target, text_field=text_field, id_field=id_field,
                   skip_invalid=skip_invalid, near_duplicate_threshold=None, normalize=normalize, chunk_size=2048,
                   from_embeddings=None, engine="local", address=None, num_encoders=1, gpus_per_encoder=0.0,
                   **opts, prompt=None, max_length=None, no_wait=False, as_json=False)
        with open_collection(target, **({"device": device} if device else {})) as coll:
            decision = decision_for(coll, threshold, pure_cosine=score == "cosine")
            result = run_dedup(coll, decision, neighbours, keep, nprobe, output, emit_, report)  # type: ignore[arg-type]
    finally:
        if temp:
            shutil.rmtree(temp, ignore_errors=True)
    note(f"{result.documents} documents: {result.clusters} clusters, {result.removed} duplicates to remove "
         f"({result.removed_exact} exact, {result.removed_near} near) at {result.decision} in {result.seconds:.1f}s"
         + (f"; {emit_} -> {output}" if output else "") + (f"; report -> {report}" if report else ""))
    emit(result.to_dict(), as_json)


def eval_dedup(
    pairs: Annotated[str, typer.Argument(help="Labelled pairs: JSONL {text1,text2,label}, twitter-url dir, pit2015 .data, mrpc .txt")],
    fmt: Annotated[str, typer.Option("--format", help="auto | jsonl | twitter-url | pit2015 | mrpc")] = "auto",
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write a precision/recall/F1 curve PNG here.")] = None,
    scores: Annotated[Optional[Path], typer.Option("--scores", help="Write each pair's features, score and decision at the shipped threshold here (JSONL).")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Use only the first N pairs.", min=1)] = None,
    score: ScoreOpt = "model",
    model: ModelOpt = None, adapter: AdapterOpt = None, bidirectional_layers: BidirOpt = None,
    pooling: PoolingOpt = None, prompt: PromptOpt = None, max_length: MaxLenOpt = None,
    batch_size: BatchOpt = None, device: DeviceOpt = None, dtype: DTypeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Score labelled pairs as dedup does: AP, P/R/F1 at the shipped threshold and over thresholds."""
    from bellm_search.eval.pairs import evaluate_pairs

    _check_score(score, None)
    output_file(scores)
    output_file(plot)
    opts = encoder_options(model, adapter, bidirectional_layers, pooling, prompt, max_length, batch_size, device, dtype)
    report = evaluate_pairs(pairs, fmt, opts, plot=plot, limit=limit, pure_cosine=score == "cosine", scores_out=scores)
    if as_json:
        emit(report, True)
        return
    _print_eval(report)
    if plot:
        note(f"plot -> {plot}")
    if scores:
        note(f"scores -> {scores}")


def _print_eval(report: dict[str, Any]) -> None:
    typer.echo(f"pairs {report['pairs']} (positive {report['positives']})  AP {report['ap'] * 100:.1f}  "
               f"best F1 {report['f1'] * 100:.1f} at {report['score']} >= {report['threshold']:.3f} "
               f"(P {report['precision'] * 100:.1f}, R {report['recall'] * 100:.1f})")
    shipped = report.get("shipped")
    if shipped:
        typer.echo(f"at the shipped threshold {shipped['threshold']:.3f}: P {shipped['precision'] * 100:.1f}  "
                   f"R {shipped['recall'] * 100:.1f}  F1 {shipped['f1'] * 100:.1f}")
    else:
        note("no shipped calibration fits this encoder: scored by cosine, no shipped threshold")
    for row in report["curve"]:
        typer.echo(f"  t={row['threshold']:.2f}  P={row['precision'] * 100:5.1f}  R={row['recall'] * 100:5.1f}  F1={row['f1'] * 100:5.1f}")
