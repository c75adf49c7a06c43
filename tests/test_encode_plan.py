"""Batch planning with bounded padding (encoder/encode.py::plan_batches)."""
from __future__ import annotations

import functools

import numpy as np
import pytest

from bellm_search.encoder import encode as encode_mod
from test_encoder import SENTENCES, encoder, tiny


def _padding(lengths, batches) -> float:
    return sum(len(b) * lengths[b].max() for b in batches) / lengths.sum() - 1


def tweet_like(n=2000, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(27), 0.3, n).astype(int), 8, 70)


@pytest.mark.parametrize("seed", range(5))
def test_plan_bounds_padding_and_keeps_budget(seed):
    lengths = tweet_like(seed=seed)
    batches = encode_mod.plan_batches(lengths, max_tokens=8192, max_batch=256)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 256 and len(b) * lengths[b].max() <= 8192
        tail = lengths[b][encode_mod.MIN_ROWS:]
        assert (tail >= lengths[b].max() * (1 - encode_mod.MAX_PAD)).all()
    # the budget alone pads ~10 % of the tokens on such lengths; the bound keeps it near 2 %
    assert _padding(lengths, encode_mod.plan_batches(lengths, 8192, 256, max_pad=1.0)) > 0.06
    assert _padding(lengths, batches) < 0.04


def test_plan_keeps_at_least_min_rows_and_handles_edge_cases():
    assert [b.tolist() for b in encode_mod.plan_batches(np.array([3]), 100, 8)] == [[0]]
    assert encode_mod.plan_batches(np.array([], dtype=int), 100, 8) == []
    lengths = np.array([40, 10, 10, 10])  # steep drop: still min_rows rows in the first batch
    assert [len(b) for b in encode_mod.plan_batches(lengths, 1000, 8, min_rows=2)] == [2, 2]
    assert [len(b) for b in encode_mod.plan_batches(np.array([500, 400]), 100, 8)] == [1, 1]  # over budget: alone


def test_vectors_do_not_depend_on_the_plan(tiny_root, monkeypatch):
    texts = SENTENCES * 6 + [s + " and the dog is playing piano today" * k for s in SENTENCES for k in (1, 2)]
    enc = encoder(tiny(tiny_root), bidirectional_layers=2, max_batch_tokens=200,
                  prompt='The representative word for sentence {text} is:"')
    bounded = enc.encode(texts)
    monkeypatch.setattr(encode_mod, "plan_batches", functools.partial(encode_mod.plan_batches, max_pad=1.0))
    assert np.abs(enc.encode(texts) - bounded).max() < 1e-5
