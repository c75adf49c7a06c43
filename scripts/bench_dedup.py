"""Duplicate detection: quality vs MinHash/Jaccard on dev pairs, and speed at 155k tweets.

    python scripts/bench_dedup.py quality [--pairs-per-set 2000] [--write-calibration]
    python scripts/bench_dedup.py scale [--vectors .cache/tweets_proxy_vecs.npy] [--sizes 10000,50000,0]

quality: on seeded samples of the three development sets (Twitter URL train, PIT-2015 dev, MRPC
train), average precision and F1 of (a) "bellm": the default pair score, (1-w)*cosine + w*Jaccard
of character 5-grams, with w chosen on these sets, (b) "cosine": our encoder alone, (c) MinHash-LSH
estimated Jaccard (datasketch, 128 permutations) and (d) exact Jaccard, both on character 5-gram
shingles of social-normalised text. F1 is reported at each method's best threshold per set (an
oracle), at ONE threshold per method maximising the mean F1 over the three sets, and (with
--min-precision) at the lowest threshold whose mean precision reaches it -- the default's rule.
A leave-one-set-out table chooses w and the threshold on two sets and scores the third.
--write-calibration stores the default (w, threshold, cosine-only threshold) in the package.

scale: ingest cached vectors (no encoding) into a temporary collection, then time
`find_clusters` (k=10) in a fresh process and report its peak RSS. Reference: exact all-pairs
range search (faiss Flat) at the same threshold; with the mixed score, every pair at or above the
cosine floor, rescored the same way (at 126k tweets ~50M pairs: minutes, and GBs of memory).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
DATA = ROOT.parent / "shared" / "data"
SETS = {"twitter-url": DATA / "twitter-url" / "train", "pit2015": DATA / "pit2015" / "dev.data",
        "mrpc": DATA / "mrpc" / "msr_paraphrase_train.txt"}


# ----------------------------------------------------------------------------- quality
def single_f1_at(scores: dict[str, np.ndarray], labels: dict[str, np.ndarray], t: float) -> dict[str, float]:
    out = {}
    for name in scores:
        pred, y = scores[name] >= t, labels[name] == 1
        tp = (pred & y).sum()
        p, r = tp / max(pred.sum(), 1), tp / max(y.sum(), 1)
        out[name] = float(2 * p * r / max(p + r, 1e-12))
    return out


def precision_threshold(scores: dict[str, np.ndarray], labels: dict[str, np.ndarray], target: float) -> float:
    """Lowest threshold whose precision, averaged over the sets, reaches ``target``: deleting a
    post that is not a duplicate loses data, so a dedup default favours precision."""
    for t in np.unique(np.round(np.concatenate(list(scores.values())), 3)):
        precisions = [((scores[n] >= t) & (labels[n] == 1)).sum() / max((scores[n] >= t).sum(), 1) for n in scores]
        if np.mean(precisions) >= target and all((scores[n] >= t).any() for n in scores):
            return float(t)
    return float(max(s.max() for s in scores.values()))


def single_threshold(scores: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> tuple[float, dict[str, float]]:
    """The one threshold maximising mean F1 over the sets, and the F1 per set there."""
    grid = np.unique(np.round(np.concatenate(list(scores.values())), 3))
    best_t, best_mean, best_f1s = 0.0, -1.0, {}
    for t in grid:
        f1s = {}
        for name in scores:
            pred, y = scores[name] >= t, labels[name] == 1
            tp = (pred & y).sum()
            p, r = tp / max(pred.sum(), 1), tp / max(y.sum(), 1)
            f1s[name] = 2 * p * r / max(p + r, 1e-12)
        if np.mean(list(f1s.values())) > best_mean:
            best_t, best_mean, best_f1s = float(t), float(np.mean(list(f1s.values()))), f1s
    return best_t, best_f1s


def precision_f1(scores: dict[str, np.ndarray], labels: dict[str, np.ndarray], target: float) -> tuple[float, dict[str, float]]:
    t = precision_threshold(scores, labels, target)
    return t, single_f1_at(scores, labels, t)


def choose_weight(cos: dict[str, np.ndarray], jac: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                  target: float | None, floor: float) -> tuple[float, float, float]:
    """(w, threshold, mean F1): the lexical weight on a 0.1 grid (0 < w < 1) whose operating point --
    the precision rule when ``target`` is given, else the max-mean-F1 threshold -- has the best mean F1."""
    from bellm_search.pairs.score import PairScore

    best = (-1.0, 0.0, 0.0)
    for w in np.round(np.arange(0.1, 0.95, 0.1), 2):
        score = PairScore(float(w), floor)
        mixed = {n: score.combine(cos[n], jac[n]) for n in cos}
        t, f1s = precision_f1(mixed, labels, target) if target else single_threshold(mixed, labels)
        mean = float(np.mean(list(f1s.values())))
        if mean > best[0] + 1e-9:
            best = (mean, float(w), t)
    return best[1], best[2], best[0]


def quality(args: argparse.Namespace) -> None:
    from bellm_search.eval.pairs import cosine_scores, plot_curve
    from bellm_search.collection.core import adapter_sha256
    from bellm_search.pairs.score import PairScore
    from bellm_search.encoder.resolve import resolve_config
    from bellm_search.eval.metrics import average_precision, best_f1, jaccard_scores, minhash_scores, read_pairs

    sha = adapter_sha256(resolve_config().adapter)
    cache = ROOT / "runs" / "dedup_scores.npz"
    scores: dict[str, dict[str, np.ndarray]] = {m: {} for m in ("cosine", "minhash", "jaccard")}
    labels: dict[str, np.ndarray] = {}
    pairs_of = {}
    for name, path in SETS.items():
        pairs = read_pairs(path)
        random.Random(args.seed).shuffle(pairs)
        pairs_of[name] = pairs[:args.pairs_per_set]
    reuse = args.reuse_scores and cache.is_file() and str(np.load(cache).get("adapter_sha256", "")) == sha \
        and all(len(np.load(cache)[f"label_{n}"]) == len(pairs_of[n]) for n in SETS)
    if reuse:
        saved = np.load(cache)
        for name in SETS:
            labels[name] = saved[f"label_{name}"]
            for m in scores:
                scores[m][name] = saved[f"{m}_{name}"]
        print(f"scores reused from {cache} (same adapter {sha[:12]}, same samples)")
    else:
        from bellm_search.encoder.encode import Encoder

        encoder = Encoder()
        for name, pairs in pairs_of.items():
            labels[name] = np.asarray([p.label for p in pairs])
            t = time.perf_counter()
            scores["cosine"][name] = cosine_scores(pairs, encoder)
            t_enc = time.perf_counter() - t
            scores["minhash"][name] = minhash_scores(pairs, num_perm=128, n=5)
            scores["jaccard"][name] = jaccard_scores(pairs, n=5)
            print(f"{name}: {len(pairs)} pairs ({labels[name].sum()} positive), encoded in {t_enc:.0f}s", flush=True)
        np.savez(cache, adapter_sha256=sha, **{f"{m}_{n}": scores[m][n] for m in scores for n in SETS},
                 **{f"label_{n}": labels[n] for n in SETS})

    # the default pair score: lexical weight chosen on the three dev sets by the same rule as its threshold
    floor = args.cosine_floor
    w, t_mixed, _ = choose_weight(scores["cosine"], scores["jaccard"], labels, args.min_precision, floor)
    default = PairScore(w, floor)
    # the exact 5-gram Jaccards computed above are the mixed score's lexical part
    scores["bellm"] = {n: default.combine(scores["cosine"][n], scores["jaccard"][n]) for n in SETS}
    for name in SETS:
        plot_curve(scores["bellm"][name], labels[name], ROOT / "docs" / f"dedup_curve_{name}.png",
                   f"{name} (bellm-search default)", xlabel=f"{default.describe()} threshold", xmin=0.0)
    methods = ("bellm", "cosine", "minhash", "jaccard")
    print(f"\nbellm = the default pair score {default.describe()}; cosine = the encoder alone")
    rule = f"mean precision >= {args.min_precision}" if args.min_precision else None
    print(f"\n{'method':<9} {'set':<12} {'AP':>6} {'F1 best':>8} {'at':>7} {'F1 single':>10}" + (f" {'F1 @P-rule':>11}" if rule else ""))
    summary = {}
    for m in methods:
        t_single, f1_single = single_threshold(scores[m], labels)
        t_prec, f1_prec = precision_f1(scores[m], labels, args.min_precision) if rule else (None, {})
        rows = []
        for name in SETS:
            ap = average_precision(scores[m][name], labels[name])
            thr, f1, _, _ = best_f1(scores[m][name], labels[name])
            rows.append((ap, f1, f1_single[name], f1_prec.get(name, np.nan)))
            print(f"{m:<9} {name:<12} {100 * ap:6.1f} {100 * f1:8.1f} {thr:7.3f} {100 * f1_single[name]:10.1f}"
                  + (f" {100 * f1_prec[name]:11.1f}" if rule else ""))
        mean = np.mean(rows, axis=0)
        summary[m] = {"threshold": t_single, "ap": mean[0], "f1_best": mean[1], "f1_single": mean[2],
                      "prec_threshold": t_prec, "f1_prec": mean[3]}
        print(f"{m:<9} {'MEAN':<12} {100 * mean[0]:6.1f} {100 * mean[1]:8.1f} {'':>7} {100 * mean[2]:10.1f}"
              + (f" {100 * mean[3]:11.1f}" if rule else "")
              + f"   (single threshold {t_single:.3f}" + (f"; P-rule threshold {t_prec:.3f})" if rule else ")"))
    key = "f1_prec" if rule else "f1_single"
    gap = 100 * (summary["bellm"][key] - max(summary["minhash"][key], summary["jaccard"][key]))
    print(f"\nour default beats the best of MinHash/Jaccard by {gap:+.1f} F1 points on average "
          f"at {'the precision rule' if rule else 'one max-F1 threshold per method'} (target >= +10)")
    # leave-one-set-out: choose w and the threshold on two sets, score the third
    print("\nleave-one-set-out (settings chosen on the other two sets, F1 on the held-out one):")
    for m in ("bellm", "cosine", "jaccard"):
        f1s = []
        for held in SETS:
            rest = [n for n in SETS if n != held]
            sub = {n: labels[n] for n in rest}
            if m == "bellm":
                w_h, t_h, _ = choose_weight({n: scores["cosine"][n] for n in rest}, {n: scores["jaccard"][n] for n in rest},
                                            sub, args.min_precision, floor)
                held_scores = PairScore(w_h, floor).combine(scores["cosine"][held], scores["jaccard"][held])
            else:
                part = {n: scores[m][n] for n in rest}
                t_h = precision_threshold(part, sub, args.min_precision) if rule else single_threshold(part, sub)[0]
                held_scores = scores[m][held]
            f1s.append(single_f1_at({held: held_scores}, {held: labels[held]}, t_h)[held])
        print(f"  {m:<9} " + "  ".join(f"{n} {100 * f:.1f}" for n, f in zip(SETS, f1s)) + f"   mean {100 * np.mean(f1s):.1f}")
    if args.write_calibration:
        threshold = summary["bellm"]["prec_threshold"] if rule else summary["bellm"]["threshold"]
        cos_threshold = summary["cosine"]["prec_threshold"] if rule else summary["cosine"]["threshold"]
        out = {"threshold": round(threshold, 3), "lexical_weight": w, "cosine_floor": floor,
               "cosine_threshold": round(cos_threshold, 3),
               "chosen_by": f"{'lowest threshold with ' + rule if rule else 'max mean F1'} (lexical weight: the 0.1-grid "
                            f"value with the best mean F1 there) over seeded samples of twitter-url train, pit2015 dev, mrpc train",
               "pairs_per_set": args.pairs_per_set, "seed": args.seed, "adapter_sha256": sha,
               "mean_f1_at_threshold": round(float(summary["bellm"][key]), 4), "mean_ap": round(float(summary["bellm"]["ap"]), 4)}
        (ROOT / "bellm_search" / "calibration.json").write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote bellm_search/calibration.json: lexical weight {w}, threshold {out['threshold']}, "
              f"cosine-only threshold {out['cosine_threshold']}")


# ----------------------------------------------------------------------------- scale
def _dedup_worker(path: str, threshold: float, weight: float, queue: mp.Queue) -> None:
    from bellm_search.collection.core import Collection
    from bellm_search.pairs.score import PairScore
    from bellm_search.dedup.job import default_score, find_clusters

    score = PairScore(weight, default_score().cosine_floor)
    t = time.perf_counter()
    with Collection.open(Path(path), readonly=True) as coll:
        t_open = time.perf_counter() - t
        t = time.perf_counter()
        found, live, _ = find_clusters(coll, threshold, k=10, score=score)
        seconds = time.perf_counter() - t
        pi, pj, _ = found.pairs
        cluster_of = np.full(int(live.max()) + 1, -1)
        for c, members in enumerate(found.members):
            cluster_of[members] = c
        queue.put({"seconds": seconds, "open_seconds": t_open, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                   "pairs": np.stack([pi, pj], 1), "cluster_of": cluster_of, "clusters": len(found.members),
                   "index": coll.load_index().describe()["factory"]})


def exact_pairs(vecs: np.ndarray, ids: np.ndarray, threshold: float) -> tuple[np.ndarray, float]:
    """All pairs with cosine >= threshold (faiss Flat range search)."""
    import faiss

    t = time.perf_counter()
    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(vecs)
    out = []
    for s in range(0, len(vecs), 4096):
        lims, _, I = index.range_search(vecs[s:s + 4096], threshold)
        q = np.repeat(np.arange(s, s + len(lims) - 1), np.diff(lims.astype(np.int64)))
        keep = I > q
        out.append(np.stack([ids[q[keep]], ids[I[keep]]], 1))
    return np.concatenate(out), time.perf_counter() - t


def exact_mixed_pairs(vecs: np.ndarray, ids: np.ndarray, texts: dict[int, str], threshold: float,
                      score) -> tuple[np.ndarray, float]:
    """The mixed score's exact reference: every pair with cosine >= the candidate threshold (faiss
    Flat range search), rescored with the texts; the pairs scoring >= threshold."""
    import faiss

    from bellm_search.pairs.score import pair_jaccards

    t = time.perf_counter()
    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(vecs)
    cache: dict = {}
    out = []
    for s in range(0, len(vecs), 1024):
        lims, D, I = index.range_search(vecs[s:s + 1024], score.candidate_threshold(threshold))
        q = np.repeat(np.arange(s, s + len(lims) - 1), np.diff(lims.astype(np.int64)))
        keep = I > q
        a, b, d = ids[q[keep]], ids[I[keep]], D[keep]
        mixed = score.combine(d, pair_jaccards([texts[i] for i in a.tolist()], [texts[j] for j in b.tolist()],
                                               score.shingle, cache=cache))
        ok = mixed >= threshold
        out.append(np.stack([a[ok], b[ok]], 1))
    return np.concatenate(out), time.perf_counter() - t


def scale(args: argparse.Namespace) -> None:
    from embed_tweets import tweets

    from bellm_search.collection.core import Collection
    from bellm_search.dedup.job import resolve_scoring
    from bellm_search.config import IndexConfig
    from bellm_search.encoder.resolve import resolve_config

    vecs_all = np.load(args.vectors).astype(np.float32)
    texts = tweets()[:len(vecs_all)]
    threshold, score = resolve_scoring(args.threshold, args.lexical_weight)
    reference = "exact all-pairs range search" + (" at the cosine floor + the same rescoring" if score.lexical else "")
    print(f"vectors {args.vectors} {vecs_all.shape}, score {score.describe()} >= {threshold:.3f}, k=10; reference: {reference}")
    print(f"{'n':>8} {'index':<16} {'dedup s':>8} {'peak MB':>8} {'exact s':>8} {'speed-up':>8} {'pairs':>8} {'exact':>8} {'raw rec':>8} {'clust rec':>9}")
    for n in [int(x) or len(vecs_all) for x in args.sizes.split(",")]:
        tmp = Path(tempfile.mkdtemp(prefix="bench-dedup-"))
        try:
            coll = Collection.create(tmp / "c", resolve_config(), vecs_all.shape[1], IndexConfig(), normalize_social=True)
            coll.ingest(({"id": str(i), "text": t} for i, t in enumerate(texts[:n])), vectors=vecs_all[:n], chunk_size=8192)
            ids, vecs = map(np.concatenate, zip(*coll.store.iter_vectors()))
            text_of = {int(i): coll.store.get_doc(int(i))["text"] for i in ids.tolist()} if score.lexical else {}
            coll.close()
            queue: mp.Queue = mp.get_context("spawn").Queue()
            proc = mp.get_context("spawn").Process(target=_dedup_worker, args=(str(tmp / "c"), threshold, score.lexical_weight, queue))
            proc.start()
            res = queue.get()
            proc.join()
            if score.lexical:
                ex, t_exact = exact_mixed_pairs(vecs, ids, text_of, threshold, score)
            else:
                ex, t_exact = exact_pairs(vecs, ids, threshold)
            ours = {tuple(p) for p in res["pairs"].tolist()}
            raw = np.mean([tuple(p) in ours for p in ex.tolist()]) if len(ex) else 1.0
            co = res["cluster_of"]
            clustered = np.mean((co[ex[:, 0]] == co[ex[:, 1]]) & (co[ex[:, 0]] >= 0)) if len(ex) else 1.0
            print(f"{n:>8} {res['index']:<16} {res['seconds']:8.1f} {res['rss_mb']:8.0f} {t_exact:8.1f} "
                  f"{t_exact / res['seconds']:7.1f}x {len(ours):>8} {len(ex):>8} {raw:8.4f} {clustered:9.4f}", flush=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["quality", "scale", "all"], nargs="?", default="all")
    ap.add_argument("--pairs-per-set", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write-calibration", action="store_true")
    ap.add_argument("--min-precision", type=float, default=None,
                    help="calibrate to the lowest threshold with this mean precision instead of max mean F1")
    ap.add_argument("--cosine-floor", type=float, default=None, help="default: bellm_search.dedup.COSINE_FLOOR")
    ap.add_argument("--reuse-scores", action="store_true",
                    help="reuse runs/dedup_scores.npz when it holds the same adapter's scores of the same samples")
    ap.add_argument("--vectors", default=str(ROOT / ".cache" / "tweets_proxy_vecs.npy"))
    ap.add_argument("--sizes", default="10000,50000,0", help="0 = all vectors")
    ap.add_argument("--threshold", type=float, default=None)
    ap.add_argument("--lexical-weight", type=float, default=None, help="scale: 0 = pure cosine (default: calibrated)")
    args = ap.parse_args()
    if args.cosine_floor is None:
        from bellm_search.pairs.score import COSINE_FLOOR

        args.cosine_floor = COSINE_FLOOR
    if args.part in ("quality", "all"):
        quality(args)
    if args.part in ("scale", "all"):
        scale(args)


if __name__ == "__main__":
    main()
