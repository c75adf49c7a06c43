"""Pair precision / recall on the shipped sample corpus (285 posts with planted duplicates).

    python scripts/bench_sample.py

Every pair of the 285 posts (40,470) is scored by the default encoder's cosine and by the shipped
pair model (bellm_search/calibration.json: P(duplicate) from cosine and lexical features); a pair is
a true duplicate when both posts are in one group of ``sample_posts_truth.json`` (planted exact
copies, retweets, edits and paraphrases). Prints precision / recall at several thresholds.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / "bellm_search" / "data"


def main() -> None:
    from bellm_search.dedup.calibration import SHIPPED, read_calibration
    from bellm_search.encoder.encode import Encoder
    from bellm_search.eval.metrics import prf_at
    from bellm_search.pairs.features import text_pair_features
    from bellm_search.pairs.model import PairModel

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
    model = PairModel.from_dict(read_calibration(SHIPPED)["model"])
    X = text_pair_features(cos, [posts[a]["text"] for a in i], [posts[b]["text"] for b in j], model.features)
    prob = model.score(X)
    print(f"{len(posts)} posts, {len(y)} pairs, {y.sum()} duplicate pairs")

    def row(name: str, s: np.ndarray, t: float, mark: str = "") -> None:
        r = prf_at(s, y, t)
        print(f"  {name:<10} >= {t:.3f}: precision {r['precision']:.2f}  recall {r['recall']:.2f}{mark}")

    print("cosine (the encoder alone):")
    for t in sorted({0.72, model.cosine_threshold, 0.85, 0.95}):
        row("cosine", cos, t, "   <- calibrated cosine-only" if t == model.cosine_threshold else "")
    print("the shipped pair model, P(duplicate):")
    for t in sorted({0.3, model.threshold, 0.7, 0.9}):
        row("model", prob, t, "   <- shipped threshold" if t == model.threshold else "")
    print("character 5-gram Jaccard alone:")
    for t in (0.2, 0.3, 0.5):
        row("jaccard", X[:, model.features.index("jaccard5")] if "jaccard5" in model.features else X[:, 1], t)


if __name__ == "__main__":
    main()
