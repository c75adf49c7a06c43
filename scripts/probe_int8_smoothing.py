"""Probe (issue 15, not shipped): SmoothQuant-style scale migration before dynamic int8, llama family.

Each linear layer's input channel j gets s_j = max|X_j|^alpha / max|W_j|^(1-alpha) (activation maxima
from 256 tweets, 1000-1255 of the bench's file order) moved from the activations into the weights,
exactly in float: into the RMSNorm weight before q/k/v and gate/up, into up_proj's rows before
down_proj, into v_proj's rows before o_proj (one scale per key/value channel, max over its query-head
group). Then torch.ao dynamic int8; prints the min/mean cosine to float32 on the first 300 tweets.

    python scripts/probe_int8_smoothing.py 0.5,0.8            # every linear layer int8
    python scripts/probe_int8_smoothing.py 0.3,0.5 --skip-down  # down_proj left in float32
    (add --sts for STS-B dev of each variant)
"""
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

_spec = importlib.util.spec_from_file_location("bench_encode", Path(__file__).with_name("bench_encode.py"))
be = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(be)
from bellm_search.encoder.encode import Encoder
from bellm_search.encoder.bidirectional import decoder_layers
from bellm_search.encoder.loading import quantize_int8
from bellm_search.eval.datasets import read_sts
from bellm_search.eval.sts import sts_score
STSB_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsb" / "sts-dev.csv"


def act_max(enc, texts):
    mx = {}
    hs = []
    for name, m in enc.replicas[0].named_modules():
        if isinstance(m, nn.Linear):
            def hook(mod, args, name=name):
                x = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0).float()
                mx[name] = torch.maximum(mx[name], x) if name in mx else x
            hs.append(m.register_forward_pre_hook(hook))
    enc.encode(texts)
    for h in hs: h.remove()
    return mx

@torch.no_grad()
def smooth(enc, mx, alpha):
    model = enc.replicas[0]
    for i, layer in enumerate(decoder_layers(model)):
        pre = f"layers.{i}."
        key = lambda s: next(k for k in mx if k.endswith(pre + s))
        at, mlp = layer.self_attn, layer.mlp
        # qkv <- input_layernorm
        ws = torch.cat([at.q_proj.weight, at.k_proj.weight, at.v_proj.weight]).abs().amax(0)
        s = (mx[key("self_attn.q_proj")].clamp(min=1e-5) ** alpha / ws.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)
        layer.input_layernorm.weight.div_(s)
        for p in (at.q_proj, at.k_proj, at.v_proj): p.weight.mul_(s)
        # gate/up <- post_attention_layernorm
        ws = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).abs().amax(0)
        s = (mx[key("mlp.gate_proj")].clamp(min=1e-5) ** alpha / ws.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)
        layer.post_attention_layernorm.weight.div_(s)
        for p in (mlp.gate_proj, mlp.up_proj): p.weight.mul_(s)
        # down <- up rows
        ws = mlp.down_proj.weight.abs().amax(0)
        s = (mx[key("mlp.down_proj")].clamp(min=1e-5) ** alpha / ws.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)
        mlp.up_proj.weight.div_(s[:, None]); mlp.down_proj.weight.mul_(s)
        # o <- v rows (GQA: one scale per kv channel, max over the group's heads)
        cfg = model.config
        hd = cfg.hidden_size // cfg.num_attention_heads
        nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
        g = nh // nkv
        xo = mx[key("self_attn.o_proj")].view(nkv, g, hd).amax(1)  # kv, hd
        wo = at.o_proj.weight.abs().amax(0).view(nkv, g, hd).amax(1)
        s = (xo.clamp(min=1e-5) ** alpha / wo.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)  # nkv, hd
        at.v_proj.weight.div_(s.reshape(-1)[:, None])
        at.o_proj.weight.mul_(s[:, None, :].expand(nkv, g, hd).reshape(-1))

def main() -> None:
    torch.set_num_threads(2)
    tw = be.load_tweets(1400)
    evalt, calib = tw[:300], tw[1000:1256]
    sts = read_sts(STSB_DEV)
    ref_enc = Encoder(dtype="float32", reuse_prefix=False)
    ref = ref_enc.encode(evalt)
    mx = act_max(ref_enc, calib)
    del ref_enc
    for alpha in [float(a) for a in sys.argv[1].split(",")]:
        enc = Encoder(dtype="float32", reuse_prefix=False)
        smooth(enc, mx, alpha)
        v = enc.encode(evalt[:64])
        print("alpha", alpha, "smoothed fp32 max dev", float(np.abs(v - ref[:64]).max()), flush=True)
        if "--skip-down" in sys.argv:
            from torch.ao.quantization import quantize_dynamic, default_dynamic_qconfig
            names = {n for n, m in enc.replicas[0].named_modules() if isinstance(m, nn.Linear) and not n.endswith("down_proj")}
            quantize_dynamic(enc.replicas[0], {n: default_dynamic_qconfig for n in names}, dtype=torch.qint8, inplace=True)
        else:
            quantize_int8(enc.replicas[0])
        t = time.perf_counter(); v = enc.encode(evalt); dt = time.perf_counter() - t
        cos = (v * ref).sum(1)
        row = {"alpha": alpha, "min_cos": round(float(cos.min()), 4), "mean_cos": round(float(cos.mean()), 4), "sec300": round(dt, 1)}
        if "--sts" in sys.argv:
            row["stsb"] = round(sts_score(sts, enc), 2)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
