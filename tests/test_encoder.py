"""Encoder behaviour on tiny random-weight models of several families (fast)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from bellm_search.config import EncoderConfig
from bellm_search.encoder.bidirectional import decoder_layers, make_bidirectional, padding_only_mask
from bellm_search.encoder.encode import Encoder, pad_batch, plan_batches
from bellm_search.encoder.loading import load_base_model, write_adapter_json
from bellm_search.encoder.pooling import last_token_index, last_token_pool, mean_pool
from bellm_search.errors import ConfigError, ModelError
from scripts_loader import load_script
from tiny_models import FAMILIES, make_model_folder

SENTENCES = [
    "a man is playing guitar",
    "the dog",
    "stock market crashed today and the news is bad for the city",
    "",
    "a woman plays piano!",
    "cat",
]


def tiny(tiny_root, family="llama"):
    return str(make_model_folder(tiny_root, family))


def encoder(path, **kw) -> Encoder:
    kw.setdefault("dtype", "float32")
    kw.setdefault("adapter", "none")
    return Encoder(model=path, **kw)


# ----------------------------------------------------------------------------- bidirectional layers
def _hidden_states(model, ids):
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)
    return out.hidden_states


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_top_layers_see_later_tokens_lower_layers_do_not(tiny_root, family, attn):
    model = load_base_model(tiny(tiny_root, family), torch.float32, attn).eval()
    make_bidirectional(model, 2)
    n = len(decoder_layers(model))
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    changed = ids.clone()
    changed[0, -1] = 42
    with torch.no_grad():
        a, b = _hidden_states(model, ids), _hidden_states(model, changed)
    for layer in range(1, n - 2 + 1):  # hidden_states[i] = output of layer i-1; causal layers
        assert torch.allclose(a[layer][0, 0], b[layer][0, 0], atol=1e-6), layer
    assert not torch.allclose(a[n - 1][0, 0], b[n - 1][0, 0], atol=1e-4)  # first bidirectional layer


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_causal_model_ignores_later_tokens(tiny_root, family):
    model = load_base_model(tiny(tiny_root, family), torch.float32, "sdpa").eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    changed = ids.clone()
    changed[0, -1] = 42
    with torch.no_grad():
        a, b = _hidden_states(model, ids), _hidden_states(model, changed)
    assert torch.allclose(a[-1][0, 0], b[-1][0, 0], atol=1e-6)


def test_k1_last_token_equals_causal_but_k2_does_not(tiny_root):
    path = tiny(tiny_root)
    v0 = encoder(path, bidirectional_layers=0).encode(SENTENCES)
    v1 = encoder(path, bidirectional_layers=1).encode(SENTENCES)
    v2 = encoder(path, bidirectional_layers=2).encode(SENTENCES)
    assert np.abs(v0 - v1).max() < 1e-5
    assert np.abs(v0 - v2).max() > 1e-3
    m0 = encoder(path, bidirectional_layers=0, pooling="mean").encode(SENTENCES)
    m1 = encoder(path, bidirectional_layers=1, pooling="mean").encode(SENTENCES)
    assert np.abs(m0 - m1).max() > 1e-3  # with mean pooling k=1 matters


def test_too_many_bidirectional_layers(tiny_root):
    model = load_base_model(tiny(tiny_root), torch.float32, None)
    with pytest.raises(ValueError, match="only 4 layers"):
        make_bidirectional(model, 5)


# ----------------------------------------------------------------------------- padding and order
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_alone_equals_padded_batch(tiny_root, family, side, attn):
    for pooling in ("last", "mean"):
        enc = encoder(tiny(tiny_root, family), bidirectional_layers=2, padding_side=side,
                      attn_implementation=attn, pooling=pooling)
        batch = enc.encode(SENTENCES)
        alone = np.stack([enc.encode([s])[0] for s in SENTENCES])
        assert np.abs(batch - alone).max() < 1e-4, (family, side, attn, pooling)


def test_order_restored_across_small_batches(tiny_root):
    enc = encoder(tiny(tiny_root), bidirectional_layers=2, batch_size=2, max_batch_tokens=40)
    texts = SENTENCES * 3
    got = enc.encode(texts)
    assert got.shape == (len(texts), enc.dim)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    for i, t in enumerate(texts):
        assert np.abs(got[i] - enc.encode([t])[0]).max() < 1e-4


def test_plan_batches_respects_budget_and_covers_all():
    lengths = np.array([5, 50, 7, 50, 1, 30, 30, 2])
    batches = plan_batches(lengths, max_tokens=100, max_batch=3)
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 3 and len(b) * lengths[b].max() <= 100 or len(b) == 1
    assert lengths[batches[0]].tolist() == [50, 50]  # longest first


def test_pad_batch_sides():
    ids, mask = pad_batch([[1, 2, 3], [4]], pad_id=0, side="left")
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = pad_batch([[1, 2, 3], [4]], pad_id=0, side="right")
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


# ----------------------------------------------------------------------------- pooling maths
def test_pooling_on_hand_made_tensors():
    hidden = torch.arange(2 * 4 * 2, dtype=torch.float32).reshape(2, 4, 2)
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 0, 1]])
    assert last_token_index(right).tolist() == [2, 3]
    assert last_token_index(left).tolist() == [3, 3]
    assert last_token_pool(hidden, right).tolist() == [[4.0, 5.0], [14.0, 15.0]]
    assert mean_pool(hidden, right).tolist() == [[2.0, 3.0], [11.0, 12.0]]
    assert mean_pool(hidden, left).tolist() == [[4.0, 5.0], [14.0, 15.0]]


def test_padding_only_mask_hides_pad_keys_only():
    mask = padding_only_mask(torch.tensor([[0, 1, 1]]), torch.float32, "sdpa")
    assert mask.shape == (1, 1, 3, 3)
    assert (mask[0, 0, :, 0] < -1e30).all() and (mask[0, 0, :, 1:] == 0).all()
    assert padding_only_mask(torch.ones(2, 3, dtype=torch.long), torch.float32, "sdpa") is None


# ----------------------------------------------------------------------------- truncation, errors
def test_truncation_keeps_prompt_end_and_warns(tiny_root, caplog):
    enc = encoder(tiny(tiny_root), max_length=24)
    long_text = " ".join(["guitar"] * 200)
    with caplog.at_level(logging.WARNING):
        ids = enc.tokenize([long_text, "cat"])
    assert len(ids[0]) <= 24 and enc.truncated == 1
    suffix = enc.tokenizer('is:"', add_special_tokens=False)["input_ids"]
    assert ids[0][-len(suffix):] == suffix
    assert "truncated" in caplog.text
    assert enc.encode([long_text]).shape == (1, enc.dim)


def test_unknown_model_and_missing_adapter_are_clear(tmp_path):
    with pytest.raises(ModelError, match="--model"):
        Encoder(model=str(tmp_path / "nope"), adapter="none")
    with pytest.raises(ModelError, match="adapter_config.json"):
        Encoder(model=str(tmp_path), adapter=str(tmp_path / "missing"))


def test_config_validation():
    with pytest.raises(ConfigError):
        EncoderConfig(pooling="max")
    with pytest.raises(ConfigError, match="{text}"):
        EncoderConfig(prompt="no placeholder")


# ----------------------------------------------------------------------------- GPU paths by injection
def test_oom_halves_batch_and_result_is_identical(tiny_root, monkeypatch):
    enc = encoder(tiny(tiny_root), bidirectional_layers=2)
    expected = enc.encode(SENTENCES)
    real = Encoder._embed
    calls = []

    def flaky(self, replica, batch):
        calls.append(len(batch))
        if len(batch) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return real(self, replica, batch)

    monkeypatch.setattr(Encoder, "_embed", flaky)
    got = enc.encode(SENTENCES)
    assert np.abs(got - expected).max() < 1e-5
    assert calls[0] == len(SENTENCES) and max(calls[1:]) <= 3 and enc.max_batch <= 3


def test_other_errors_are_not_swallowed(tiny_root, monkeypatch):
    enc = encoder(tiny(tiny_root))
    monkeypatch.setattr(Encoder, "_embed", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        enc.encode(SENTENCES)


def test_several_replicas_give_same_vectors(tiny_root):
    path = tiny(tiny_root)
    one = encoder(path, bidirectional_layers=2, batch_size=2).encode(SENTENCES * 2)
    two_enc = encoder(path, bidirectional_layers=2, batch_size=2, device="cpu,cpu")
    assert len(two_enc.replicas) == 2
    assert np.abs(two_enc.encode(SENTENCES * 2) - one).max() < 1e-5


# ----------------------------------------------------------------------------- adapters
def _random_lora(model_path, target_causal_lm: bool):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel, AutoModelForCausalLM

    torch.manual_seed(1)
    cls = AutoModelForCausalLM if target_causal_lm else AutoModel
    base = cls.from_pretrained(model_path, dtype=torch.float32)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                     task_type="CAUSAL_LM" if target_causal_lm else None)
    peft_model = get_peft_model(base, cfg)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    return peft_model


def test_adapter_round_trip_with_bellm_json(tiny_root, tmp_path):
    path = tiny(tiny_root)
    peft_model = _random_lora(path, target_causal_lm=False)
    folder = tmp_path / "adapter"
    peft_model.save_pretrained(folder)
    cfg = EncoderConfig(model=path, bidirectional_layers=2, pooling="mean", max_length=64)
    write_adapter_json(folder, cfg)
    enc = Encoder(adapter=str(folder), dtype="float32")  # everything else from the JSON
    assert (enc.config.model, enc.config.bidirectional_layers, enc.config.pooling) == (path, 2, "mean")
    plain = encoder(path, bidirectional_layers=2, pooling="mean").encode(SENTENCES)
    with_adapter = enc.encode(SENTENCES)
    assert np.abs(plain - with_adapter).max() > 1e-2  # the adapter changes the vectors
    # reference: the unmerged peft model, made bidirectional, pooled by hand
    make_bidirectional(peft_model.get_base_model(), 2)
    peft_model.eval()
    ids = enc.tokenize(SENTENCES[:1])
    with torch.no_grad():
        h = peft_model(input_ids=torch.tensor(ids)).last_hidden_state
    ref = torch.nn.functional.normalize(h.mean(1), dim=-1)[0].numpy()
    assert np.abs(ref - with_adapter[0]).max() < 1e-4
    saved = json.loads((folder / "bellm_adapter.json").read_text())
    assert saved["prompt"] == "{text}" and saved["max_length"] == 64


def test_bare_peft_adapter_from_causal_lm_with_flags(tiny_root, tmp_path):
    """The paper's checkpoint is a plain peft adapter saved from a *ForCausalLM."""
    path = tiny(tiny_root)
    peft_model = _random_lora(path, target_causal_lm=True)
    folder = tmp_path / "bare"
    peft_model.save_pretrained(folder)
    assert not (folder / "bellm_adapter.json").exists()
    enc = Encoder(adapter=str(folder), bidirectional_layers=2, pooling="last",
                  prompt='The representative word for sentence {text} is:"', dtype="float32")
    assert enc.config.model == path  # base taken from adapter_config.json
    got = enc.encode(SENTENCES)
    make_bidirectional(peft_model.get_base_model().model, 2)
    peft_model.eval()
    ids = enc.tokenize(SENTENCES[:1])
    with torch.no_grad():
        h = peft_model.get_base_model().model(input_ids=torch.tensor(ids)).last_hidden_state
    ref = torch.nn.functional.normalize(h[0, -1], dim=-1).numpy()
    assert np.abs(ref - got[0]).max() < 1e-4


def test_adapter_for_other_model_is_refused(tiny_root, tmp_path):
    peft_model = _random_lora(tiny(tiny_root, "llama"), target_causal_lm=False)
    peft_model.save_pretrained(tmp_path / "a")
    with pytest.raises(ModelError):
        Encoder(model=str(make_model_folder(tiny_root, "llama", layers=2)), adapter=str(tmp_path / "a"),
                dtype="float32")


# ----------------------------------------------------------------------------- prompt-prefix reuse
BELLM = 'The representative word for sentence {text} is:"'


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_prefix_reuse_equals_full_path(tiny_root, family, side, attn, monkeypatch):
    path = tiny(tiny_root, family)
    for pooling in ("last", "mean"):
        kw = dict(bidirectional_layers=2, padding_side=side, attn_implementation=attn, pooling=pooling, prompt=BELLM)
        full = encoder(path, reuse_prefix=False, **kw).encode(SENTENCES)
        enc = encoder(path, **kw)
        assert enc.runners[0] is not None and enc.runners[0].length >= 5
        used = []
        real = Encoder._embed_prefixed
        monkeypatch.setattr(Encoder, "_embed_prefixed", lambda self, *a: used.append(1) or real(self, *a))
        got = enc.encode(SENTENCES)
        monkeypatch.undo()
        assert used, "the prefix path was not taken"
        assert np.abs(got - full).max() < 1e-4, (family, side, attn, pooling)


def test_prefix_reuse_across_batches_and_k0(tiny_root):
    path = tiny(tiny_root)
    texts = SENTENCES * 3
    for k in (0, 1, 3):
        kw = dict(bidirectional_layers=k, prompt=BELLM, batch_size=2, max_batch_tokens=60)
        full = encoder(path, reuse_prefix=False, **kw).encode(texts)
        assert np.abs(encoder(path, **kw).encode(texts) - full).max() < 1e-4, k


def test_rows_without_the_prefix_take_the_full_path(tiny_root):
    enc = encoder(tiny(tiny_root), bidirectional_layers=2, prompt=BELLM)
    runner = enc.runners[0]
    rows = enc.tokenize(["cat", "dog"])
    assert runner.fits(rows)
    assert not runner.fits([rows[0], [7] + rows[1][1:]])  # one row's prefix differs
    assert not runner.fits([rows[0], rows[1][:runner.length]])  # nothing after the prefix
    assert encoder(tiny(tiny_root), prompt="{text}", pooling="mean").runners[0] is None


def test_prefix_reuse_that_disagrees_is_switched_off(tiny_root, monkeypatch, caplog):
    from bellm_search.encoder.prefix import PrefixRunner

    real = PrefixRunner.forward
    monkeypatch.setattr(PrefixRunner, "forward", lambda self, ids, mask: (lambda h, m: (h.flip(1), m))(*real(self, ids, mask)))
    with caplog.at_level(logging.WARNING):
        enc = encoder(tiny(tiny_root), bidirectional_layers=2, prompt=BELLM, pooling="mean", padding_side="left")
    assert enc.runners[0] is None and "disagrees" in caplog.text
    monkeypatch.undo()
    full = encoder(tiny(tiny_root), bidirectional_layers=2, prompt=BELLM, pooling="mean", padding_side="left",
                   reuse_prefix=False)
    assert np.abs(enc.encode(SENTENCES) - full.encode(SENTENCES)).max() < 1e-5


# ----------------------------------------------------------------------------- int8
def test_int8_quantises_linear_layers_and_stays_close(tiny_root):
    path = tiny(tiny_root)
    ref = encoder(path, bidirectional_layers=2, prompt=BELLM).encode(SENTENCES)
    enc = encoder(path, bidirectional_layers=2, prompt=BELLM, dtype="int8")
    linear = [type(m) for m in enc.replicas[0].modules() if type(m).__name__ == "Linear"]
    assert linear and all("quantized" in t.__module__ for t in linear)
    assert enc.runners[0] is not None  # prefix reuse stays on (within bf16-like agreement)
    got = enc.encode(SENTENCES)
    assert enc.dtype == torch.float32
    assert (got * ref).sum(1).min() > 0.98
    assert np.abs(got - ref).max() > 1e-6  # it really is another arithmetic


def test_explicit_bf16_on_a_cpu_without_bf16_warns_and_auto_picks_float32(monkeypatch, caplog):
    from bellm_search.encoder import loading

    cpu = torch.device("cpu")
    monkeypatch.setattr(loading, "cpu_supports_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="bellm_search.encoder.loading"):
        assert loading.resolve_dtype("auto", cpu) == torch.float32
        assert not caplog.records
        assert loading.resolve_dtype("bfloat16", cpu) == torch.bfloat16
    assert "without bf16 instructions" in caplog.text
    caplog.clear()
    monkeypatch.setattr(loading, "cpu_supports_bf16", lambda: True)
    with caplog.at_level(logging.WARNING, logger="bellm_search.encoder.loading"):
        assert loading.resolve_dtype("auto", cpu) == torch.bfloat16
        assert loading.resolve_dtype("bfloat16", cpu) == torch.bfloat16
    assert not caplog.records


def test_int8_is_cpu_only():
    from bellm_search.encoder.loading import resolve_dtype

    with pytest.raises(ConfigError, match="CPU only"):
        resolve_dtype("int8", torch.device("cuda"))


def test_truncated_model_folder_computes_the_first_layers_exactly(tmp_path, tiny_llama):
    """scripts/truncate_model.py (issue 15's speed row): a folder of the first N layers whose output
    is the full model's state after layer N (final norm applied), and refuses an impossible N."""
    from transformers import AutoModel

    mod = load_script("truncate_model")
    out = mod.truncate(tiny_llama, 2, tmp_path / "first2")
    full = AutoModel.from_pretrained(tiny_llama, torch_dtype=torch.float32).eval()
    cut = AutoModel.from_pretrained(out, torch_dtype=torch.float32).eval()
    assert len(cut.layers) == 2 < len(full.layers)
    ids = torch.tensor([[5, 9, 13, 2, 7]])
    with torch.no_grad():
        ref = full.norm(full(input_ids=ids, output_hidden_states=True).hidden_states[2])
        got = cut(input_ids=ids).last_hidden_state
    assert torch.allclose(got, ref, atol=1e-6)
    with pytest.raises(SystemExit, match="between 1 and"):
        mod.truncate(tiny_llama, len(full.layers) + 1, tmp_path / "too-many")


def test_block_influence_is_zero_for_a_layer_that_returns_its_input(tiny_llama):
    """scripts/bench_layer_drop.py ranks layers by 1 - cos(input, output): a layer whose two output
    projections are zero adds nothing to the residual stream, so its influence is 0 and it is the
    first one the script would drop; the other layers turn their input (> 0)."""
    mod = load_script("bench_layer_drop")
    enc = encoder(str(tiny_llama), bidirectional_layers=1, reuse_prefix=False)
    layers = mod.decoder_layers(enc.replicas[0])
    with torch.no_grad():
        layers[2].self_attn.o_proj.weight.zero_()
        layers[2].mlp.down_proj.weight.zero_()
    influence = mod.block_influence(enc, SENTENCES)
    assert len(influence) == len(layers)
    assert influence[2] < 1e-6
    assert min(b for i, b in enumerate(influence) if i != 2) > 1e-4


def test_model_written_without_dropped_layers_equals_dropping_them_in_place(tmp_path, tiny_llama):
    """bench_layer_drop.py --write: the saved folder (layers renumbered) loads as a plain model whose
    vectors are those of the loaded encoder with the same layers removed in place."""
    from torch import nn

    mod = load_script("bench_layer_drop")
    enc = encoder(str(tiny_llama), bidirectional_layers=1, reuse_prefix=False)
    full = list(decoder_layers(enc.replicas[0]))
    mod.write_dropped(enc, full, [1], tmp_path / "dropped")
    again = encoder(str(tiny_llama), bidirectional_layers=1, reuse_prefix=False)
    layers = list(decoder_layers(again.replicas[0]))
    mod.layer_owner(again.replicas[0]).layers = nn.ModuleList([layers[0]] + layers[2:])
    saved = encoder(str(tmp_path / "dropped"), bidirectional_layers=1, reuse_prefix=False)
    assert len(decoder_layers(saved.replicas[0])) == len(full) - 1
    np.testing.assert_allclose(saved.encode(SENTENCES), again.encode(SENTENCES), atol=1e-5)
    assert not np.allclose(saved.encode(SENTENCES), encoder(str(tiny_llama), bidirectional_layers=1).encode(SENTENCES), atol=1e-3)
