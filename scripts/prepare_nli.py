"""Build (anchor, positive, hard-negative) NLI triples as JSONL for `bellm-search train`.

Sources: ../shared/data/snli (SentEval format, dev+test) and ../shared/data/mnli-taxinli
(taxinli10k.tsv). Pairs are grouped by premise: entailment hypotheses are positives,
contradiction hypotheses hard negatives (cycled when there are fewer of them); a premise with
entailments but no contradiction gives (anchor, positive) rows. Neutral pairs are dropped.
Output order is deterministic (first-seen premise order, SNLI before MNLI) and rows are
de-duplicated. Counts go to stderr.

    python scripts/prepare_nli.py [--data ../shared/data] [--output runs/nli_triples.jsonl]
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import OrderedDict
from pathlib import Path

LABELS = ("entailment", "contradiction")


def clean(text: str) -> str:
    return " ".join(text.split())


def snli_pairs(folder: Path) -> list[tuple[str, str, str]]:
    """(premise, hypothesis, label) from the SentEval files s1.*, s2.*, labels.* (dev, test)."""
    pairs = []
    for split in ("dev", "test"):
        s1 = (folder / f"s1.{split}").read_text(encoding="utf-8").splitlines()
        s2 = (folder / f"s2.{split}").read_text(encoding="utf-8").splitlines()
        labels = (folder / f"labels.{split}").read_text(encoding="utf-8").splitlines()
        if not len(s1) == len(s2) == len(labels):
            raise SystemExit(f"{folder}: s1/s2/labels.{split} have different lengths")
        pairs += [(clean(a), clean(b), lab.strip()) for a, b, lab in zip(s1, s2, labels)]
    return pairs


def mnli_pairs(path: Path) -> list[tuple[str, str, str]]:
    csv.field_size_limit(1 << 24)
    with path.open(encoding="utf-8", newline="") as fh:
        rows = csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [(clean(r["prem"]), clean(r["hyp"]), r["label"].strip()) for r in rows]


def group(pairs: list[tuple[str, str, str]]) -> "OrderedDict[str, dict[str, list[str]]]":
    groups: OrderedDict[str, dict[str, list[str]]] = OrderedDict()
    for prem, hyp, label in pairs:
        if label not in LABELS or not prem or not hyp:
            continue
        slot = groups.setdefault(prem, {lab: [] for lab in LABELS})[label]
        if hyp not in slot:
            slot.append(hyp)
    return groups


def rows_for(groups: "OrderedDict[str, dict[str, list[str]]]") -> list[dict[str, str]]:
    rows = []
    for prem, g in groups.items():
        pos, neg = g["entailment"], g["contradiction"]
        for i, p in enumerate(pos):
            row = {"anchor": prem, "positive": p}
            if neg:
                row["negative"] = neg[i % len(neg)]
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = Path(__file__).resolve().parents[1]
    ap.add_argument("--data", type=Path, default=root.parent / "shared" / "data")
    ap.add_argument("--output", type=Path, default=root / "runs" / "nli_triples.jsonl")
    args = ap.parse_args(argv)
    sources = {"snli": snli_pairs(args.data / "snli"),
               "mnli-taxinli": mnli_pairs(args.data / "mnli-taxinli" / "taxinli10k.tsv")}
    seen: set[tuple[str, str, str]] = set()
    out: list[dict[str, str]] = []
    for name, pairs in sources.items():
        rows = rows_for(group(pairs))
        fresh = [r for r in rows if (key := (r["anchor"], r["positive"], r.get("negative", ""))) not in seen
                 and not seen.add(key)]
        triples = sum("negative" in r for r in fresh)
        print(f"{name}: {len(pairs)} pairs -> {triples} triples + {len(fresh) - triples} (anchor, positive) rows",
              file=sys.stderr)
        out += fresh
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for r in out:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(args.output)
    texts = {t for r in out for t in r.values()}
    print(f"wrote {len(out)} rows ({sum('negative' in r for r in out)} with a hard negative, "
          f"{len(texts)} distinct sentences) to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
