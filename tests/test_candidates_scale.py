"""The blocked candidate search at scale: row chunks, the per-row cap, threads, split blocks and
half-float vectors give the pairs the plain search gives."""
from __future__ import annotations

import numpy as np
import pytest

import bellm_search.dedup.candidates as cand
from bellm_search.dedup.graph import clusters_from_pairs


def planted(n: int = 3000, dim: int = 32, seed: int = 0, centres: int = 40, spread: float = 0.25):
    """Unit vectors around ``centres`` topics, ids that are not positions."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + spread * rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.arange(n, dtype=np.int64) * 7 + 3, x


def brute_force(ids: np.ndarray, x: np.ndarray, threshold: float) -> set:
    G = x @ x.T
    ti, tj = np.nonzero(np.triu(G >= threshold, 1))
    return set(zip(ids[ti].tolist(), ids[tj].tolist()))


def as_set(pi: np.ndarray, pj: np.ndarray) -> set:
    return set(zip(pi.tolist(), pj.tolist()))


def test_row_chunks_give_the_pairs_of_one_product():
    ids, x = planted()
    whole = cand.blocked_pairs(ids, x, 0.9, k=1000, probes=2, rows=10**6)
    for rows in (3, 64):  # many chunks: the upper triangle of each, the square parts' j > i
        pi, pj, ps = cand.blocked_pairs(ids, x, 0.9, k=1000, probes=2, rows=rows)
        assert as_set(pi, pj) == as_set(*whole[:2]) and len(pi) == len(whole[0]) > 100
        assert np.all(pi < pj)
    G = {(a, b): s for a, b, s in zip(*whole)}
    pos = {int(i): r for r, i in enumerate(ids)}
    assert all(abs(float(x[pos[a]] @ x[pos[b]]) - s) < 1e-5 for (a, b), s in list(G.items())[:200])


def test_crowded_rows_keep_k_each_and_stay_one_cluster():
    """60 near copies of one post (1770 pairs above the bound) and noise: with k=3 each copy keeps
    its 3 best (ranked among all its partners in a block, earlier and later rows alike), so the
    copies stay one cluster with far fewer pairs."""
    rng = np.random.default_rng(1)
    base = rng.standard_normal(32).astype(np.float32)
    copies = base + 0.05 * rng.standard_normal((60, 32)).astype(np.float32)
    x = np.concatenate([copies, rng.standard_normal((400, 32)).astype(np.float32)])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(len(x), dtype=np.int64)
    pi, pj, _ = cand.blocked_pairs(ids, x, 0.9, k=3, probes=2)
    inside = (pi < 60) & (pj < 60)
    # each copy keeps its 3 best in each of its 2 blocks: at most 60 * 3 * 2 of the 1770 pairs
    assert 60 * 3 / 2 <= inside.sum() <= 60 * 3 * 2
    clusters = clusters_from_pairs(ids, pi[inside], pj[inside])
    assert [len(c) for c in clusters] == [60]
    degree = np.bincount(np.concatenate([pi[inside], pj[inside]]), minlength=60)
    assert degree.min() >= 3


def test_threads_give_the_same_pairs():
    """The same pairs in the same order; the cosines agree to float32 rounding (BLAS may block a
    product differently when threads share the cores: last-bit differences on some CPUs)."""
    ids, x = planted(seed=2)
    one = cand.blocked_pairs(ids, x, 0.9, k=10, probes=3, workers=1)
    three = cand.blocked_pairs(ids, x, 0.9, k=10, probes=3, workers=3)
    np.testing.assert_array_equal(one[0], three[0])
    np.testing.assert_array_equal(one[1], three[1])
    np.testing.assert_allclose(one[2], three[2], rtol=0, atol=1e-6)


def test_half_float_vectors_give_the_same_pairs():
    ids, x = planted(seed=3)
    half = x.astype(np.float16)
    full = cand.blocked_pairs(ids, half.astype(np.float32), 0.9, k=10, probes=2)
    got = cand.blocked_pairs(ids, half, 0.9, k=10, probes=2)
    for a, b in zip(full, got):
        np.testing.assert_array_equal(a, b)


def test_split_blocks_keep_the_planted_near_duplicates(monkeypatch):
    """One topic holds most vectors, so with few blocks one block is huge; the size cap splits
    it. Every planted near-duplicate pair (cosine ~0.97) that the uncapped search and brute force
    find is still found, and the split really happened (smaller blocks)."""
    rng = np.random.default_rng(4)
    ids, x = planted(n=3000, centres=3, spread=0.9, seed=4)
    src = rng.choice(3000, 150, replace=False)
    dup = x[src] + 0.03 * rng.standard_normal((150, x.shape[1])).astype(np.float32)
    x = np.concatenate([x, dup / np.linalg.norm(dup, axis=1, keepdims=True)])
    ids = np.arange(len(x), dtype=np.int64) * 5 + 1
    truth = brute_force(ids, x, 0.9)
    planted_pairs = {(int(ids[s]), int(ids[3000 + r])) for r, s in enumerate(src)}
    assert planted_pairs <= truth
    monkeypatch.setattr(cand, "dedup_nlist", lambda n: 4)
    uncapped = as_set(*cand.blocked_pairs(ids, x, 0.9, k=1000, probes=2)[:2])
    sizes = []
    real = cand._kmeans_blocks
    monkeypatch.setattr(cand, "_kmeans_blocks", lambda v, nb, p, seed: sizes.append(len(v)) or real(v, nb, p, seed))
    monkeypatch.setattr(cand, "SPLIT_MIN", 300)
    monkeypatch.setattr(cand, "SPLIT_FACTOR", 1.2)
    blocks = cand._blocks(x, 4, 2, 0)
    assert len(sizes) > 1 and max(len(b.rows) for b in blocks) < max(sizes[1:])  # split, into smaller blocks
    pi, pj, ps = cand.blocked_pairs(ids, x, 0.9, k=1000, probes=2)
    capped = as_set(pi, pj)
    assert planted_pairs <= uncapped and planted_pairs <= capped <= truth
    assert len(capped) >= 0.95 * len(uncapped)
    assert np.all(ps >= 0.9)


def test_iter_vectors_half_floats_are_the_stored_values(tmp_path):
    from bellm_search.store import Store

    rng = np.random.default_rng(5)
    x = rng.standard_normal((50, 8)).astype(np.float32)
    with Store(tmp_path / "meta.lmdb", create=True, dim=8) as s:
        with s.writer() as w:
            for i in range(50):
                w.add_doc(f"s{i}", {"text": f"t{i}"}, text_hash=bytes([i]) * 16, vector=x[i])
        full = np.concatenate([v for _, v in s.iter_vectors(batch=7)])
        half = [v for _, v in s.iter_vectors(batch=7, dtype=np.float16)]
    assert all(v.dtype == np.float16 for v in half)
    np.testing.assert_array_equal(np.concatenate(half).astype(np.float32), full)
    np.testing.assert_allclose(full, x, atol=1e-2)


@pytest.mark.parametrize("threshold", [0.75, 0.5])
def test_block_probes_by_threshold(threshold):
    assert cand.block_probes(threshold) == (2 if threshold >= 0.75 else 3)


def test_doc_sides_take_the_stored_shingles(tmp_path, monkeypatch):
    """With word features the stored 5-gram hashes are used (not recomputed from the text), and
    every side equals the one computed from the text."""
    from types import SimpleNamespace

    import bellm_search.pairs.features as features
    from bellm_search.dedup.calibration import doc_sides
    from bellm_search.pairs.shingles import shingle_hashes, to_bytes
    from bellm_search.store import Store

    texts = ["RT @a: Big quake hits Japan", "Big quake hits Japan!", None, "", "other news today"]
    with Store(tmp_path / "meta.lmdb", create=True, dim=4) as s:
        with s.writer() as w:
            for i, t in enumerate(texts):
                doc = {"text": t} if t is not None else {}
                w.add_doc(f"s{i}", doc, text_hash=bytes([i]) * 16, vector=np.ones(4, np.float32),
                          shingles=to_bytes(shingle_hashes(t)) if t is not None else b"")
        want = [features.doc_side(t) for t in texts]
        monkeypatch.setattr(features, "normalized_shingle_hashes", lambda *a: pytest.fail("shingles recomputed"))
        a, b = doc_sides(SimpleNamespace(store=s), np.arange(5), np.arange(5)[::-1], with_words=True)
    for got, exp in zip(a, want):
        assert (got is None) == (exp is None)
        if exp is not None:
            np.testing.assert_array_equal(got.shingles, exp.shingles)
            np.testing.assert_array_equal(got.words, exp.words)
    assert all(x is y for x, y in zip(b, a[::-1]))


def _child_peak(queue) -> None:
    import bench_dedup

    queue.put(bench_dedup.peak_rss_mb())


def test_bench_peak_rss_is_the_worker_s_own(monkeypatch):
    """scripts/bench_dedup.py runs each dedup in a spawned process: its peak RSS must not count
    the parent's memory (a spawned child's ru_maxrss starts at the parent's RSS at the fork)."""
    import multiprocessing as mp
    import sys
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "scripts"))
    big = np.ones(600 << 20, dtype=np.uint8)  # 600 MB resident in this process
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_peak, args=(queue,))
    proc.start()
    child = queue.get(timeout=120)
    proc.join()
    assert big[-1] == 1  # still held while the child ran
    if sys.platform == "linux":
        assert child < 300
