"""Labelling and calibration on the user's own labels: a scripted user whose notion of a
duplicate differs from the shipped one, the terminal labeller, the labels file."""
from __future__ import annotations

import json

import numpy as np
import pytest

from bellm_search.collection.core import Collection
from bellm_search.dedup.calibration import Decision, decision_for
from bellm_search.dedup.job import find_clusters
from bellm_search.dedup.labels import append_label, labels_path, pairs_to_label, read_labels
from bellm_search.pairs.model import PairModel
from fakes import FakeEncoder, base_vector, near

DIM = 64  # random vectors of distinct posts stay far apart

NOUNS = "storm market council team bridge vaccine concert airport river festival school border".split()
VERBS = "hits closes delays opens floods wins cancels reopens blocks announces".split()
PLACES = "Oslo Lima Cairo Perth Quebec Osaka Nairobi Porto Leeds Hanoi".split()


def story(i: int) -> tuple[str, str]:
    """A post and a paraphrase of it (same news, other words)."""
    n, v, p = NOUNS[i % 12], VERBS[i % 10], PLACES[(i * 7) % 10]
    return (f"Breaking: {n} {v} in {p}, officials confirm #{i}",
            f"{p} officials say the {n} situation changed today, update number {i}")


def corpus():
    """40 retweets of posts, 40 paraphrase pairs (both with cosine 0.9), 20 unrelated pairs
    (cosine 0.75): kind of each candidate pair by source ids."""
    table, records, kind = {}, [], {}
    for i in range(100):
        post, para = story(i)
        v = base_vector(f"g{i}", DIM)
        if i < 40:
            other, how = f"RT @desk{i}: {post} http://t.co/{i}", "retweet"
        elif i < 80:
            other, how = para, "paraphrase"
        else:
            other, how = f"Weather for {PLACES[i % 10]} this weekend: mild, some rain, number {i}", "unrelated"
        table[post], table[other] = v, near(v, 0.9 if how != "unrelated" else 0.75, f"o{i}")
        records += [{"id": f"p{i}", "text": post}, {"id": f"q{i}", "text": other}]
        kind[frozenset((f"p{i}", f"q{i}"))] = how
    return table, records, kind


# the shipped notion (in spirit): a cosine of 0.9 is a duplicate, whatever the words
SHIPPED_LIKE = PairModel(("cosine", "jaccard5", "containment", "retweet"), (25.0, 1.0, 1.0, 1.0), -21.0, 0.5,
                         25.0, -21.0, 0.84, cosine_floor=0.65)


@pytest.fixture
def coll(tmp_path):
    table, records, _ = corpus()
    c = Collection.create(tmp_path / "c", encoder=FakeEncoder(table, dim=DIM), normalize_social=False)
    c.ingest(records)
    enc = c.manifest["encoder"]
    (tmp_path / "c" / "calibration.json").write_text(json.dumps(
        {"model": SHIPPED_LIKE.to_dict(), "adapter_sha256": enc.get("adapter_sha256"),
         "encoder": {"model": enc["model"], "adapter_sha256": enc.get("adapter_sha256")}}))
    yield c
    c.close()


def judged(coll, decision):
    """Kind -> fraction of that kind's planted pairs that end in one cluster."""
    found, _, _ = find_clusters(coll, decision, k=10)
    name = lambda i: coll.store.get_doc(int(i))["id"]  # noqa: E731
    cluster = {name(m): n for n, members in enumerate(found.members) for m in members}
    _, _, kind = corpus()
    out = {}
    for pair, how in kind.items():
        a, b = sorted(pair)
        out.setdefault(how, []).append(a in cluster and cluster[a] == cluster.get(b))
    return {how: float(np.mean(v)) for how, v in out.items()}


def test_scripted_user_moves_the_decisions_after_50_labels(coll):
    """A user for whom only copies and retweets are duplicates (not paraphrases of the same news)
    labels 5 rounds of 10 pairs chosen by uncertainty sampling; after calibrate, dedup follows them."""
    from bellm_search.eval.calibrate import calibrate_collection, fit_collection

    _, _, kind = corpus()
    before = judged(coll, decision_for(coll))
    assert before["retweet"] == 1.0 and before["paraphrase"] == 1.0 and before["unrelated"] == 0.0
    path = labels_path(coll)
    decision, asked = decision_for(coll), []
    for rnd in range(5):
        batch = pairs_to_label(coll, path, n=10, decision=decision, seed=rnd)
        assert len(batch) == 10
        for pair in batch:
            key = frozenset((pair["a"], pair["b"]))
            assert key not in asked  # never a pair twice
            asked.append(key)
            append_label(path, pair["a"], pair["b"], kind.get(key) == "retweet", by="script")
        if rnd >= 1:  # refit on the answers so far, as `label` does between rounds
            model, _ = fit_collection(coll, path)
            decision = Decision(model, model.threshold, "collection", model.cosine_floor)
    assert len(read_labels(path)) == 50
    assert {kind.get(k) for k in asked} >= {"retweet", "paraphrase"}
    report = calibrate_collection(coll, path)
    assert report["labels"] == 50 and report["cv"]["f1"] >= 0.9 and report["dev_pairs"] == 0
    assert coll.manifest["calibration"]["labels"] == 50
    after = decision_for(coll)
    assert after.source == "collection"
    moved = judged(coll, after)
    assert moved["retweet"] >= 0.95 and moved["paraphrase"] <= 0.05 and moved["unrelated"] == 0.0


def test_labels_file_appends_skips_and_survives_a_torn_line(tmp_path):
    path = tmp_path / "labels.jsonl"
    append_label(path, "a", "b", True)
    append_label(path, "c", "d", None)
    append_label(path, "b", "a", False)  # the same pair, answered again: the last answer wins
    with open(path, "a") as fh:
        fh.write('{"a": "e", "b"')  # a crash mid-append
    got = read_labels(path)
    assert got[frozenset("ab")]["duplicate"] is False and got[frozenset("cd")]["duplicate"] is None
    assert len(got) == 2
    with pytest.raises(ValueError):
        append_label(path, "a", "b", "yes")


def test_label_command_asks_appends_each_answer_and_never_repeats(coll):
    from typer.testing import CliRunner

    from bellm_search.cli.main import app

    coll.close()  # the command opens it itself
    runner = CliRunner()
    first = runner.invoke(app, ["label", "-c", str(coll.path), "--batch", "5"], input="d\nn\ns\nq\n")
    assert first.exit_code == 0, first.output
    rows = [json.loads(line) for line in labels_path(coll).read_text().splitlines()]
    assert [r["duplicate"] for r in rows] == [True, False, None] and all(r["by"] == "terminal" for r in rows)
    second = runner.invoke(app, ["label", "-c", str(coll.path), "--limit", "2"], input="n\nn\n")
    assert second.exit_code == 0, second.output
    rows = [json.loads(line) for line in labels_path(coll).read_text().splitlines()]
    assert len(rows) == 5 and len({frozenset((r["a"], r["b"])) for r in rows}) == 5


def test_calibrate_command_needs_enough_labels(coll):
    from typer.testing import CliRunner

    from bellm_search.cli.main import app

    append_label(labels_path(coll), "p0", "q0", True)
    coll.close()
    result = CliRunner().invoke(app, ["calibrate", "-c", str(coll.path)])
    assert result.exit_code != 0 and "at least 10" in str(result.exception or result.output)


def test_calibrate_command_then_dedup_uses_the_collections_calibration(coll):
    """`calibrate` writes COLL/calibration.json and records it in the manifest; `dedup` (a fresh
    open, the manifest validated again) then judges by it."""
    from typer.testing import CliRunner

    from bellm_search.cli.main import app

    _, _, kind = corpus()
    for pair, how in list(kind.items())[::4]:  # 25 pairs of each kind in turn
        a, b = sorted(pair)
        append_label(labels_path(coll), a, b, how == "retweet")
    path = coll.path
    coll.close()
    runner = CliRunner()
    result = runner.invoke(app, ["calibrate", "-c", str(path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["labels"] == 25 and report["path"].endswith("calibration.json")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["calibration"]["labels"] == 25 and manifest["calibration"]["file"] == "calibration.json"
    result = runner.invoke(app, ["dedup", "-c", str(path), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert "collection" in out["decision"] and out["score"] == "probability"
    assert out["clusters"] == 40  # the 40 retweets; no paraphrase
