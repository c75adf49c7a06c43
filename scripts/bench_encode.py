"""Encoder throughput: bellm-search's batched encoder vs a naive loop over the same model.

    python scripts/bench_encode.py [--n 2000] [--rounds 3]

Naive loop: fixed batches of 32 in file order, fp32, padded to the longest text of the batch.
Ours: the Encoder with its defaults (length-sorted token-budget batches, bf16 where the CPU
supports it, inference mode). Both encode the same tweets from ../shared/data/tweeteval with the
same model, alternating round by round so machine load hits both alike; medians are reported.
Achieved GFLOP/s uses 2 * (non-embedding parameters) FLOPs per real token plus the attention
products; the peak is a large GEMM measured in the same run, in fp32 and bf16.
"""
from __future__ import annotations

import argparse
import glob
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from bellm_search.encoder.encode import Encoder
from bellm_search.encoder.pooling import pool

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tweeteval"


def load_tweets(n: int) -> list[str]:
    texts: list[str] = []
    for path in sorted(glob.glob(str(DATA / "*" / "*_text.txt"))):
        texts += [line.rstrip("\n") for line in open(path, encoding="utf-8") if line.strip()]
        if len(texts) >= n:
            break
    return texts[:n]


def naive_encode(enc: Encoder, model: torch.nn.Module, texts: list[str], batch: int = 32) -> np.ndarray:
    prompt = enc.config.resolved_prompt
    out = []
    tok = enc.tokenizer
    tok.padding_side = "right"
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            wrapped = [prompt.replace("{text}", t) for t in texts[i:i + batch]]
            b = tok(wrapped, padding=True, truncation=True, max_length=enc.config.max_length, return_tensors="pt")
            h = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
            v = pool(h, b["attention_mask"], enc.config.pooling)
            out.append(torch.nn.functional.normalize(v.float(), dim=-1).numpy())
    return np.concatenate(out)


def forward_flops(model: torch.nn.Module, lengths: list[int]) -> float:
    cfg = model.config
    params = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    linear = 2.0 * params * sum(lengths)
    attention = sum(4.0 * cfg.num_hidden_layers * cfg.hidden_size * n * n for n in lengths)
    return linear + attention


def gemm_peak(dtype: torch.dtype, size: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best / 1e9


def timed(fn) -> tuple[float, np.ndarray]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--adapter", default=None, help="adapter for both (default: the shipped one)")
    args = ap.parse_args()
    texts = load_tweets(args.n)
    ours = Encoder(adapter=args.adapter) if args.adapter else Encoder()
    naive = Encoder(ours.config.__class__(**{**ours.config.to_dict(), "dtype": "float32"}))
    naive_model = naive.replicas[0]
    lengths = [len(x) for x in ours.tokenize(texts)]
    flops = forward_flops(naive_model, lengths)
    print(f"{len(texts)} tweets, {sum(lengths)} tokens (mean {np.mean(lengths):.1f}, max {max(lengths)}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, ours dtype {ours.dtype}")
    ours.encode(texts[:64]), naive_encode(naive, naive_model, texts[:64])  # warm-up
    t_naive, t_ours = [], []
    for r in range(args.rounds):
        dt, v_naive = timed(lambda: naive_encode(naive, naive_model, texts))
        t_naive.append(dt)
        dt, v_ours = timed(lambda: ours.encode(texts))
        t_ours.append(dt)
        print(f"round {r + 1}: naive {t_naive[-1]:.1f}s  ours {t_ours[-1]:.1f}s")
    cos = (v_naive * v_ours).sum(1)
    peak32, peak16 = gemm_peak(torch.float32), gemm_peak(torch.bfloat16)
    rows = [("naive (batch 32, file order, fp32)", statistics.median(t_naive), peak32),
            (f"bellm-search ({str(ours.dtype).replace('torch.', '')}, sorted, token budget)", statistics.median(t_ours),
             peak16 if ours.dtype == torch.bfloat16 else peak32)]
    print(f"\n{'encoder':<52} {'sent/s':>8} {'tok/s':>9} {'GFLOP/s':>8} {'% of GEMM peak':>15}")
    for name, sec, peak in rows:
        gf = flops / sec / 1e9
        print(f"{name:<52} {len(texts) / sec:8.1f} {sum(lengths) / sec:9.0f} {gf:8.1f} {100 * gf / peak:14.1f}%")
    print(f"\nspeed-up ours / naive: {statistics.median(t_naive) / statistics.median(t_ours):.2f}x (median of {args.rounds} rounds)")
    print(f"GEMM peak measured here: fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.0f} GFLOP/s")
    print(f"cosine(ours, naive) per text: min {cos.min():.4f}, mean {cos.mean():.4f} (bf16 vs fp32 rounding)")


if __name__ == "__main__":
    main()
