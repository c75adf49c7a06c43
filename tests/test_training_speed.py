"""The packed top-layer path (training/packed.py) against the padded Hugging Face path: values,
gradients, fallbacks, and a trained adapter that the encoder loads."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bellm_search.training import model as M
from bellm_search.training.packed import packed_top_forward

LENGTHS = [5, 9, 3, 12, 7, 12, 1, 20, 4]


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def build(folder: Path, dtype: torch.dtype, dropout: float = 0.0, k: int = 2, round_base: bool = False):
    """Tiny model, LoRA on the top 3 of 4 layers (k bidirectional), random non-zero LoRA B."""
    torch.manual_seed(0)
    model, base, start = M.build_model(str(folder), dtype, torch.device("cpu"), bidirectional_layers=k,
                                       train_layers=3, lora_r=8, lora_alpha=16, lora_dropout=dropout,
                                       lora_targets=M.ALL_LINEAR)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            elif round_base and not p.requires_grad:  # the float32 reference of a bf16 model
                p.copy_(p.bfloat16().to(p.dtype))
    return model, base, start


def states(dtype: torch.dtype, hidden: int = 64) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(n, hidden, generator=gen).bfloat16().to(dtype) for n in LENGTHS]


def forward_backward(model, base, start, xs, pooling: str, packed: bool, autocast: bool):
    """Pooled output and the gradient of every LoRA weight (one flat vector) of a made-up loss."""
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        if packed:
            out = packed_top_forward(base, start, xs, pooling)
            assert out is not None, "the packed path did not run"
        else:
            out = M.padded_top_forward(base, start, xs, pooling)
    loss = (out.float() ** 2).sum() + out.float()[:, :5].sum()
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
    return out.detach().float(), grads


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference relative to the largest magnitude of the reference ``b``."""
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def family_folder(tiny_root):
    from tiny_models import make_model_folder

    return lambda family: make_model_folder(tiny_root, family)


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("pooling,k", [("last", 2), ("mean", 2), ("last", 0), ("mean", 3)])
def test_packed_equals_padded_in_float32(family_folder, family, pooling, k):
    model, base, start = build(family_folder(family), torch.float32, k=k)
    xs = states(torch.float32)
    ref_out, ref_grad = forward_backward(model, base, start, xs, pooling, packed=False, autocast=False)
    out, grad = forward_backward(model, base, start, xs, pooling, packed=True, autocast=False)
    assert out.shape == (len(LENGTHS), 64) and ref_grad.abs().max() > 0
    assert rel(out, ref_out) < 1e-5, rel(out, ref_out)
    assert rel(grad, ref_grad) < 1e-3, rel(grad, ref_grad)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_packed_in_bf16_is_as_close_to_float32_as_the_padded_path(tiny_llama, pooling):
    """bf16 autocast: the forward values are the padded path's (the same roundings); gradients
    differ at bf16 rounding level (fused products round once), no further from float32 than it."""
    ref_out, ref_grad = forward_backward(*build(tiny_llama, torch.float32, round_base=True), states(torch.float32),
                                         pooling, packed=False, autocast=False)
    pad_out, pad_grad = forward_backward(*build(tiny_llama, torch.bfloat16), states(torch.bfloat16), pooling,
                                         packed=False, autocast=True)
    out, grad = forward_backward(*build(tiny_llama, torch.bfloat16), states(torch.bfloat16), pooling,
                                 packed=True, autocast=True)
    assert rel(out, pad_out) < 1e-2 and rel(grad, pad_grad) < 2e-2, (rel(out, pad_out), rel(grad, pad_grad))
    assert rel(grad, ref_grad) <= 1.25 * rel(pad_grad, ref_grad) + 1e-4, (rel(grad, ref_grad), rel(pad_grad, ref_grad))
    assert rel(out, ref_out) <= 1.25 * rel(pad_out, ref_out) + 1e-4


def test_unhandled_cases_fall_back_to_the_padded_path(tiny_root, tiny_llama):
    from tiny_models import make_model_folder

    model, base, start = build(tiny_llama, torch.float32, dropout=0.1)
    xs = states(torch.float32)
    model.train()
    assert packed_top_forward(base, start, xs, "last") is None  # peft's per-module dropout draws
    model.eval()
    assert packed_top_forward(base, start, xs, "last") is not None  # dropout is off in eval mode
    model, base, start = build(make_model_folder(tiny_root, "qwen3"), torch.float32)  # q/k norms: not handled
    assert packed_top_forward(base, start, xs, "last") is None
    assert torch.allclose(M.top_forward(base, start, xs, "last"), M.padded_top_forward(base, start, xs, "last"))


def test_an_adapter_trained_packed_matches_padded_and_loads_in_the_encoder(tmp_path, tiny_llama):
    from test_train import SENTENCES, lora_weights, tiny_cfg, write_dev

    from bellm_search.cli.train import dev_scorer
    from bellm_search.encoder import Encoder
    from bellm_search.eval.datasets import read_sts
    from bellm_search.eval.sts import sts_score
    from bellm_search.training.loop import train

    dev = write_dev(tmp_path / "dev.jsonl")
    outs = {}
    for packed in (False, True):
        cfg = tiny_cfg(tmp_path, tiny_llama, output=str(tmp_path / f"packed-{packed}"), dev=str(dev),
                       lora_dropout=0.0, packed=packed, pad_slack=1e9)
        outs[packed] = train(cfg, dev_scorer(dev, []))
    meta = {p: json.loads((o / "bellm_adapter.json").read_text())["training"] for p, o in outs.items()}
    np.testing.assert_allclose(meta[True]["final_loss"], meta[False]["final_loss"], rtol=1e-3)
    new, old = lora_weights(outs[True]), lora_weights(outs[False])
    assert new.keys() == old.keys() and all(new[k].dtype == old[k].dtype and new[k].shape == old[k].shape for k in new)
    assert max(rel(new[k], old[k]) for k in new if "lora_B" in k) < 1e-3
    assert (outs[True] / "adapter_config.json").read_text() == (outs[False] / "adapter_config.json").read_text()
    enc = Encoder(model=str(tiny_llama), adapter=str(outs[True]), device="cpu", dtype="float32")
    ref = Encoder(model=str(tiny_llama), adapter=str(outs[False]), device="cpu", dtype="float32")
    np.testing.assert_allclose(enc.encode(SENTENCES), ref.encode(SENTENCES), atol=1e-4)
    # the dev score the packed path measured at the end of training is the encoder's
    assert sts_score(read_sts(dev), enc) == pytest.approx(meta[True]["dev_spearman"], abs=0.02)


def test_a_packed_step_is_one_chunk_with_attention_buckets(tmp_path, tiny_llama, monkeypatch):
    """Run.embed feeds the packed path one chunk (padding only inside attention, in pad_slack
    buckets) and the padded path its pad_slack chunks; both give the same embeddings."""
    from test_train import tiny_cfg

    from bellm_search.training import loop, packed

    calls = []
    real = packed.packed_top_forward
    monkeypatch.setattr(M, "packed_top_forward", lambda *a: calls.append(len(a[2])) or real(*a))
    out = {}
    for flag in (True, False):
        run = loop.prepare_run(tiny_cfg(tmp_path, tiny_llama, lora_dropout=0.0, packed=flag, pad_slack=1.3,
                                        dtype="bfloat16"))
        texts = np.arange(len(run.data.texts))
        assert run.packed() == flag
        with torch.no_grad():
            out[flag] = run.embed(texts)
    assert calls[0] == len(texts) and len(calls) == 1  # one chunk, on the packed path
    assert rel(out[True], out[False]) < 1e-2


def test_packed_resume_is_exact_and_a_padded_checkpoint_resumes_packed(tmp_path, tiny_llama):
    from test_train import lora_weights, tiny_cfg

    from bellm_search.training.loop import train

    def cfg(name: str, **kw):
        return tiny_cfg(tmp_path, tiny_llama, output=str(tmp_path / name), lora_dropout=0.0, checkpoint_every=2,
                        max_steps=6, **kw)

    whole = lora_weights(train(cfg("whole")))
    for first in (True, False):  # crash on the packed (or padded) path, resume on the packed one
        broken = cfg(f"broken-{first}", crash_after_step=3, packed=first)
        with pytest.raises(RuntimeError, match="injected crash"):
            train(broken)
        resumed = lora_weights(train(cfg(f"broken-{first}", resume=True)))
        assert resumed.keys() == whole.keys()
        if first:
            assert all(torch.equal(resumed[k], whole[k]) for k in whole)
        else:
            assert max(rel(resumed[k], whole[k]) for k in whole if "lora_B" in k) < 1e-3
