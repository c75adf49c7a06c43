"""``bellm-search label`` (answer the pairs the pair model is least sure about, in the terminal)
and ``bellm-search calibrate`` (refit the pair model on those answers, for this collection)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from bellm_search.cli.options import CollectionOpt, JsonOpt, open_collection
from bellm_search.cli.output import emit, note

LabelsOpt = Annotated[Optional[Path], typer.Option(
    "--labels", "--output", "-o", help="Labels file (JSONL, appended; default: labels.jsonl in the collection).")]
ANSWERS = {"d": True, "y": True, "n": False, "s": None}


def _show(pair: dict[str, Any], n: int) -> None:
    feats = "  ".join(f"{k} {v:.2f}" for k, v in pair["features"].items() if v is not None)
    note(f"\n[{n}] P(duplicate) {pair['probability']:.2f}   {feats}")
    note(f"  A {pair['a']}: {pair['text_a']}")
    note(f"  B {pair['b']}: {pair['text_b']}")


def _ask() -> str:
    while True:
        try:
            answer = typer.prompt("duplicate? [d]uplicate / [n]ot / [s]kip / [q]uit", default="s", err=True)
        except (EOFError, typer.Abort):
            return "q"
        answer = answer.strip().lower()[:1]
        if answer in ANSWERS or answer == "q":
            return answer
        note("answer d, n, s or q")


def _refit(coll: Any, path: Path, decision: Any) -> Any:
    """The decision refitted on the answers so far (in memory), once there are enough."""
    from bellm_search.dedup.calibration import Decision
    from bellm_search.errors import ConfigError
    from bellm_search.eval.calibrate import fit_collection

    try:
        model, _ = fit_collection(coll, path)
    except ConfigError:
        return decision
    return Decision(model, model.threshold, "collection", model.cosine_floor)


def label(
    collection: CollectionOpt = None,
    labels: LabelsOpt = None,
    batch: Annotated[int, typer.Option("--batch", help="Pairs per round; the model is refitted on the answers after each.", min=1)] = 10,
    neighbours: Annotated[int, typer.Option("--neighbours", help="Nearest neighbours searched per document for candidate pairs.", min=1, max=1000)] = 10,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Stop after this many answers.", min=1)] = None,
) -> None:
    """Label near-duplicate candidates the pair model is least sure about: d(uplicate), n(ot), s(kip), q(uit).
    Each answer is appended to the labels file at once; then run `bellm-search calibrate`."""
    from bellm_search.dedup.calibration import decision_for
    from bellm_search.dedup.labels import append_label, labels_path, pairs_to_label

    with open_collection(collection, readonly=True) as coll:
        path = labels or labels_path(coll)
        decision, answered, rounds = decision_for(coll, strict=False), 0, 0
        while limit is None or answered < limit:
            todo = pairs_to_label(coll, path, n=batch, k=neighbours, decision=decision, seed=rounds)
            if not todo:
                note("no unlabelled candidate pairs left")
                break
            for pair in todo:
                _show(pair, answered + 1)
                answer = _ask()
                if answer == "q":
                    return _done(coll.path, path, answered)
                append_label(path, pair["a"], pair["b"], ANSWERS[answer], probability=pair["probability"],
                             cosine=pair["cosine"], by="terminal")
                answered += 1
                if limit is not None and answered >= limit:
                    return _done(coll.path, path, answered)
            rounds += 1
            decision = _refit(coll, path, decision)
        _done(coll.path, path, answered)


def _done(collection: Path, path: Path, answered: int) -> None:
    note(f"\n{answered} answers appended to {path}; next: bellm-search calibrate -c {collection} --labels {path}")


def calibrate(
    collection: CollectionOpt = None,
    labels: LabelsOpt = None,
    folds: Annotated[int, typer.Option("--folds", help="Cross-validation folds over your labels.", min=2)] = 5,
    as_json: JsonOpt = False,
) -> None:
    """Refit the duplicate pair model on the dev pairs plus your labels (weighted up) and store it in the
    collection: dedup, ingest and the server use it from then on."""
    from bellm_search.dedup.labels import labels_path
    from bellm_search.eval.calibrate import calibrate_collection

    with open_collection(collection) as coll:
        path = labels or labels_path(coll)
        report = calibrate_collection(coll, path, folds)
    for problem in report["problems"]:
        note(f"note: {problem}")
    if not report["dev_pairs"]:
        note("note: the shipped dev pairs were encoded with another encoder: fitted on your labels alone")
    cv = report["cv"]
    emit(report, as_json, f"{report['labels']} labels ({report['duplicates']} duplicates) + {report['dev_pairs']} dev pairs: "
                          f"threshold P(duplicate) >= {report['threshold']:.3f}; cross-validated on your labels "
                          f"P {cv['precision'] * 100:.1f} R {cv['recall'] * 100:.1f} F1 {cv['f1'] * 100:.1f}; -> {report['path']}")
