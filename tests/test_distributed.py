"""Ray Data encoding into embedding shards, and collections built from them (local Ray, tiny model)."""
from __future__ import annotations

import json
import logging
import sys

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")

from bellm_search.distributed import shards  # noqa: E402
from bellm_search.collection.core import Collection  # noqa: E402
from bellm_search.corpus import CorpusOptions, read_corpus  # noqa: E402
from bellm_search.distributed.ingest import ingest_from_embeddings, ingest_with_ray  # noqa: E402
from bellm_search.distributed.ray_embed import embed_with_ray, encoder_cpus, import_ray  # noqa: E402
from bellm_search.distributed.shards import ShardWriter  # noqa: E402
from bellm_search.errors import CollectionError, ConfigError, CorpusError, MissingDependency  # noqa: E402

WORDS = "the man woman dog cat is playing guitar piano riding horse stock market crashed today sun rain".split()


def sentence(i: int) -> str:
    """Distinct texts of varied length (so batches carry padding)."""
    return " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(3 + i % 9)) + f" {i}"


def crash_once(marker: str):
    """A Ray worker set-up hook (pickled by value: a closure) that makes the first encoder actor
    call in the session create ``marker`` and exit hard, as a lost node or an OOM kill would."""
    def install() -> None:
        import os
        from pathlib import Path

        from bellm_search.distributed import ray_embed

        encode = ray_embed.EncodeActor.__call__

        def crashing(self, batch):
            if not os.path.exists(marker):
                Path(marker).touch()
                os._exit(1)
            return encode(self, batch)

        ray_embed.EncodeActor.__call__ = crashing

    return install


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    """A local Ray session whose first encoder actor dies on its first batch (see ``crash_once``)."""
    marker = tmp_path_factory.mktemp("ray-crash") / "crashed-once"
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
             runtime_env={"worker_process_setup_hook": crash_once(str(marker))})
    yield marker
    ray.shutdown()


@pytest.fixture(scope="module")
def opts(tiny_llama) -> dict:
    return {"model": str(tiny_llama), "adapter": "none", "dtype": "float32"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two files: a.jsonl with ids, metadata and one invalid line; b.jsonl with line-number ids."""
    root = tmp_path_factory.mktemp("ray-corpus")
    lines = [json.dumps({"id": f"a{i}", "text": sentence(i), "lang": "en", "n": i}) for i in range(24)]
    lines.insert(5, "{not json")
    (root / "a.jsonl").write_text("\n".join(lines) + "\n")
    (root / "b.jsonl").write_text("".join(json.dumps({"text": sentence(100 + i)}) + "\n" for i in range(14)))
    return root


def expected_records(corpus) -> list:
    options = CorpusOptions(skip_invalid=True, prefix_ids=True)
    return [r for name in ("a.jsonl", "b.jsonl") for r in read_corpus(str(corpus / name), options)]


def read_all(out) -> tuple[np.ndarray, list[str], list[str]]:
    pairs = shards.list_shards(out)
    vecs = np.concatenate([np.load(emb) for emb, _ in pairs])
    tables = [pq.read_table(meta) for _, meta in pairs]
    return vecs, sum((t.column("id").to_pylist() for t in tables), []), sum((t.column("text").to_pylist() for t in tables), [])


@pytest.fixture(scope="module")
def embedded(ray_local, opts, corpus, tmp_path_factory):
    """One Ray run for the module (actor start-up dominates the time): two encoder actors, one of
    which dies hard on its first batch (as on a lost node); Ray restarts it and re-runs the batch."""
    work = tmp_path_factory.mktemp("ray-out")
    summary = embed_with_ray([str(corpus / "*.jsonl")], work / "shards", opts, num_encoders=2, batch_size=4,
                             skip_invalid=True, shard_rows=16)
    return work / "shards", summary


def test_ray_path_equals_local_encoder_in_input_order(embedded, corpus, opts):
    from bellm_search.encoder.encode import Encoder
    from bellm_search.encoder.resolve import resolve_config

    out, summary = embedded
    records = expected_records(corpus)
    vecs, ids, texts = read_all(out)
    assert ids == [r.id for r in records]  # a0..a23 then b.jsonl:1..14, the invalid line dropped
    assert ids[-1] == "b.jsonl:14" and texts == [r.text for r in records]
    local = Encoder(resolve_config(**opts)).encode(texts)
    assert vecs.shape == local.shape == (38, 64)
    assert np.abs(vecs - local).max() < 1e-4
    assert summary["rows"] == 38 and summary["invalid_lines"] == 1
    assert "a.jsonl:6" in summary["problems"][0]


def test_shards_follow_the_embedding_reader_layout(embedded):
    out, summary = embedded
    assert sorted(p.name for p in (out / "emb").iterdir()) == ["0000.npy", "0001.npy", "0002.npy"]
    assert sorted(p.name for p in (out / "meta").iterdir()) == ["0000.parquet", "0001.parquet", "0002.parquet"]
    rows = []
    for emb, meta in shards.list_shards(out):
        vectors, table = np.load(emb), pq.read_table(meta)
        assert vectors.dtype == np.float32 and len(vectors) == table.num_rows
        assert {"id", "text", "meta"} <= set(table.column_names)
        rows.append(table.num_rows)
    assert rows == [16, 16, 6]
    first = pq.read_table(out / "meta" / "0000.parquet").to_pylist()[0]
    assert json.loads(first["meta"]) == {"lang": "en", "n": 0} and first["line"] == 1
    config = json.loads((out / shards.CONFIG_FILE).read_text())
    assert config["rows"] == 38 and config["dim"] == 64 and config["shards"] == 3
    assert config["encoder"]["model"].endswith("tiny-llama") and config["encoder"]["adapter"] is None


def test_from_embeddings_round_trip_and_resume(embedded, tmp_path, corpus):
    out, _ = embedded
    coll_path = tmp_path / "coll"
    stats = ingest_from_embeddings(coll_path, out, encoder_options=None, chunk_size=10)
    assert stats.added == 38 and stats.invalid == 1
    with Collection.open(coll_path, dtype="float32") as coll:
        assert coll.store.count() == 38
        hit = coll.query(sentence(7), k=1)[0]
        assert hit.id == "a7" and hit.metadata == {"lang": "en", "n": 7} and hit.score > 0.999
    again = ingest_from_embeddings(coll_path, out, chunk_size=10)
    assert again.added == 0 and again.skipped_known == 38


def test_ingest_with_ray_chains_embedding_and_ingest_in_a_temporary_folder(embedded, tmp_path, opts, monkeypatch):
    import shutil

    import bellm_search.distributed.ray_embed as ray_embed

    seen = {}

    def fake_embed(inputs, output_dir, config, **kwargs):  # the Ray run itself is tested above
        seen.update(inputs=inputs, where=output_dir, config=config)
        shutil.copytree(embedded[0], output_dir, dirs_exist_ok=True)
        return {"rows": 38}

    monkeypatch.setattr(ray_embed, "embed_with_ray", fake_embed)
    summary, stats = ingest_with_ray(tmp_path / "c", ["x.jsonl"], encoder_options=opts)
    assert summary == {"rows": 38} and stats.added == 38
    assert seen["where"].parent == tmp_path and not seen["where"].exists()  # beside the collection, then gone
    assert seen["config"].model == opts["model"]
    with Collection.open(tmp_path / "c") as coll:
        assert coll.store.count() == 38


def test_from_embeddings_refuses_shards_of_another_encoder(embedded, tmp_path, opts):
    from bellm_search.encoder.resolve import resolve_config

    out, _ = embedded
    other = resolve_config(**opts, bidirectional_layers=2)
    Collection.create(tmp_path / "other", other, 64).close()
    with pytest.raises(CollectionError, match="different encoder"):
        ingest_from_embeddings(tmp_path / "other", out)
    with pytest.raises(CollectionError, match="different encoder"):
        ingest_from_embeddings(tmp_path / "new", out, encoder_options={**opts, "bidirectional_layers": 2})


def test_crashed_actor_is_replaced_without_losing_or_repeating_rows(ray_local, embedded, corpus):
    out, summary = embedded
    assert ray_local.exists()  # an actor did die mid-run
    _, ids, _ = read_all(out)
    assert summary["rows"] == len(ids) == len(set(ids)) == 38
    assert ids == [r.id for r in expected_records(corpus)]


def test_bad_corpus_line_is_reported_with_its_place(ray_local, opts, corpus, tmp_path):
    with pytest.raises(CorpusError, match=r"a\.jsonl:6: invalid JSON"):
        embed_with_ray([str(corpus / "a.jsonl")], tmp_path / "out", opts)
    with pytest.raises(CorpusError, match="matches no file"):
        embed_with_ray([str(corpus / "*.csv")], tmp_path / "out", opts)


def test_missing_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingDependency, match=r"bellm-search\[distributed\]"):
        import_ray()


# ----------------------------------------------------------------------------- pure parts (no Ray session)
def rows(keys: list[tuple[int, int]], errors: tuple[int, ...] = ()) -> dict[str, np.ndarray]:
    n = len(keys)
    obj = lambda xs: np.array(xs, dtype=object)  # noqa: E731
    return {"file_no": np.array([k[0] for k in keys]), "line": np.array([k[1] for k in keys]),
            "id": obj([f"{f}:{l}" for f, l in keys]), "text": obj(["t"] * n), "meta": obj(["{}"] * n),
            "source": obj(["x.jsonl"] * n), "error": obj(["bad" if i in errors else "" for i in range(n)]),
            "embedding": np.arange(n * 2, dtype=np.float32).reshape(n, 2)}


def test_shard_writer_cuts_full_shards_drops_error_rows_and_refuses_disorder(tmp_path):
    writer = ShardWriter(tmp_path, shard_rows=3)
    writer.add(rows([(0, 1), (0, 2), (0, 4)], errors=(1,)))
    writer.add(rows([(0, 5), (1, 1), (1, 2)]))
    with pytest.raises(RuntimeError, match="out of input order"):
        writer.add(rows([(1, 2)]))
    writer.close()
    assert (writer.rows, writer.shards, writer.invalid) == (5, 2, 1)
    ids = [pq.read_table(meta).column("id").to_pylist() for _, meta in shards.list_shards(tmp_path)]
    assert ids == [["0:1", "0:4", "0:5"], ["1:1", "1:2"]]


def test_list_shards_refuses_a_shard_missing_its_meta(tmp_path):
    part = shards.ShardRows(np.zeros((2, 4), np.float32), ["a", "b"], ["x", "y"], ["{}", "{}"], ["f", "f"],
                            np.array([1, 2]))
    shards.write_shard(tmp_path, 0, part)
    shards.write_shard(tmp_path, 1, part)
    assert [shards.check_aligned(e, m, 4) for e, m in shards.list_shards(tmp_path)] == [2, 2]
    (tmp_path / "meta" / "0001.parquet").unlink()
    with pytest.raises(ConfigError, match=r"shards \[1\] lack"):
        shards.list_shards(tmp_path)


def test_cpu_encoders_leave_one_cpu_for_reading():
    assert encoder_cpus(2, 2, 0.0) == 0.5
    assert encoder_cpus(16, 4, 0.0) == 1.0
    assert encoder_cpus(2, 4, 1.0) == 1.0  # GPU actors: one CPU each beside the GPU
    with pytest.raises(ConfigError):
        encoder_cpus(1, 1, 0.0)


def test_concat_rows_slices_across_shard_boundaries():
    parts = [np.arange(i * 10, i * 10 + n * 2, dtype=np.float32).reshape(n, 2) for i, n in enumerate((3, 1, 4))]
    whole, rows = np.concatenate(parts), shards.ConcatRows(parts)
    assert rows.shape == (8, 2) and len(rows) == 8
    for a, b in [(0, 8), (2, 5), (3, 4), (4, 8), (7, 20), (8, 8)]:
        np.testing.assert_array_equal(rows[a:b], whole[a:b])
