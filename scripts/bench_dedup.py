"""Duplicate detection: the pair model on the dev pairs, and dedup speed at scale.

    python scripts/bench_dedup.py quality [--write-calibration] [--adapter DIR] [--minhash]
    python scripts/bench_dedup.py scale [--synthetic 126000] [--vectors FILE.npy]

quality: on the three development sets (the Twitter-URL calibration slice of train, PIT-2015 dev,
MRPC train; features cached in runs/ by adapter sha256, so only the first run encodes), average
precision and F1 at the precision rule (the lowest threshold whose mean precision over the sets
reaches 0.75) of (a) "model": the logistic pair model over the shipped features, (b) "mixed": the
previous default 0.7*cosine + 0.3*5-gram Jaccard with its 0.65 cosine floor, (c) "cosine": the
encoder alone, (d) "jaccard": exact character 5-gram Jaccard, (e) with --minhash, MinHash (128
permutations). Each method's threshold is chosen by the same rule on the same sets. Then the
pair model's feature ablation and a leave-one-set-out table (fit and threshold on two sets, AP and
F1 on the third; "nested": the features too chosen on the two), with where each held-out set's F1
is lost (the weights or the threshold). Without --features, which of the redundant jaccard5 /
containment / length ratio to leave out is chosen by leave-one-set-out (eval/calibrate.py). --write-calibration stores the fitted model (bellm_search/calibration.json) and
the dev pairs' features (bellm_search/data/calibration_dev.npz, for users' `calibrate`).

scale: dedup time and peak RSS against the exact all-pairs reference scored the same way.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
COSINE_FLOOR_DEFAULT = 0.5  # chosen by the floor sweep below (docs/benchmarks.md, ## Dedup)


# ----------------------------------------------------------------------------- quality
def dev_sets(adapter: str | None, limit: int | None = None, device: str | None = None) -> tuple[list, str, dict]:
    from bellm_search.collection.manifest import adapter_sha256, encoder_identity
    from bellm_search.encoder.resolve import resolve_config
    from bellm_search.eval.devsets import load_dev_sets

    config = resolve_config(adapter=adapter, device=device)
    sha = adapter_sha256(config.adapter)

    def encoder():
        from bellm_search.encoder.encode import Encoder

        return Encoder(config)

    t = time.perf_counter()
    sets = load_dev_sets(sha or "none", encoder, limit=limit)
    print(f"dev sets for adapter {str(sha)[:12]} ({time.perf_counter() - t:.0f}s): "
          + ", ".join(f"{s.name} {len(s.y)} pairs ({s.y.sum()} duplicates)" for s in sets), flush=True)
    return sets, sha, encoder_identity(config)


def method_scores(sets: list, method: str, floor: float) -> list[np.ndarray]:
    """Each set's scores under a baseline method (features: FEATURES columns)."""
    from bellm_search.pairs.features import FEATURES

    cos = [s.X[:, FEATURES.index("cosine")] for s in sets]
    jac = [s.X[:, FEATURES.index("jaccard5")] for s in sets]
    if method == "cosine":
        return cos
    if method == "jaccard":
        return jac
    if method == "mixed":  # the previous default: 0.7 cosine + 0.3 Jaccard above its 0.65 floor, cosine - 1 below
        return [np.where(c >= 0.65, 0.7 * c + 0.3 * j, c - 1.0) for c, j in zip(cos, jac)]
    if method == "minhash":
        from bellm_search.eval.pairs import minhash_scores

        return [minhash_scores(s.pairs, num_perm=128, n=5) for s in sets]
    raise ValueError(method)


def print_row(name: str, res: dict) -> None:
    per = "  ".join(f"{n} {100 * v['ap']:5.1f}/{100 * v['f1']:5.1f}" for n, v in res["sets"].items())
    print(f"{name:<22} AP/F1: {per}   MEAN AP {100 * res['mean']['ap']:5.1f}  F1 {100 * res['mean']['f1']:5.1f}"
          f"  (P {100 * res['mean']['precision']:4.1f} R {100 * res['mean']['recall']:4.1f}) at {res['threshold']:.3f}")


def quality(args: argparse.Namespace) -> None:
    from bellm_search.eval.calibrate import (choose_features, evaluate, fit, model_scores, precision_threshold,
                                             save_dev_features, shipped_calibration)
    from bellm_search.pairs.features import FEATURES

    sets, sha, identity = dev_sets(args.adapter, args.limit, args.device)
    names = [s.name for s in sets]
    labels = [s.y for s in sets]
    print(f"\nprecision rule: mean precision >= {args.min_precision}; cosine floor {args.cosine_floor}")
    if args.features:
        shipped = tuple(args.features.split(","))
    else:
        shipped, options = choose_features(sets, FEATURES, args.cosine_floor, args.min_precision)
        print("features (leave-one-set-out mean AP / F1 of each option; the best AP + F1 is shipped):")
        for opt, m in options.items():
            left = [f for f in FEATURES if f not in opt]
            print(f"  {'without ' + ', '.join(left) if left else 'all':<26} {100 * m['ap']:5.1f} / {100 * m['f1']:5.1f}"
                  + ("   <- chosen" if opt == shipped else ""))
    model = fit(sets, shipped, args.cosine_floor, args.min_precision)
    print_row("model", evaluate(model_scores(model, sets), labels, model.threshold, names))
    for method in ("mixed", "cosine", "jaccard") + (("minhash",) if args.minhash else ()):
        scores = method_scores(sets, method, args.cosine_floor)
        print_row(method, evaluate(scores, labels, precision_threshold(scores, labels, args.min_precision), names))
    print("\ncosine floor (the candidate-search bound; pairs below it are never duplicates):")
    for floor in (0.5, 0.55, 0.6, 0.65, 0.7):
        m = fit(sets, shipped, floor, args.min_precision)
        print_row(f"  floor {floor:.2f}", evaluate(model_scores(m, sets), labels, m.threshold, names))
    print("\nfeature ablation (model without one feature; last: without the text-only features):")
    from bellm_search.pairs.features import TEXT_FEATURES

    for drop in list(shipped[1:]) + [tuple(TEXT_FEATURES)]:
        sub = tuple(f for f in shipped if f != drop and f not in (drop if isinstance(drop, tuple) else ()))
        m = fit(sets, sub, args.cosine_floor, args.min_precision)
        print_row(f"  - {drop}", evaluate(model_scores(m, sets), labels, m.threshold, names))
    loso_report(sets, model, shipped, args, nested=not args.features)
    print(f"\nweights: " + ", ".join(f"{f} {w:.2f}" for f, w in zip(model.features, model.weights))
          + f", bias {model.bias:.2f}; threshold P >= {model.threshold:.3f}; candidate cosine >= {model.candidate_cosine():.3f}; "
          f"cosine-only threshold {model.cosine_threshold:.3f}")
    if args.plots:
        from bellm_search.eval.pairs import plot_curve

        for s, sc in zip(sets, model_scores(model, sets)):
            plot_curve(sc, s.y, ROOT / "docs" / f"dedup_curve_{s.name}.png", f"{s.name} (pair model)",
                       xlabel="P(duplicate) threshold", xmin=0.0, mark=model.threshold)
    if args.write_calibration:
        from bellm_search._fs import write_json_atomic

        cal = shipped_calibration(sets, sha, identity, FEATURES if not args.features else shipped, args.cosine_floor,
                                  args.min_precision, select=not args.features)
        write_json_atomic(ROOT / "bellm_search" / "calibration.json", cal)
        save_dev_features(sets, sha)
        print(f"wrote bellm_search/calibration.json (threshold {cal['threshold']}, mean AP {cal['mean_ap']}, "
              f"F1 {cal['mean_f1_at_threshold']}) and bellm_search/data/calibration_dev.npz for adapter {sha[:12]}")


def loso_report(sets: list, model, shipped: tuple, args: argparse.Namespace, nested: bool) -> None:
    """Leave-one-set-out (fit and threshold on the other sets), nested when the features are
    chosen too, and where each held-out set's F1 is lost: F1 with the model fitted on all sets or
    on the others, each at the threshold the rule picks on all sets or on the others."""
    from bellm_search.eval.calibrate import fit, leave_one_set_out, model_scores, precision_threshold
    from bellm_search.eval.metrics import prf_at
    from bellm_search.pairs.features import FEATURES

    print("\nleave-one-set-out (fit and threshold on the other two sets), AP / F1 (P, R) at threshold:")
    runs = [("model", leave_one_set_out(sets, shipped, args.cosine_floor, args.min_precision))]
    if nested:
        runs.append(("nested", leave_one_set_out(sets, FEATURES, args.cosine_floor, args.min_precision, select=True)))
    for label, loso in runs:
        print(f"  {label:<7} " + "  ".join(f"{s.name} {100 * loso[s.name]['ap']:.1f} / {100 * loso[s.name]['f1']:.1f} "
                                           f"({100 * loso[s.name]['precision']:.0f}, {100 * loso[s.name]['recall']:.0f}) "
                                           f"at {loso[s.name]['threshold']:.3f}" for s in sets)
              + f"   mean AP {100 * loso['mean']['ap']:.1f} F1 {100 * loso['mean']['f1']:.1f}")
    every = model_scores(model, sets)
    print("  held-out F1: all-sets model at all-sets / other-sets threshold; other-sets model at all-sets / other-sets threshold")
    for k, s in enumerate(sets):
        rest = [x for j, x in enumerate(sets) if j != k]
        other = fit(rest, shipped, args.cosine_floor, args.min_precision)
        t_rest = precision_threshold([every[j] for j in range(len(sets)) if j != k], [x.y for x in rest], args.min_precision)
        own = model_scores(other, [s])[0]
        f1 = [prf_at(sc, s.y, t)["f1"] for sc, t in ((every[k], model.threshold), (every[k], t_rest),
                                                      (own, model.threshold), (own, other.threshold))]
        print(f"    {s.name:<12} " + " / ".join(f"{100 * v:.1f}" for v in f1)
              + f"   (thresholds {model.threshold:.3f}, {t_rest:.3f}; other-sets model's own {other.threshold:.3f})")


# ----------------------------------------------------------------------------- scale
SYLLABLES = [c + v for c in "bcdfghklmnprstvz" for v in "aeiou"]


def synthetic(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Tweet-like unit vectors and texts with planted duplicates: 64 topics (random posts of one
    topic at cosine ~0.35), 15 % retweets of an earlier post (cosine ~0.95, the same words after
    social normalisation, some with a comment) and 10 % paraphrases (cosine ~0.88, other words).
    Words are drawn from ~4,000 pseudo-words, so unrelated posts share few of them."""
    rng = np.random.default_rng(seed)
    vocab = ["".join(rng.choice(SYLLABLES, rng.integers(1, 4))) for _ in range(4000)]
    topics = rng.standard_normal((64, dim)).astype(np.float32)
    vecs = 0.73 * topics[rng.integers(0, 64, n)] + rng.standard_normal((n, dim)).astype(np.float32)
    texts = [" ".join(rng.choice(vocab, 12)) for _ in range(n)]
    kind = rng.random(n)
    src = rng.integers(0, np.maximum(np.arange(n), 1))
    for i in np.flatnonzero((kind < 0.25) & (np.arange(n) > 0)):
        s = int(src[i])
        close = 0.33 if kind[i] < 0.15 else 0.54  # cosine ~0.95 / ~0.88
        vecs[i] = vecs[s] + close * rng.standard_normal(dim).astype(np.float32) * np.linalg.norm(vecs[s]) / np.sqrt(dim)
        comment = " ".join(rng.choice(vocab, 3)) + " " if kind[i] < 0.05 else ""
        texts[i] = f"{comment}RT @u{i}: {texts[s]}" if kind[i] < 0.15 else " ".join(rng.choice(vocab, 12))
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return vecs, texts


PHASES = (("bellm_search.dedup.candidates", "_all_vectors", "read vectors"),
          ("bellm_search.dedup.candidates", "_blocks", "k-means+assign"),
          ("bellm_search.dedup.candidates", "_map_blocks", "block products"),
          ("bellm_search.dedup.calibration", "doc_sides", "doc features"),
          ("bellm_search.pairs.features", "pair_features", "pair features"),
          ("bellm_search.dedup.job", "clusters_from_pairs", "union-find"),
          ("bellm_search.dedup.job", "_doc_getter", "keep records"),
          ("bellm_search.dedup.job", "choose_keep", "keep"))


def _time_phases() -> dict[str, float]:
    """Wall seconds per phase of the dedup run (PHASES: module, function, label), by wrapping
    those functions in this benchmark process only."""
    import functools
    import importlib

    spent: dict[str, float] = {}
    for module, name, label in PHASES:
        mod = importlib.import_module(module)
        fn = getattr(mod, name)

        def timed(*a, _fn=fn, _label=label, **kw):
            t = time.perf_counter()
            try:
                return _fn(*a, **kw)
            finally:
                spent[_label] = spent.get(_label, 0.0) + time.perf_counter() - t

        setattr(mod, name, functools.wraps(fn)(timed))
        if module == "bellm_search.pairs.features":  # imported by name into calibration
            setattr(importlib.import_module("bellm_search.dedup.calibration"), name, getattr(mod, name))
    return spent


def peak_rss_mb() -> float:
    """This process's own peak resident memory in MB: VmHWM, which starts afresh at exec (a
    spawned worker's ru_maxrss also counts its parent's memory at the fork: the parent holds all
    synthetic vectors and texts)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _dedup_worker(path: str, pure_cosine: bool, queue) -> None:
    from bellm_search.collection.core import Collection
    from bellm_search.dedup.calibration import decision_for
    from bellm_search.dedup.job import find_clusters

    spent = _time_phases()
    t = time.perf_counter()
    with Collection.open(Path(path), readonly=True) as coll:
        decision = decision_for(coll, pure_cosine=pure_cosine)
        found, live, _ = find_clusters(coll, decision, k=10)
        seconds = time.perf_counter() - t
        pi, pj, _ = found.pairs
        cluster_of = np.full(int(live.max()) + 1, -1)
        for c, members in enumerate(found.members):
            cluster_of[members] = c
        queue.put({"seconds": seconds, "rss_mb": peak_rss_mb(),
                   "pairs": np.stack([pi, pj], 1), "cluster_of": cluster_of, "candidates": len(found.candidates.i),
                   "decision": decision.describe(), "phases": dict(spent)})


def exact_reference(path: Path, pure_cosine: bool, queries: int = 0) -> tuple[np.ndarray, float, float]:
    """Every pair with cosine >= the decision's candidate bound (faiss Flat range search over all
    stored vectors), judged by the same decision: the duplicate pairs, seconds, peak-RSS MB.
    ``queries`` > 0: only that many seeded random vectors are range-searched (against all), and the
    search-and-judge seconds are extrapolated to all vectors (x n / queries)."""
    import faiss

    from bellm_search.collection.core import Collection
    from bellm_search.dedup.calibration import decision_for

    with Collection.open(path, readonly=True) as coll:
        t = time.perf_counter()
        decision = decision_for(coll, pure_cosine=pure_cosine)
        ids, vecs = map(np.concatenate, zip(*coll.store.iter_vectors()))
        index = faiss.IndexFlatIP(vecs.shape[1])
        index.add(vecs)
        rows = np.sort(np.random.default_rng(1).choice(len(vecs), queries, replace=False)) if queries else np.arange(len(vecs))
        setup, t = time.perf_counter() - t, time.perf_counter()
        out = []
        for s in range(0, len(rows), 2048):
            lims, D, I = index.range_search(vecs[rows[s:s + 2048]], decision.candidate_cosine)
            q = np.repeat(rows[s:s + 2048], np.diff(lims.astype(np.int64)))
            keep = I != q if queries else I > q
            a, b, d = np.minimum(ids[q[keep]], ids[I[keep]]), np.maximum(ids[q[keep]], ids[I[keep]]), D[keep]
            X, _ = decision.probabilities(coll, a, b, d)
            dup = decision.judge(X)[1]
            out.append(np.stack([a[dup], b[dup]], 1))
        seconds = setup + (time.perf_counter() - t) * (len(vecs) / len(rows))
        return np.unique(np.concatenate(out), axis=0), seconds, peak_rss_mb()


def build(path: Path, vecs: np.ndarray, texts: list[str]) -> None:
    from bellm_search.collection.core import Collection
    from bellm_search.config import IndexConfig

    coll = Collection.create(path, encoder=_StubEncoder(vecs.shape[1]), normalize_social=True, index_config=IndexConfig())
    coll.ingest(({"id": str(i), "text": t} for i, t in enumerate(texts)), vectors=vecs, chunk_size=8192)
    coll.close()


def scale(args: argparse.Namespace) -> None:
    if args.vectors:
        from embed_tweets import tweets

        vecs_all = np.load(args.vectors).astype(np.float32)
        texts_all = tweets()[:len(vecs_all)]
        what = f"real tweet vectors {args.vectors}"
    else:
        vecs_all, texts_all = synthetic(args.synthetic, 576)
        what = f"synthetic tweet-like vectors (planted duplicates), dim 576"
    sampled = f" from {args.reference_queries} random query vectors (time x n / queries)" if args.reference_queries else ""
    print(f"{what}; k=10; reference: exact all-pairs range search at the candidate bound{sampled}, judged the same way")
    print(f"{'n':>8} {'score':<7} {'dedup s':>8} {'peak MB':>8} {'exact s':>8} {'ref MB':>7} {'speed-up':>8} "
          f"{'cands':>8} {'pairs':>8} {'exact':>8} {'clust rec':>9}")
    for n in [int(x) or len(vecs_all) for x in args.sizes.split(",")]:
        tmp = Path(tempfile.mkdtemp(prefix="bench-dedup-"))
        try:
            build(tmp / "c", vecs_all[:n], texts_all[:n])
            for pure in ([True, False] if args.both else [args.score == "cosine"]):
                queue = mp.get_context("spawn").Queue()
                proc = mp.get_context("spawn").Process(target=_dedup_worker, args=(str(tmp / "c"), pure, queue))
                proc.start()
                res = queue.get()
                proc.join()
                ex, t_exact, ref_mb = _reference_in_process(tmp / "c", pure, min(args.reference_queries, n))
                co = res["cluster_of"]
                together = np.mean((co[ex[:, 0]] == co[ex[:, 1]]) & (co[ex[:, 0]] >= 0)) if len(ex) else 1.0
                print(f"{n:>8} {'cosine' if pure else 'model':<7} {res['seconds']:8.1f} {res['rss_mb']:8.0f} {t_exact:8.1f} "
                      f"{ref_mb:7.0f} {t_exact / res['seconds']:7.1f}x {res['candidates']:>8} {len(res['pairs']):>8} "
                      f"{len(ex):>8} {together:9.4f}", flush=True)
                print("         phases (s): " + ", ".join(f"{k} {v:.2f}" for k, v in res["phases"].items()), flush=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _reference_worker(path: str, pure: bool, queries: int, queue) -> None:
    queue.put(exact_reference(Path(path), pure, queries))


def _reference_in_process(path: Path, pure: bool, queries: int = 0):
    """The reference in its own process too, so its peak RSS is its own."""
    queue = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=_reference_worker, args=(str(path), pure, queries, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


class _StubEncoder:
    """Vectors are given; the manifest records the default encoder's identity."""

    def __init__(self, dim: int) -> None:
        from bellm_search.encoder.resolve import resolve_config

        self.config = resolve_config()
        self.dim = dim
        self.truncated = 0

    def encode(self, texts, **_):  # never called: vectors are passed to ingest
        raise RuntimeError("the benchmark passes vectors; nothing is encoded")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["quality", "scale", "all"], nargs="?", default="quality")
    ap.add_argument("--adapter", default=None, help="quality: the adapter to calibrate (default: the shipped one)")
    ap.add_argument("--limit", type=int, default=None, help="quality: at most this many pairs per dev set")
    ap.add_argument("--device", default=None, help="quality: where to encode the dev pairs (cuda on a GPU machine)")
    ap.add_argument("--features", default=None, help="quality: comma-separated pair features (default: all)")
    ap.add_argument("--min-precision", type=float, default=0.75)
    ap.add_argument("--cosine-floor", type=float, default=COSINE_FLOOR_DEFAULT)
    ap.add_argument("--minhash", action="store_true", help="quality: add the MinHash baseline (slow)")
    ap.add_argument("--plots", action="store_true", help="quality: write docs/dedup_curve_*.png")
    ap.add_argument("--write-calibration", action="store_true")
    ap.add_argument("--vectors", default=None, help="scale: real vectors (.npy, the order of scripts/embed_tweets.py)")
    ap.add_argument("--synthetic", type=int, default=126_000, help="scale: synthetic vectors when --vectors is not given")
    ap.add_argument("--sizes", default="20000,0", help="scale: 0 = all vectors")
    ap.add_argument("--score", choices=["model", "cosine"], default="model")
    ap.add_argument("--both", action="store_true", help="scale: pure cosine and the model")
    ap.add_argument("--reference-queries", type=int, default=0,
                    help="scale: range-search only this many random vectors for the reference (its time extrapolated)")
    args = ap.parse_args()
    if args.part in ("quality", "all"):
        quality(args)
    if args.part in ("scale", "all"):
        scale(args)


if __name__ == "__main__":
    main()
