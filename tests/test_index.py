"""Index layer: pure choices on hand-made numbers, and every index operation compared with
exact numpy search on a small seeded clustered dataset."""
from __future__ import annotations

import numpy as np
import pytest

from bellm_search.index import faiss_index as ix
from bellm_search.errors import CollectionError, ConfigError
from bellm_search.config import IndexConfig
from bellm_search.index.factory import choose_factory, choose_nlist, choose_pq_m, parse_factory, training_size
from bellm_search.index.faiss_index import VectorIndex
from bellm_search.index.rerank import rerank

D = 64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One OpenMP thread: on a shared, busy machine spinning FAISS threads slow tests 10x."""
    n = ix.faiss.omp_get_max_threads()
    ix.faiss.omp_set_num_threads(1)
    yield
    ix.faiss.omp_set_num_threads(n)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    """4000 base + 100 held-out query vectors from 40 Gaussian clusters, unit norm."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, D))
    lab = rng.integers(0, 40, 4100)
    x = _unit(centres[lab] + 0.5 * rng.standard_normal((4100, D)))
    return x[:4000], x[4000:]


def exact(xb: np.ndarray, xq: np.ndarray, k: int, ids: np.ndarray | None = None):
    s = xq @ xb.T
    I = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, I, axis=1), (I if ids is None else ids[I])


def recall(I: np.ndarray, gt: np.ndarray) -> float:
    return np.mean([len(np.intersect1d(a, b)) / len(b) for a, b in zip(I, gt)])


@pytest.fixture(scope="module")
def ivfpq(data) -> VectorIndex:
    xb, _ = data
    vi = VectorIndex.create(D, "IVF32,PQ16", IndexConfig(seed=0))
    vi.train(xb)
    vi.add(xb, np.arange(len(xb)) + 1000)
    return vi


# --------------------------------------------------------------------------- pure maths

def test_choose_nlist_power_of_two_in_autofaiss_band():
    assert choose_nlist(1_000_000) == 4096          # 4*sqrt = 4000 -> 4096 (<= 16*sqrt)
    assert choose_nlist(100_000) == 2048            # 4*sqrt = 1265 -> 2048
    assert choose_nlist(10_000) == 256              # 400 -> 512, capped: 512*30 > 10_000
    assert choose_nlist(1000) == 32                 # 127 -> 128, capped to 32 (32*30 <= 1000)
    assert choose_nlist(29) == 1 and choose_nlist(0) == 1
    for n in (200_000, 3_000_000, 50_000_000):
        nlist = choose_nlist(n)
        assert nlist & (nlist - 1) == 0 and 4 * n ** 0.5 <= nlist <= 16 * n ** 0.5


def test_choose_pq_m_divides_d_and_meets_one_thirtieth():
    m = choose_pq_m(576)
    assert m == 72 and 576 % m == 0 and m * 30 <= 576 * 4
    assert choose_pq_m(64) == 8 and choose_pq_m(384) == 48 and choose_pq_m(768) == 96
    assert choose_pq_m(576, max_code_bytes=64) == 64
    assert choose_pq_m(576, nbits=4) == 144         # 144 x 4 bits = 72 bytes
    assert choose_pq_m(7) == 1                      # budget 0 bytes: fall back to 1
    with pytest.raises(ConfigError):
        choose_pq_m(0)


def test_training_size_between_30_and_256_per_list_and_at_most_n():
    assert training_size(4096, 10_000_000) == 4096 * 64
    assert training_size(100, 10_000_000, per_list=1000) == 100 * 256
    assert training_size(100, 10_000_000, per_list=1) == 100 * 30
    assert training_size(4096, 50_000) == 50_000


def test_choose_factory():
    cfg = IndexConfig()
    assert choose_factory(100_000, 576, cfg) == "Flat"
    assert choose_factory(1_000_000, 576, cfg) == "IVF4096,PQ144x4fs"    # 72 B, SIMD fast-scan
    assert choose_factory(1_000_000, 576, IndexConfig(opq=True, nlist=1024, m=48, nbits=8)) == "OPQ48,IVF1024,PQ48"
    assert choose_factory(1_000_000, 576, IndexConfig(nbits=8)) == "IVF4096,PQ72"
    assert choose_factory(1_000_000, 576, IndexConfig(nbits=6)) == "IVF4096,PQ96x6"
    assert choose_factory(10, 576, IndexConfig(factory="HNSW32")) == "HNSW32"
    with pytest.raises(ConfigError, match="divide"):
        choose_factory(1_000_000, 576, IndexConfig(m=50))


def test_config_round_trip_and_validation():
    cfg = IndexConfig(nlist=512, opq=True, gpu="off")
    assert IndexConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="bogus"):
        IndexConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ConfigError):
        IndexConfig(gpu="maybe")
    with pytest.raises(ConfigError):
        IndexConfig(nprobe=0)


def test_rerank_hand_made_with_padding():
    xq = np.array([[1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32)
    store = {7: [0.0, 1.0], 8: [1.0, 0.0], 9: [0.8, 0.6]}
    seen = []

    def lookup(ids):
        seen.append(ids.copy())
        return np.array([store[i] for i in ids], dtype=np.float32)

    I = np.array([[7, 9, 8], [9, -1, -1], [-1, -1, -1]])
    Dr, Ir = rerank(xq, I, lookup, k=4)
    np.testing.assert_array_equal(Ir, [[8, 9, 7, -1], [9, -1, -1, -1], [-1, -1, -1, -1]])
    np.testing.assert_allclose(Dr[0, :3], [1.0, 0.8, 0.0])
    np.testing.assert_allclose(Dr[1, 0], 0.6)
    assert np.isneginf(Dr[0, 3]) and np.isneginf(Dr[1, 1:]).all() and np.isneginf(Dr[2]).all()
    assert len(seen) == 1 and sorted(seen[0]) == [7, 8, 9]   # one lookup of unique ids
    Dk, Ik = rerank(xq, I, lookup, k=1)
    np.testing.assert_array_equal(Ik[:, 0], [8, 9, -1])


# --------------------------------------------------------------------------- indexes

def test_flat_equals_exact_search(data):
    xb, xq = data
    ids = np.arange(len(xb)) * 3 + 5
    vi = VectorIndex.create(D, "Flat", IndexConfig())
    vi.add(xb, ids)
    Df, If = vi.search(xq, 10, nprobe=1)            # nprobe ignored for Flat
    De, Ie = exact(xb, xq, 10, ids)
    np.testing.assert_array_equal(If, Ie)
    np.testing.assert_allclose(Df, De, atol=1e-5)
    assert vi.describe()["type"] == "Flat" and vi.describe()["bytes_per_vector"] == 4 * D


def test_search_pads_with_minus_one(data):
    xb, xq = data
    vi = VectorIndex.create(D, "Flat", IndexConfig())
    vi.add(xb[:3], np.array([10, 11, 12]))
    Dq, Iq = vi.search(xq[:2], 5)
    assert (Iq[:, 3:] == -1).all() and np.isneginf(Dq[:, 3:]).all()
    assert set(Iq[0, :3]) == {10, 11, 12}


def test_ivfpq_rerank_recall_vs_exact(data, ivfpq):
    xb, xq = data
    _, gt = exact(xb, xq, 10, np.arange(len(xb)) + 1000)
    _, Iraw = ivfpq.search(xq, 10, nprobe=8)
    _, cand = ivfpq.search(xq, 100, nprobe=8)
    _, Ir = rerank(xq, cand, lambda u: xb[u - 1000], 10)
    r_raw, r_rerank = recall(Iraw, gt), recall(Ir, gt)
    assert r_rerank >= 0.9 and r_rerank > r_raw
    _, I1 = ivfpq.search(xq, 10, nprobe=1)
    assert recall(I1, gt) < r_raw                   # nprobe really reaches the index
    d = ivfpq.describe()
    assert (d["type"], d["nlist"], d["m"], d["bytes_per_vector"], d["ntotal"]) == ("IVF-PQ", 32, 16, 16, 4000)


# IVF64,Flat: the coarse k-means seed alone; IVF1,PQ8x4 on 256 vectors: the PQ k-means seed
# alone (one list trained on <= 256 vectors is their exact mean: no seeded subsampling).
@pytest.mark.parametrize("factory, n_train", [("IVF64,Flat", 2000), ("IVF1,PQ8x4", 256)])
def test_training_is_seeded(data, factory, n_train):
    xb, xq = data
    runs = []
    for seed in (3, 3, 4):
        vi = VectorIndex.create(D, factory, IndexConfig(seed=seed))
        vi.train(xb[:n_train])
        vi.add(xb, np.arange(len(xb)))
        runs.append(vi.search(xq, 10, nprobe=1))
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert not np.array_equal(runs[0][0], runs[2][0])


def test_save_load_same_results(tmp_path, data, ivfpq):
    _, xq = data
    path = tmp_path / "index.faiss"
    ivfpq.save(path)
    loaded = VectorIndex.load(path, IndexConfig())
    for nprobe in (1, 8):
        D1, I1 = ivfpq.search(xq, 10, nprobe)
        D2, I2 = loaded.search(xq, 10, nprobe)
        np.testing.assert_array_equal(I1, I2)
        np.testing.assert_array_equal(D1, D2)
    assert loaded.factory == "IVF32,PQ16" and loaded.ntotal == 4000
    assert [p.name for p in tmp_path.iterdir()] == ["index.faiss"]   # no temp file left


def test_add_after_train_and_remove(data):
    xb, xq = data
    vi = VectorIndex.create(D, "IVF16,PQ32", IndexConfig())
    vi.train(xb[:2000])
    vi.add(xb[:2000], np.arange(2000))
    vi.add(xq, np.arange(100) + 50_000)             # the queries themselves, added later
    _, I = vi.search(xq, 10, nprobe=16)
    assert (I == (np.arange(100) + 50_000)[:, None]).any(axis=1).mean() >= 0.95
    assert vi.remove(np.array([50_000, 50_001, 99_999])) == 2
    _, I = vi.search(xq[:2], 10, nprobe=16)
    assert not np.isin(I, [50_000, 50_001]).any() and vi.ntotal == 2098


def test_flat_remove(data):
    xb, _ = data
    vi = VectorIndex.create(D, "Flat", IndexConfig())
    vi.add(xb[:50], np.arange(50) + 7)
    assert vi.remove(np.array([7, 8])) == 2 and vi.ntotal == 48
    _, I = vi.search(xb[:2], 3)
    assert not np.isin(I, [7, 8]).any()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_file_raises_collection_error(tmp_path, ivfpq, damage):
    path = tmp_path / "index.faiss"
    ivfpq.save(path)
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x13\x37" * 64 + raw[128:])
    else:
        path.write_bytes(b"")
    with pytest.raises(CollectionError, match="check --repair"):
        VectorIndex.load(path, IndexConfig())


def test_wrong_metric_file_raises_collection_error(tmp_path):
    path = tmp_path / "index.faiss"
    ix.faiss.write_index(ix.faiss.IndexFlatL2(D), str(path))      # readable, but not ours
    with pytest.raises(CollectionError, match="inner product"):
        VectorIndex.load(path, IndexConfig())


def test_missing_file_and_bad_factory(tmp_path):
    with pytest.raises(CollectionError, match="missing"):
        VectorIndex.load(tmp_path / "nope.faiss", IndexConfig())
    with pytest.raises(ConfigError, match="factory"):
        VectorIndex.create(D, "IVF-nonsense", IndexConfig())


def test_gpu_decision(monkeypatch):
    monkeypatch.setattr(ix, "gpu_available", lambda: False)
    assert ix.use_gpu(IndexConfig(gpu="auto")) is False
    with pytest.raises(ConfigError, match=r"bellm-search\[gpu\]"):
        ix.use_gpu(IndexConfig(gpu="on"))
    with pytest.raises(ConfigError):
        VectorIndex.create(D, "IVF16,PQ8", IndexConfig(gpu="on"))
    monkeypatch.setattr(ix, "gpu_available", lambda: True)
    assert ix.use_gpu(IndexConfig(gpu="auto")) and not ix.use_gpu(IndexConfig(gpu="off"))
    clones = []
    monkeypatch.setattr(ix, "_to_gpu", lambda index: clones.append(index) or index)
    assert VectorIndex.create(D, "IVF16,PQ8", IndexConfig()).describe()["gpu"] is True
    assert VectorIndex.create(D, "Flat", IndexConfig()).describe()["gpu"] is False   # Flat stays on CPU
    assert len(clones) == 1


def test_gpu_available_never_raises(monkeypatch):
    monkeypatch.setattr(ix.faiss, "get_num_gpus", lambda: 1 / 0, raising=False)
    monkeypatch.setattr(ix.faiss, "StandardGpuResources", object, raising=False)
    assert ix.gpu_available() is False


# --------------------------------------------------------------------------- settings a user gives

def test_explicit_ivf_settings_ask_for_ivf_under_flat_max():
    """13.2.2: nlist / m / opq given means IVF-PQ, even for a collection under flat_max."""
    assert choose_factory(300, 64, IndexConfig()) == "Flat"
    assert choose_factory(300, 64, IndexConfig(nlist=4)) == "IVF4,PQ16x4fs"
    assert choose_factory(300, 64, IndexConfig(m=8, nbits=8)) == "IVF8,PQ8"
    assert choose_factory(300, 64, IndexConfig(opq=True)).startswith("OPQ16,IVF8,")
    spec = parse_factory("OPQ48,IVF1024,PQ48", d=576)
    assert (spec.is_ivf, spec.nlist, spec.pq_m, spec.nbits, spec.opq) == (True, 1024, 48, 8, True)
    assert spec.min_train == 1024 * 30
    assert parse_factory("IVF16,PQ144x4fs").nbits == 4 and not parse_factory("Flat").is_ivf
    assert parse_factory("OPQ16,IVF2,PQ16x4fs", d=64).min_train == 64       # OPQ needs >= d vectors
    assert parse_factory("IVF4,PQ8").min_train == 256                        # 8-bit PQ: 256 centroids


def _collection(tmp_path, n: int):
    from fakes import FakeEncoder
    from bellm_search.collection.core import Collection

    coll = Collection.create(tmp_path / "c", encoder=FakeEncoder())
    coll.ingest([{"id": f"d{i}", "text": f"post {i}"} for i in range(n)])
    return coll


def test_reindex_with_explicit_ivf_settings_builds_ivf(tmp_path):
    """13.2.2: `reindex --nlist 4` on 600 vectors (flat_max 100k) builds IVF4, not Flat."""
    coll = _collection(tmp_path, 600)
    assert coll.info()["index"]["type"] == "Flat"
    desc = coll.reindex(nlist=4)
    assert desc["type"] == "IVF-PQ" and desc["nlist"] == 4 and desc["ntotal"] == 600
    assert coll.query("post 17", k=1, nprobe=4)[0].id == "d17"
    assert coll.reindex(m=4, nlist=None)["m"] == 4                 # --pq-m alone: IVF-PQ with m=4
    assert coll.reindex(factory="Flat")["type"] == "Flat"
    assert coll.reindex(opq=True)["opq"] is True


@pytest.mark.parametrize("settings, says", [
    ({"factory": "HNSW32"}, "cannot use"),
    ({"factory": "IDMap,Flat"}, "maps its ids"),
    ({"factory": "IVF4,Flat,RFlat"}, "cannot remove"),
    ({"m": 7}, "divide the dimension 16"),
    ({"nlist": 100_000}, "needs at least 3,000,000"),
    ({"opq": True, "nlist": 64}, "holds 600"),
    ({"factory": "IVF4,PQ8", "nlist": 8}, "either"),
    ({"factory": "IVF4,nonsense"}, "cannot build"),
])
def test_reindex_refuses_unusable_settings_before_writing(tmp_path, settings, says):
    """18.4: settings that would break the collection later are refused, in one sentence,
    before anything is written; delete and query keep working."""
    from bellm_search.index.factory import IndexSettingsError

    coll = _collection(tmp_path, 600)
    files = {f.name: f.read_bytes() for f in (tmp_path / "c").iterdir() if f.is_file()}
    with pytest.raises(IndexSettingsError, match=says) as err:
        coll.reindex(**settings)
    msg = str(err.value)
    assert "\n" not in msg and msg.endswith(".") and "Error in" not in msg
    assert {f.name: f.read_bytes() for f in (tmp_path / "c").iterdir() if f.is_file()} == files
    assert coll.delete(["d3"]) == (1, [])
    assert coll.query("post 5", k=1)[0].id == "d5" and coll.check()["ok"]


def test_faiss_errors_are_one_sentence():
    from bellm_search.index.validate import validate_settings

    for bad in ("bogus", "IVF16,PQ7x4fs"):
        with pytest.raises(ConfigError) as err:
            validate_settings(bad, 100_000, 576)
        assert "\n" not in str(err.value) and "Error in" not in str(err.value)
    assert validate_settings(IndexConfig(), 10, 576) == "Flat"
    assert validate_settings(IndexConfig(nlist=16), 3000, 576) == "IVF16,PQ144x4fs"
    assert validate_settings("IVF16,SQ8", 1000, 576) == "IVF16,SQ8"


@pytest.mark.parametrize("factory, n", [("IVF8,PQ16", 600), ("OPQ16,IVF4,PQ16x4fs", 300)])
def test_training_prints_no_clustering_warnings(capfd, data, factory, n):
    """FAISS warned once per sub-quantizer (per OPQ iteration: hundreds of lines) when the
    sample is under 39 points per PQ centroid; the sample size is ours, so it says nothing."""
    xb, _ = data
    vi = VectorIndex.create(D, factory, IndexConfig(gpu="off"))
    capfd.readouterr()
    vi.train(xb[:vi.training_size(n)])
    vi.add(xb[:n], np.arange(n))
    assert "WARNING" not in capfd.readouterr().err
    assert vi.search(xb[:1], 1)[1][0, 0] == 0


def test_gpu_catch_up_copies_the_index_once(tmp_path, monkeypatch):
    """13.2.5: catching up a GPU index (stored batches past the saved state, plus deletions)
    copies it to the CPU and back once, not once per batch. No GPU here: count the copies."""
    import json
    from functools import partialmethod

    from bellm_search.collection.core import Collection
    from bellm_search.store import Store
    from fakes import FakeEncoder

    coll = _collection(tmp_path, 600)
    coll.reindex(nlist=4)
    coll.delete(["d1", "d2"])
    coll.close()
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    manifest["index"].update(indexed_upto=100, deleted_applied=0)      # the saved index lags
    (tmp_path / "c" / "manifest.json").write_text(json.dumps(manifest))
    moves = {"gpu": 0, "cpu": 0}
    monkeypatch.setattr(ix, "gpu_available", lambda: True)
    monkeypatch.setattr(ix, "_to_gpu", lambda index: moves.__setitem__("gpu", moves["gpu"] + 1) or index)
    monkeypatch.setattr(ix, "_to_cpu", lambda index: moves.__setitem__("cpu", moves["cpu"] + 1) or index)
    monkeypatch.setattr(Store, "iter_vectors", partialmethod(Store.iter_vectors, batch=100))  # 5 batches
    with Collection.open(tmp_path / "c", encoder=FakeEncoder()) as again:
        index = again.load_index()
        assert index.describe()["gpu"] and index.ntotal == 598
    assert moves == {"gpu": 2, "cpu": 1}        # the load's clone, then one round trip for the catch-up


def test_cli_reindex_refuses_in_one_line_and_the_collection_keeps_working(capsys, tiny_llama, tmp_path):
    """18.4 through the CLI: exit 1, one line, no traceback; delete and query work after."""
    from test_cli import run as run_cli

    def run(*args: str) -> tuple[int, str, str]:
        return run_cli(capsys, *args)

    corpus = tmp_path / "c.txt"
    corpus.write_text("".join(f"post number {i} about topic {i % 7}\n" for i in range(40)), encoding="utf-8")
    c = str(tmp_path / "coll")
    code, _, err = run("ingest", str(corpus), "-c", c, "--model", str(tiny_llama), "--adapter", "none")
    assert code == 0, err
    for args, says in ((["--factory", "HNSW32"], "cannot use"), (["--factory", "IDMap,Flat"], "maps its ids"),
                       (["--pq-m", "7"], "must divide"), (["--nlist", "100000"], "needs at least")):
        code, out, err = run("reindex", "-c", c, *args)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 1 and len(lines) == 1 and says in err and "Traceback" not in err, (args, err)
    code, out, err = run("delete", "-c", c, "line-3", "--json")
    assert code == 0, err
    code, out, _ = run("query", "post number 5", "-c", c, "-k", "1", "--json")
    assert code == 0 and out.strip()
