"""Near-duplicate maths: normalisation, hashing, union-find, clusters, scores, keep policies."""
from __future__ import annotations

import numpy as np
import pytest

from bellm_search.dedup.graph import UnionFind, all_cluster_scores, clusters_from_pairs, weakest_links
from bellm_search.dedup.keep import choose_keep, parse_keep
from bellm_search.pairs.normalize import normalize_text, text_hash
from bellm_search.errors import ConfigError


def as_lists(clusters):
    return [c.tolist() for c in clusters]


# --------------------------------------------------------------------------- normalisation

@pytest.mark.parametrize("raw, plain", [
    ("  hello \t\n world  ", "hello world"),
    ("Ｆｕｌｌ　ｗｉｄｔｈ", "Full width"),        # NFKC: full-width letters and space
    ("ﬁne", "fine"),                               # NFKC: ligature
    ("Keep CASE @bob http://x.y", "Keep CASE @bob http://x.y"),  # plain mode keeps the rest
])
def test_normalize_plain(raw, plain):
    assert normalize_text(raw) == plain


@pytest.mark.parametrize("raw, social", [
    ("RT @bob: Great news!", "great news!"),
    ("RT: great news", "great news"),
    ("RT RT @a: @b: great news", "great news"),
    ("ART is great", "art is great"),                       # not a retweet marker
    ("Read this https://t.co/AbC123 now", "read this now"),
    ("see www.example.com/page and http://x.org", "see and"),
    ("pic pic.twitter.com/xyz", "pic"),
    ("thanks @alice_1 and @Bob for this", "thanks and for this"),
    ("write to me@example.com", "write to me@example.com"),  # e-mail is not a mention
    ("Big news via @cnn", "big news"),
    ("Big news (via @cnn)", "big news"),
    ("via @cnn big news", "via big news"),  # not a tail: only the mention goes
    ("I love #Python and #AI", "i love python and ai"),
    ("WOW!!!  So   good???", "wow! so good?"),
    ("Wait... what…", "wait. what."),
    ("soooo good 😂😂😂", "soooo good 😂"),  # letters kept, symbols collapsed
    ("Tom &amp; Jerry &lt;3", "tom & jerry <3"),
    ("STRASSE Straße", "strasse strasse"),                   # casefold
])
def test_normalize_social(raw, social):
    assert normalize_text(raw, social=True) == social


def test_social_normalisation_is_idempotent():
    samples = ["RT @x: Hello!!! http://a.b #Tag via @y", "  MiXeD   ÇASE ... ", "@a @b", ""]
    for s in samples:
        once = normalize_text(s, social=True)
        assert normalize_text(once, social=True) == once


def test_retweet_and_original_hash_equal_only_in_social_mode():
    tweet = "Big news about the launch https://t.co/1 #space"
    retweet = "RT @nasa: big  NEWS about the launch https://t.co/2 #Space"
    assert text_hash(tweet, social=True) == text_hash(retweet, social=True)
    assert text_hash(tweet) != text_hash(retweet)


def test_text_hash_is_16_bytes_and_whitespace_insensitive():
    h = text_hash("a  b")
    assert isinstance(h, bytes) and len(h) == 16
    assert h == text_hash(" a b\n")
    assert h != text_hash("a b c")


# --------------------------------------------------------------------------- union-find

def _reference_roots(n, a, b):
    """An independent oracle: a plain Python union-find."""
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x

    for x, y in zip(a.tolist(), b.tolist()):
        parent[find(x)] = find(y)
    return np.array([find(i) for i in range(n)])


def test_union_many_matches_a_reference_union_find():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 300, 200), rng.integers(0, 300, 200)
    vec = UnionFind(300)
    vec.union_many(a, b)
    same_vec = vec.roots()[:, None] == vec.roots()[None, :]
    same_ref = _reference_roots(300, a, b)
    assert (same_vec == (same_ref[:, None] == same_ref[None, :])).all()
    roots = vec.roots()
    assert (vec.size[roots] == np.bincount(roots)[roots]).all()


def test_union_many_twice_and_bad_positions():
    uf = UnionFind(4)
    uf.union_many(np.array([3]), np.array([2]))
    uf.union_many(np.array([0]), np.array([2]))
    roots = uf.roots()
    assert len(set(roots[[0, 2, 3]].tolist())) == 1 and roots[1] == 1 and uf.size[roots[0]] == 3
    with pytest.raises(ValueError, match="0..3"):
        uf.union_many(np.array([0]), np.array([4]))


# --------------------------------------------------------------------------- clusters

def test_clusters_chain_star_disconnected_and_singletons():
    ids = np.array([50, 10, 20, 30, 40, 60, 70, 80, 90])
    pi = np.array([30, 20, 90, 60, 60])
    pj = np.array([20, 10, 60, 70, 80])
    # chain 10-20-30, star 60-{70,80,90}, singletons 40 and 50
    assert as_lists(clusters_from_pairs(ids, pi, pj)) == [[10, 20, 30], [60, 70, 80, 90]]


def test_clusters_self_and_duplicate_pairs():
    ids = np.array([1, 2, 3, 4])
    pi = np.array([3, 3, 1, 2, 4])
    pj = np.array([3, 3, 2, 1, 4])
    # self pairs make no cluster; the repeated (1,2)/(2,1) pair is one edge
    assert as_lists(clusters_from_pairs(ids, pi, pj)) == [[1, 2]]


def test_clusters_ordered_by_smallest_member():
    ids = np.arange(10)
    pi, pj = np.array([9, 8, 0, 5]), np.array([1, 7, 6, 3])
    assert as_lists(clusters_from_pairs(ids, pi, pj)) == [[0, 6], [1, 9], [3, 5], [7, 8]]


def test_clusters_empty_and_long_chain():
    assert clusters_from_pairs(np.array([1, 2]), np.array([], int), np.array([], int)) == []
    n = 5000
    ids = np.arange(n) * 7
    order = np.random.default_rng(1).permutation(n - 1)
    clusters = clusters_from_pairs(ids, ids[order], ids[order + 1])
    assert len(clusters) == 1 and clusters[0].tolist() == ids.tolist()


def test_clusters_reject_unknown_ids_and_bad_input():
    with pytest.raises(ValueError, match="id 9"):
        clusters_from_pairs(np.array([1, 2]), np.array([1]), np.array([9]))
    with pytest.raises(ValueError, match="duplicates"):
        clusters_from_pairs(np.array([1, 1]), np.array([1]), np.array([1]))
    with pytest.raises(ValueError, match="length"):
        clusters_from_pairs(np.array([1, 2]), np.array([1, 2]), np.array([1]))


# --------------------------------------------------------------------------- cluster scores

def test_cluster_scores_vectorised_and_weakest_links():
    pi = np.array([1, 2, 5, 6, 9, 1])
    pj = np.array([2, 3, 6, 7, 9, 1])
    sc = np.array([0.9, 0.8, 0.95, 0.97, 1.0, 1.0])
    clusters = clusters_from_pairs(np.arange(10), pi, pj)
    assert as_lists(clusters) == [[1, 2, 3], [5, 6, 7]]
    mx, mn = all_cluster_scores(clusters, pi, pj, sc)                 # self pair 1-1 ignored
    np.testing.assert_allclose(mx, [0.9, 0.97])
    np.testing.assert_allclose(mn, [0.8, 0.95])
    assert weakest_links(clusters, pi, pj, sc).tolist() == [1, 2]     # (2, 3) at 0.8, (5, 6) at 0.95
    assert weakest_links([np.array([1, 2]), np.array([3, 4])], pi[:1], pj[:1], sc[:1]).tolist() == [0, -1]


def test_cluster_scores_nan_without_edges_and_overlap_rejected():
    mx, mn = all_cluster_scores([np.array([1, 2]), np.array([3, 4])],
                                np.array([1]), np.array([2]), np.array([0.5]))
    assert mx[0] == mn[0] == 0.5 and np.isnan(mx[1]) and np.isnan(mn[1])
    with pytest.raises(ValueError, match="overlap"):
        all_cluster_scores([np.array([1, 2]), np.array([2, 3])],
                           np.array([1]), np.array([2]), np.array([0.5]))


# --------------------------------------------------------------------------- keep policies

def test_parse_keep():
    assert parse_keep("first") == ("first", None)
    assert parse_keep("longest") == ("longest", None)
    assert parse_keep(" shortest ") == ("shortest", None)
    assert parse_keep("field:likes") == ("field", "likes")
    for bad in ["", "last", "field:", "field: ", "Longest", "likes"]:
        with pytest.raises(ConfigError, match="field:NAME"):
            parse_keep(bad)


RECORDS = {
    7: {"text": "abc", "likes": 5},
    3: {"text": "abcdef", "likes": 2},
    9: {"text": "abcdef", "likes": 5},
    4: {"text": "ab"},
    5: {"text": "ab", "likes": None},
}


def test_choose_keep_first_needs_no_records():
    assert choose_keep(np.array([9, 3, 7]), "first") == 3


@pytest.mark.parametrize("members, policy, expected", [
    ([9, 3, 7], "longest", 3),          # 3 and 9 tie at 6 chars -> smallest id
    ([9, 7], "longest", 9),
    ([9, 3, 7, 5, 4], "shortest", 4),   # 4 and 5 tie at 2 chars -> smallest id
    ([3, 7, 9], "field:likes", 7),      # 7 and 9 tie at 5 likes -> smallest id
    ([3, 4, 5], "field:likes", 3),      # missing / None rank lowest
    ([4, 5], "field:likes", 4),         # all missing -> smallest id
])
def test_choose_keep_policies_and_ties(members, policy, expected):
    assert choose_keep(np.array(members), policy, RECORDS) == expected
    assert choose_keep(np.array(members), policy, RECORDS.__getitem__) == expected


def test_choose_keep_field_nan_and_incomparable():
    recs = {1: {"s": float("nan")}, 2: {"s": 0.5}, 3: {"s": "high"}}
    assert choose_keep([1, 2], "field:s", recs) == 2
    with pytest.raises(ConfigError, match="field:s"):
        choose_keep([2, 3], "field:s", recs)


def test_choose_keep_errors():
    with pytest.raises(ValueError, match="records"):
        choose_keep([1, 2], "longest")
    with pytest.raises(ValueError, match="at least one"):
        choose_keep([], "first")
    with pytest.raises(ConfigError):
        choose_keep([1], "biggest", RECORDS)


def test_keep_first_uses_a_promoted_copys_arrival_order():
    from bellm_search.corpus import SEEN

    records = {3: {"text": "a"}, 7: {"text": "b", SEEN: 1}, 5: {"text": "c"}}
    assert choose_keep([3, 5, 7], "first") == 3  # ids only: the smallest
    assert choose_keep([3, 5, 7], "first", records) == 7  # 7 arrived as 1
    assert choose_keep([3, 5], "first", records) == 3
