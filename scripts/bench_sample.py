"""Pair precision / recall on the shipped sample corpus (285 posts with planted duplicates).

    python scripts/bench_sample.py

Every pair of the 285 posts (40,470) is scored by the default encoder's cosine and by the default
dedup pair score (cosine mixed with character 5-gram Jaccard, bellm_search/calibration.json); a
pair is a true duplicate when both posts are in one group of ``sample_posts_truth.json`` (planted
exact copies, retweets, edits and paraphrases). Prints precision / recall at several thresholds.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / "bellm_search" / "data"


def main() -> None:
    from bellm_search.pairs.score import pair_jaccards
    from bellm_search.dedup.job import default_cosine_threshold, default_score, default_threshold
    from bellm_search.encoder.encode import Encoder

    posts = [json.loads(line) for line in (DATA / "sample_posts.jsonl").read_text().splitlines() if line.strip()]
    pos = {p["id"]: n for n, p in enumerate(posts)}
    truth = set()
    for group in json.loads((DATA / "sample_posts_truth.json").read_text()):
        for a, b in itertools.combinations(sorted(pos[i] for i in group["ids"]), 2):
            truth.add((a, b))
    vecs = Encoder().encode([p["text"] for p in posts])
    i, j = np.triu_indices(len(posts), 1)
    cos = (vecs[i] * vecs[j]).sum(1)
    y = np.array([(a, b) in truth for a, b in zip(i.tolist(), j.tolist())])
    jac = pair_jaccards([posts[a]["text"] for a in i], [posts[b]["text"] for b in j])
    score = default_score()
    mixed = score.combine(cos, jac)
    print(f"{len(posts)} posts, {len(y)} pairs, {y.sum()} duplicate pairs")

    def row(name: str, s: np.ndarray, t: float, mark: str = "") -> None:
        pred = s >= t
        tp = (pred & y).sum()
        print(f"  {name:<44} >= {t:.3f}: precision {tp / max(pred.sum(), 1):.2f}  recall {tp / y.sum():.2f}{mark}")

    print("cosine (the encoder alone):")
    for t in sorted({0.72, default_cosine_threshold(), 0.85, 0.95}):
        row("cosine", cos, t, "   <- calibrated cosine-only" if t == default_cosine_threshold() else "")
    print(f"default pair score {score.describe()}:")
    for t in sorted({default_threshold() - 0.05, default_threshold(), default_threshold() + 0.1, default_threshold() + 0.2}):
        row("mixed", mixed, round(t, 3), "   <- calibrated default" if abs(t - default_threshold()) < 1e-9 else "")
    print("character 5-gram Jaccard alone:")
    for t in (0.2, 0.3, 0.5):
        row("jaccard", jac, t)


if __name__ == "__main__":
    main()
