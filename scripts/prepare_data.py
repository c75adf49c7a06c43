"""Every training source of bellm-search as JSONL, in one deterministic run (same bytes every run).

Sources (../shared/data; the protocol in docs/training.md: never MRPC train, never STS-B train):

- ``nli.jsonl``: SNLI dev+test (SentEval format) and the 10k MultiNLI pairs of mnli-taxinli,
  grouped by premise: entailment -> positive, contradiction -> hard negative (cycled when a
  premise has fewer contradictions than entailments); entailment-only premises give
  (anchor, positive) rows; neutral dropped.
- ``twitter_url.jsonl``: Twitter-URL train minus the calibration slice (eval/splits.py), grouped
  by the first tweet: paraphrases -> positives, labelled non-paraphrases of the same URL -> hard
  negatives (cycled); anchors with no paraphrase give no row.
- ``twitter_url_strict.jsonl``: the same without any pair that shares a text with the calibration
  slice (the first tweets recur across pairs, so the pair-level split leaks texts; this variant
  measures how much that flatters the calibration-slice score).
- ``twitter_url_scored.jsonl``: every non-calibration pair as {text1, text2, score 0/1}.
- ``dev/``: the model-selection sets, never trained on: ``twitter_url_calibration.jsonl`` (the
  calibration slice), ``pit2015.jsonl`` (PIT-2015 dev, debatable votes dropped), ``mrpc_train.jsonl``
  (labelled pairs {text1, text2, label}) and ``stsb.jsonl`` (STS-B dev, {text1, text2, score}).

Rows are de-duplicated per file, in first-seen order. Counts go to stderr and ``manifest.json``.

    python scripts/prepare_data.py [--data ../shared/data] [--out runs/data]
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
from collections import OrderedDict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bellm_search.eval.datasets import Pair, read_pairs, read_sts  # noqa: E402
from bellm_search.eval.splits import calibration_mask  # noqa: E402

Triple = tuple[str, str, str]  # (anchor, other, "pos" | "neg")


def clean(text: str) -> str:
    return " ".join(text.split())


def snli_pairs(folder: Path) -> list[Triple]:
    """(premise, hypothesis, label) from the SentEval files s1.*, s2.*, labels.* (dev, test)."""
    out: list[Triple] = []
    for split in ("dev", "test"):
        cols = [(folder / f"{name}.{split}").read_text(encoding="utf-8").splitlines() for name in ("s1", "s2", "labels")]
        if len({len(c) for c in cols}) != 1:
            raise SystemExit(f"{folder}: s1/s2/labels.{split} have different lengths")
        out += [(clean(a), clean(b), lab.strip()) for a, b, lab in zip(*cols)]
    return [(a, b, NLI_LABELS.get(lab, "")) for a, b, lab in out]


def mnli_pairs(path: Path) -> list[Triple]:
    csv.field_size_limit(1 << 24)
    with path.open(encoding="utf-8", newline="") as fh:
        rows = csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [(clean(r["prem"]), clean(r["hyp"]), NLI_LABELS.get(r["label"].strip(), "")) for r in rows]


NLI_LABELS = {"entailment": "pos", "contradiction": "neg"}


def group(pairs: list[Triple]) -> "OrderedDict[str, dict[str, list[str]]]":
    """anchor -> {"pos": [...], "neg": [...]}, first-seen order, no repeats; other labels dropped."""
    groups: OrderedDict[str, dict[str, list[str]]] = OrderedDict()
    for anchor, other, kind in pairs:
        if kind not in ("pos", "neg") or not anchor or not other or anchor == other:
            continue
        slot = groups.setdefault(anchor, {"pos": [], "neg": []})[kind]
        if other not in slot:
            slot.append(other)
    return groups


def triples(pairs: list[Triple]) -> list[dict[str, str]]:
    """One row per (anchor, positive); the anchor's negatives cycled as hard negatives."""
    rows, seen = [], set()
    for anchor, g in group(pairs).items():
        for i, pos in enumerate(g["pos"]):
            row = {"anchor": anchor, "positive": pos}
            if g["neg"]:
                row["negative"] = g["neg"][i % len(g["neg"])]
            key = (anchor, pos, row.get("negative", ""))
            if key not in seen:
                seen.add(key)
                rows.append(row)
    return rows


def twitter_split(folder: Path) -> tuple[list[Pair], list[Pair]]:
    """(training pairs, calibration pairs) of Twitter-URL train, in file order."""
    pairs = read_pairs(folder, "twitter-url")
    mask = calibration_mask(len(pairs))
    return [p for p, m in zip(pairs, mask) if not m], [p for p, m in zip(pairs, mask) if m]


def as_triples(pairs: list[Pair]) -> list[Triple]:
    return [(clean(p.text1), clean(p.text2), "pos" if p.label else "neg") for p in pairs]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return hashlib.md5(data).hexdigest()


def describe(rows: list[dict]) -> dict[str, int]:
    texts = {v for r in rows for k, v in r.items() if k in ("anchor", "positive", "negative", "text1", "text2")}
    return {"rows": len(rows), "with_negative": sum("negative" in r for r in rows), "distinct_texts": len(texts)}


def build(data: Path) -> dict[str, list[dict]]:
    nli = snli_pairs(data / "snli") + mnli_pairs(data / "mnli-taxinli" / "taxinli10k.tsv")
    train, cal = twitter_split(data / "twitter-url" / "train")
    cal_texts = {t for p in cal for t in (p.text1, p.text2)}
    strict = [p for p in train if p.text1 not in cal_texts and p.text2 not in cal_texts]
    return {
        "nli": triples(nli),
        "twitter_url": triples(as_triples(train)),
        "twitter_url_strict": triples(as_triples(strict)),
        "twitter_url_scored": [{"text1": p.text1, "text2": p.text2, "score": float(p.label)} for p in train],
        "dev/twitter_url_calibration": labelled(cal),
        "dev/pit2015": labelled(read_pairs(data / "pit2015" / "dev.data", "pit2015")),
        "dev/mrpc_train": labelled(read_pairs(data / "mrpc" / "msr_paraphrase_train.txt", "mrpc")),
        "dev/stsb": [{"text1": p.text1, "text2": p.text2, "score": p.score} for p in read_sts(data / "stsb" / "sts-dev.csv")],
    }


def labelled(pairs: list[Pair]) -> list[dict]:
    return [{"text1": p.text1, "text2": p.text2, "label": p.label} for p in pairs]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "data")
    args = ap.parse_args(argv)
    (args.out / "dev").mkdir(parents=True, exist_ok=True)
    manifest = {}
    for name, rows in build(args.data).items():
        md5 = write_jsonl(args.out / f"{name}.jsonl", rows)
        manifest[name] = {**describe(rows), "md5": md5}
        print(f"{name}.jsonl: " + ", ".join(f"{k} {v}" for k, v in manifest[name].items()), file=sys.stderr)
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
