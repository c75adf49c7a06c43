"""The real embedded model (SmolLM2-135M-Instruct + the shipped adapter when present)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bellm_search.collection.core import Collection
from bellm_search.dedup.job import find_clusters

pytestmark = pytest.mark.integration
DATA = Path(__file__).resolve().parents[1] / "bellm_search" / "data"


@pytest.fixture(scope="module")
def encoder():
    from bellm_search.encoder.encode import Encoder

    return Encoder(dtype="float32")


def test_real_model_embeds_sentences(encoder):
    texts = ["A man is playing a guitar.", "Someone is playing the guitar.", "The stock market fell sharply today.", ""]
    vecs = encoder.encode(texts)
    assert vecs.shape == (4, 576) and np.isfinite(vecs).all()
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    sims = vecs @ vecs.T
    assert sims[0, 1] > sims[0, 2] + 0.05  # the paraphrase is closer than the unrelated sentence
    alone = np.stack([encoder.encode([t])[0] for t in texts])
    assert np.abs(alone - vecs).max() < 1e-4


def sample_posts() -> list[dict]:
    return [json.loads(line) for line in (DATA / "sample_posts.jsonl").read_text(encoding="utf-8").splitlines()]


def test_ingest_query_round_trip_and_exact_groups(tmp_path, encoder):
    posts = sample_posts()[:80]
    coll = Collection.create(tmp_path / "c", encoder=encoder, normalize_social=True)
    stats = coll.ingest(posts)
    assert stats.added + stats.exact_duplicates == 80
    for post in posts[:20]:
        doc = coll.store.get_doc(coll.store.lookup_key(post["id"]))
        if "dup_of" in doc:
            continue
        top = coll.query(post["text"], k=1)[0]
        assert top.id == post["id"] and top.score > 0.99
    truth = json.loads((DATA / "sample_posts_truth.json").read_text())
    ids = {p["id"] for p in posts}
    found, _, _ = find_clusters(coll, threshold=0.999, k=5)
    name = lambda i: coll.store.get_doc(int(i))["id"]  # noqa: E731
    clusters = [set(map(name, m)) for m in found.members]
    for group in truth:
        members = set(group["ids"]) & ids
        if group["type"] == "exact" and len(members) >= 2:
            assert any(members <= c for c in clusters), members
