"""The merged-model cache (encoder/model_cache.py): same vectors as merging, correct invalidation."""
from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch

from bellm_search.encoder import loading, model_cache
from bellm_search.encoder.encode import Encoder
from test_encoder import SENTENCES, _random_lora, tiny


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private cache folder; tiny models are cached too (they are below MIN_BYTES otherwise)."""
    monkeypatch.setenv("BELLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(model_cache, "MIN_BYTES", 0)
    return tmp_path / "cache" / "models" / "merged"


def _adapter(tiny_root, tmp_path, name="adapter", seed=1):
    peft_model = _random_lora(tiny(tiny_root), target_causal_lm=False)
    if seed != 1:
        torch.manual_seed(seed)
        for pname, p in peft_model.named_parameters():
            if "lora_B" in pname:
                torch.nn.init.normal_(p, std=0.5)
    folder = tmp_path / name
    peft_model.save_pretrained(folder)
    return str(folder)


def _encode(tiny_root, adapter, dtype="float32"):
    enc = Encoder(model=tiny(tiny_root), adapter=adapter, dtype=dtype, bidirectional_layers=2,
                  prompt='The representative word for sentence {text} is:"')
    return enc.encode(SENTENCES)


def _entries(cache):
    return sorted(p.name for p in cache.iterdir() if (p / model_cache.MARKER).is_file()) if cache.is_dir() else []


def _no_peft(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the adapter was merged again instead of read from the cache")

    monkeypatch.setattr(loading, "apply_adapter", refuse)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cached_load_gives_the_merged_vectors(tiny_root, tmp_path, cache, monkeypatch, dtype):
    adapter = _adapter(tiny_root, tmp_path)
    monkeypatch.setenv("BELLM_MODEL_CACHE", "0")
    uncached = _encode(tiny_root, adapter, dtype)
    assert _entries(cache) == []
    monkeypatch.delenv("BELLM_MODEL_CACHE")
    first = _encode(tiny_root, adapter, dtype)  # merges and stores
    assert len(_entries(cache)) == 1
    with monkeypatch.context() as m:
        _no_peft(m)
        second = _encode(tiny_root, adapter, dtype)  # loads the stored weights, no merge
    assert np.array_equal(first, uncached) and np.array_equal(second, uncached)  # bitwise, both dtypes


def test_other_adapter_dtype_or_base_never_reuse_an_entry(tiny_root, tmp_path, cache, monkeypatch):
    a, b = _adapter(tiny_root, tmp_path, "a"), _adapter(tiny_root, tmp_path, "b", seed=7)
    va = _encode(tiny_root, a)
    vb = _encode(tiny_root, b)
    assert len(_entries(cache)) == 2 and np.abs(va - vb).max() > 1e-2
    _encode(tiny_root, a, "bfloat16")
    assert len(_entries(cache)) == 3
    # the base model's weights change on disk (same path): a new key, not the stale merge
    weights = next(p for p in (tiny_root / "tiny-llama").iterdir() if p.suffix == ".safetensors")
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    key = model_cache.cache_key(tiny_root / "tiny-llama", tmp_path / "a", "float32")
    assert model_cache.lookup(key) is None
    # and rewritten adapter weights in the same folder are a different adapter
    (tmp_path / "a" / "adapter_model.safetensors").write_bytes((tmp_path / "b" / "adapter_model.safetensors").read_bytes())
    assert np.array_equal(_encode(tiny_root, a), vb)


def test_half_written_or_foreign_entry_is_never_used(tiny_root, tmp_path, cache, monkeypatch):
    adapter = _adapter(tiny_root, tmp_path)
    good = _encode(tiny_root, adapter)
    (entry,) = _entries(cache)
    marker = cache / entry / model_cache.MARKER
    key = model_cache.read_json_object(marker)
    # a writer killed before its marker: the weights there are garbage, the entry must be ignored
    marker.unlink()
    weights = cache / entry / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert model_cache.lookup(key) is None
    assert np.array_equal(_encode(tiny_root, adapter), good)  # merged again, entry rewritten
    assert model_cache.lookup(key) is not None
    # a marker holding another key (a digest collision) is not trusted
    model_cache.write_json_atomic(marker, {**key, "dtype": "float16"})
    assert model_cache.lookup(key) is None


def test_unwritable_cache_only_costs_time(tiny_root, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(model_cache, "MIN_BYTES", 0)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("BELLM_CACHE", str(blocker))
    adapter = _adapter(tiny_root, tmp_path)
    with caplog.at_level(logging.WARNING):
        vecs = _encode(tiny_root, adapter)
    assert "could not cache the merged model" in caplog.text
    monkeypatch.setenv("BELLM_MODEL_CACHE", "off")
    assert np.array_equal(vecs, _encode(tiny_root, adapter))


def test_small_models_are_not_cached(tiny_root, tmp_path, monkeypatch):
    monkeypatch.setenv("BELLM_CACHE", str(tmp_path / "cache"))
    _encode(tiny_root, _adapter(tiny_root, tmp_path))  # MIN_BYTES as shipped: tiny models merge in ms
    assert not (tmp_path / "cache" / "models" / "merged").exists()


def test_prune_keeps_the_newest_entries_and_live_writers(tmp_path):
    root = tmp_path / "merged"
    for i in range(5):
        entry = root / f"e{i}"
        entry.mkdir(parents=True)
        (entry / model_cache.MARKER).write_text("{}")
        os.utime(entry / model_cache.MARKER, (1000 + i, 1000 + i))
    (root / "writing").mkdir()  # no marker yet, recent: another process is writing it
    (root / ".save-old").mkdir()
    os.utime(root / ".save-old", (1, 1))
    model_cache.prune(root, keep=root / "e0")
    assert sorted(p.name for p in root.iterdir()) == ["e0", "e2", "e3", "e4", "writing"]
