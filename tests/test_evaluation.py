"""Metrics, labelled-data readers and the shingle baseline."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bellm_search.errors import ConfigError, CorpusError
from bellm_search.eval.datasets import Pair, StsPair, read_pairs, read_sts
from bellm_search.eval.metrics import average_precision, best_f1, curve_table, pr_curve, prf_at, rankdata, spearman
from bellm_search.eval.pairs import jaccard_scores, minhash_scores
from bellm_search.pairs.normalize import char_shingles, jaccard

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="shared data folder not present")


# --------------------------------------------------------------------------- spearman

def test_rankdata_average_ties():
    np.testing.assert_array_equal(rankdata([10, 20, 10, 30, 20, 20]), [1.5, 4, 1.5, 6, 4, 4])


def test_spearman_known_values():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4, 5], [1, 2, 2, 3, 1]) == pytest.approx(1.5 / np.sqrt(90))  # by hand
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError):
        spearman([1, 2], [1, 2, 3])


def test_spearman_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 6, 200), rng.integers(0, 6, 200) + rng.integers(0, 2, 200)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


# --------------------------------------------------------------------------- AP, PR, F1

def brute_ap(scores, labels):
    """AP from its definition: mean over positives of precision at that positive's threshold."""
    scores, labels = np.asarray(scores, float), np.asarray(labels)
    precisions = [labels[scores >= s].mean() for s in scores[labels == 1]]
    return float(np.mean(precisions))


def test_average_precision_hand_made():
    # ranking: 0.9(+) 0.8(-) 0.7(+) 0.1(-): AP = (1/1 + 2/3) / 2
    assert average_precision([0.1, 0.9, 0.7, 0.8], [0, 1, 1, 0]) == pytest.approx(5 / 6)
    # tie between a positive and a negative at the top: one threshold, precision 1/2
    assert average_precision([0.5, 0.5, 0.1], [1, 0, 0]) == pytest.approx(0.5)
    assert average_precision([0.3, 0.2], [True, True]) == pytest.approx(1.0)


def test_average_precision_matches_brute_force_and_sklearn():
    rng = np.random.default_rng(1)
    scores, labels = rng.integers(0, 20, 300) / 20, rng.integers(0, 2, 300)
    assert average_precision(scores, labels) == pytest.approx(brute_ap(scores, labels))
    metrics = pytest.importorskip("sklearn.metrics")
    assert average_precision(scores, labels) == pytest.approx(
        metrics.average_precision_score(labels, scores))


def test_pr_curve_hand_made():
    curve = pr_curve([0.9, 0.8, 0.8, 0.3], [1, 1, 0, 0])
    np.testing.assert_allclose(curve["threshold"], [0.3, 0.8, 0.9])
    np.testing.assert_allclose(curve["precision"], [0.5, 2 / 3, 1.0])
    np.testing.assert_allclose(curve["recall"], [1.0, 1.0, 0.5])
    np.testing.assert_allclose(curve["f1"], [2 / 3, 0.8, 2 / 3])


def test_pr_curve_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(2)
    scores, labels = rng.integers(0, 15, 200) / 15, rng.integers(0, 2, 200)
    p, r, t = metrics.precision_recall_curve(labels, scores)
    curve = pr_curve(scores, labels)
    np.testing.assert_allclose(curve["threshold"], t)
    np.testing.assert_allclose(curve["precision"], p[:-1])
    np.testing.assert_allclose(curve["recall"], r[:-1])


def test_best_f1_and_tie_rule():
    assert best_f1([0.9, 0.8, 0.8, 0.3], [1, 1, 0, 0]) == pytest.approx((0.8, 0.8, 2 / 3, 1.0))
    # thresholds 0.9 (P 1, R 1/2) and 0.6 (P 1/2, R 1) both give F1 2/3: the higher one wins
    t, f1, p, r = best_f1([0.9, 0.8, 0.7, 0.6], [1, 0, 0, 1])
    assert (t, f1, p, r) == pytest.approx((0.9, 2 / 3, 1.0, 0.5))


def test_binary_metric_input_errors():
    with pytest.raises(ValueError, match="no positive"):
        average_precision([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="0/1"):
        pr_curve([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="equal-length"):
        best_f1([0.1], [0, 1])


# --------------------------------------------------------------------------- readers: tiny files

def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def test_read_pairs_jsonl(tmp_path):
    f = write(tmp_path / "p.jsonl", '{"text1": "a", "text2": "b", "label": 1}\n\n'
                                    '{"text1": "c", "text2": "d", "label": false}\n')
    assert read_pairs(f) == [Pair("a", "b", 1), Pair("c", "d", 0)]


@pytest.mark.parametrize("bad_line, problem", [
    ('{"text1": "a", "text2": "b", "label": 1', "invalid JSON"),
    ('["a", "b", 1]', "JSON object"),
    ('{"text2": "b", "label": 1}', "missing 'text1'"),
    ('{"text1": 3, "text2": "b", "label": 1}', "'text1' must be a string"),
    ('{"text1": "a", "text2": "b"}', "missing 'label'"),
    ('{"text1": "a", "text2": "b", "label": 2}', "'label' must be"),
    ('{"text1": "a", "text2": "b", "label": 0.5}', "'label' must be"),
])
def test_read_pairs_jsonl_errors_name_path_and_line(tmp_path, bad_line, problem):
    good = '{"text1": "a", "text2": "b", "label": 1}\n\n'
    f = write(tmp_path / "p.jsonl", good + bad_line + "\n")
    with pytest.raises(CorpusError, match=problem) as err:
        read_pairs(f)
    assert err.value.line == 3 and err.value.path == str(f)
    assert str(err.value).startswith(f"{f}:3: ")


def test_read_pairs_bad_utf8_names_line(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_bytes(b'{"text1": "a", "text2": "b", "label": 1}\n{"text1": "\xff"}\n')
    with pytest.raises(CorpusError, match=":2: not valid UTF-8"):
        read_pairs(f)


def make_twitter_url(folder: Path, a: str, b: str, sim: str) -> Path:
    folder.mkdir()
    for name, text in [("a.toks", a), ("b.toks", b), ("sim.txt", sim)]:
        write(folder / name, text)
    return folder


def test_read_twitter_url_folder_and_member_files(tmp_path):
    # a vertical tab inside a tweet must not split the line
    folder = make_twitter_url(tmp_path / "tw", "x\x0by\nhello\n", "xy\nworld\n", "1\n0\n")
    expected = [Pair("x\x0by", "xy", 1), Pair("hello", "world", 0)]
    assert read_pairs(folder) == expected
    for name in ("a.toks", "b.toks", "sim.txt"):
        assert read_pairs(folder / name) == expected


def test_read_twitter_url_errors(tmp_path):
    uneven = make_twitter_url(tmp_path / "uneven", "a\nb\n", "c\n", "1\n0\n")
    with pytest.raises(CorpusError, match="1, 2 lines"):
        read_pairs(uneven)
    bad = make_twitter_url(tmp_path / "bad", "a\nb\n", "c\nd\n", "1\n0.5\n")
    with pytest.raises(CorpusError, match=r"sim.txt:2: expected a 0/1 label"):
        read_pairs(bad, fmt="twitter-url")


def test_read_twitter_url_raw_release(tmp_path):
    f = write(tmp_path / "raw.txt", "s1 \tt1 \t(5,6)\thttps://t.co/x\n\n"
                                    "s2\tt2\t(3,6)\thttps://t.co/x\n"
                                    "s3\tt3\t(2,6)\thttps://t.co/y\t\n")
    assert read_pairs(f) == [Pair("s1", "t1", 1), Pair("s3", "t3", 0)]


def test_read_pit2015(tmp_path):
    rows = [("(5, 0)", 1), ("(3, 2)", 1), ("(2, 3)", None), ("(1, 4)", 0), ("(0, 5)", 0),
            ("4", 1), ("3", None), ("2", 0)]
    text = "".join(f"1\tTopic\ts{k}\tt{k}\t{label}\tA/O\tB/O\n"
                   for k, (label, _) in enumerate(rows))
    pairs = read_pairs(write(tmp_path / "dev.data", text))
    assert pairs == [Pair(f"s{k}", f"t{k}", y) for k, (_, y) in enumerate(rows) if y is not None]
    bad = write(tmp_path / "bad.data", "1\tTopic\ts\tt\tmaybe\n")
    with pytest.raises(CorpusError, match="bad.data:1: expected a label"):
        read_pairs(bad)


def test_read_mrpc_bom_crlf_and_quotes(tmp_path):
    text = ('Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\r\n'
            '1\t1\t2\tHe said "hi, there\tShe said "hi"\r\n'
            '0\t3\t4\tA\tB\r\n')
    f = write(tmp_path / "msr_paraphrase_train.txt", "\ufeff" + text)
    assert read_pairs(f) == [Pair('He said "hi, there', 'She said "hi"', 1), Pair("A", "B", 0)]
    short = write(tmp_path / "msr_paraphrase_bad.txt", "Quality\tx\n1\t1\t2\tonly one\n")
    with pytest.raises(CorpusError, match=":2: expected 5 TAB-separated columns"):
        read_pairs(short)


def test_read_pairs_auto_sniffs_and_rejects(tmp_path):
    f = write(tmp_path / "pairs.txt", '{"text1": "a", "text2": "b", "label": true}\n')
    assert read_pairs(f) == [Pair("a", "b", 1)]
    with pytest.raises(ConfigError, match="cannot tell"):
        read_pairs(write(tmp_path / "mystery.txt", "a\tb\n"))
    with pytest.raises(ConfigError, match="unknown pair format"):
        read_pairs(f, fmt="csv")
    with pytest.raises(ConfigError, match="no such"):
        read_pairs(tmp_path / "absent.jsonl")


def test_read_sts_tsv_and_jsonl(tmp_path):
    tsv = write(tmp_path / "sts.csv", 'g\tf\t2012\t0001\t4.5\tA "quoted\tB\textra\tmore\n'
                                      "g\tf\t2012\t0002\t0\tC\tD\n")
    assert read_sts(tsv) == [StsPair('A "quoted', "B", 4.5), StsPair("C", "D", 0.0)]
    js = write(tmp_path / "sts.jsonl", '{"text1": "a", "text2": "b", "score": 3}\n')
    assert read_sts(js) == [StsPair("a", "b", 3.0)]
    bad = write(tmp_path / "bad.jsonl", '{"text1": "a", "text2": "b", "score": "high"}\n')
    with pytest.raises(CorpusError, match="bad.jsonl:1: expected a numeric score"):
        read_sts(bad)
    short = write(tmp_path / "short.csv", "g\tf\t2012\t1\t4.0\tonly\n")
    with pytest.raises(CorpusError, match="short.csv:1: expected 7"):
        read_sts(short)


# --------------------------------------------------------------------------- readers: real data

@needs_data
def test_real_twitter_url_train():
    pairs = read_pairs(DATA / "twitter-url" / "train")
    assert len(pairs) == 42_200 and sum(p.label for p in pairs) == 11_167


@needs_data
def test_real_twitter_url_raw_sample():
    pairs = read_pairs(DATA / "twitter-url" / "Twitter_URL_Corpus_train_sample.txt")
    assert 0 < len(pairs) <= 100 and all(p.text1 and p.text2 for p in pairs)


@needs_data
def test_real_mrpc_train():
    pairs = read_pairs(DATA / "mrpc" / "msr_paraphrase_train.txt")
    assert len(pairs) == 4_076 and sum(p.label for p in pairs) == 2_753
    assert pairs[0].text1.startswith("Amrozi accused his brother")


@needs_data
def test_real_pit2015_dev_drops_debatable():
    pairs = read_pairs(DATA / "pit2015" / "dev.data")
    # 4,727 rows - 585 debatable (2, 3) = 4,142: 1,470 paraphrases, 2,672 not
    assert len(pairs) == 4_142 and sum(p.label for p in pairs) == 1_470


@needs_data
def test_real_stsb_dev():
    pairs = read_sts(DATA / "stsb" / "sts-dev.csv")
    assert len(pairs) == 1_500
    assert pairs[0] == StsPair("A man with a hard hat is dancing.",
                               "A man wearing a hard hat is dancing.", 5.0)
    assert all(0 <= p.score <= 5 for p in pairs)


# --------------------------------------------------------------------------- shingle baseline

def test_char_shingles_use_social_normalisation():
    assert char_shingles("RT @x: Hello https://t.co/1", n=3) == {"hel", "ell", "llo"}
    assert char_shingles("Hi", n=5) == {"hi"}
    assert char_shingles("@only", n=5) == set()
    with pytest.raises(ValueError):
        char_shingles("abc", n=0)


def test_jaccard():
    assert jaccard({1, 2, 3}, {2, 3, 4}) == 0.5
    assert jaccard(set(), set()) == 1.0
    assert jaccard({1}, set()) == 0.0


def test_minhash_scores_estimate_jaccard():
    pytest.importorskip("datasketch")
    base = "the quick brown fox jumps over the lazy dog near the river bank today"
    pairs = [Pair(base, base, 1), Pair(base, base.replace("lazy", "sleepy"), 1),
             ("completely different words here", base), ("", "")]
    exact = jaccard_scores(pairs)
    est = minhash_scores(pairs, num_perm=256)
    assert est.shape == (4,) and est[0] == 1.0 and est[3] == 1.0
    np.testing.assert_allclose(est, exact, atol=0.12)
    assert est[2] < 0.2 < 0.5 < est[1] < 1.0


def test_prf_at_and_curve_table_agree_with_pr_curve():
    rng = np.random.default_rng(3)
    s, y = rng.random(200), rng.random(200) < 0.4
    curve = pr_curve(s, y)
    for k in (0, 50, 120):
        got = prf_at(s, y, curve["threshold"][k])
        assert got["precision"] == pytest.approx(curve["precision"][k]) and got["f1"] == pytest.approx(curve["f1"][k])
    assert prf_at(s, y, 2.0) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    rows = curve_table(s, y, step=0.25)
    assert [r["threshold"] for r in rows] == [0.0, 0.25, 0.5, 0.75, 1.0] and rows[0]["recall"] == 1.0


class _Enc:
    """"sale" texts share a vector; cats/dogs are orthogonal; counts encode calls."""

    def __init__(self):
        self.calls = 0

    def encode(self, texts, **_):
        self.calls += 1
        return np.array([[1.0, 0.0] if "sale" in t.lower() else [0.0, 1.0] if t == "cats" else [0.6, 0.8] for t in texts])


def test_pair_cosines_encode_each_text_once():
    from bellm_search.eval.cosines import pair_cosines

    enc = _Enc()
    seen = []
    enc.encode = (lambda f: (lambda texts, **kw: (seen.append(list(texts)), f(texts))[1]))(enc.encode)
    cos = pair_cosines([Pair("cats", "dogs", 0), ("cats", "big sale", 1), Pair("Sale", "big sale", 1)], enc)
    assert cos.tolist() == pytest.approx([0.8, 0.0, 1.0])
    assert len(seen) == 1 and sorted(seen[0]) == sorted({"cats", "dogs", "big sale", "Sale"})


def test_sts_score_is_spearman_of_cosines():
    from bellm_search.eval.sts import sts_score

    pairs = [StsPair("cats", "dogs", 2.0), StsPair("a sale", "big sale", 5.0), StsPair("cats", "sale", 0.0)]
    assert sts_score(pairs, _Enc()) == pytest.approx(100.0)
    with pytest.raises(ValueError):
        sts_score(pairs[:1], _Enc())


def test_eval_dedup_scores_pairs_with_the_pair_model_and_writes_scores(tmp_path):
    """`eval dedup` scores labelled pairs as dedup does (the pair model over cosine + lexical
    features), reports P/R/F1 at the model's threshold and writes each pair's score and decision."""
    from bellm_search.eval.pairs import evaluate_pairs
    from bellm_search.pairs.model import PairModel

    model = PairModel(("cosine", "jaccard5"), (1.0, 8.0), -4.0, 0.5, 10.0, -9.0, 0.9, cosine_floor=0.5)
    pairs = [Pair("Big sale today", "RT @x: big  SALE today", 1), Pair("cats", "dogs", 0), Pair("a sale", "Sale!", 0)]
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps({"text1": p.text1, "text2": p.text2, "label": p.label}) for p in pairs))
    out = tmp_path / "scores.jsonl"
    got = evaluate_pairs(str(path), "jsonl", {}, encoder=_Enc(), model=model, scores_out=out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["duplicate"] for r in rows] == [True, False, False]      # the copy only: Jaccard 1 vs low
    assert rows[0]["jaccard5"] == 1.0 and rows[0]["score"] > 0.5 > rows[2]["score"]
    assert got["ap"] == 1.0 and got["shipped"]["f1"] == 1.0 and got["score"] == "pair model probability"
    plain = evaluate_pairs(str(path), "jsonl", {}, encoder=_Enc(), model=model, pure_cosine=True)
    assert plain["score"] == "cosine" and "shipped" not in plain and plain["ap"] < 1.0
