"""Seconds per training step and peak RSS of the training schemes, on the same steps.

Each scheme runs in its own process (peak RSS is per process) for --steps optimizer steps of
--batch-size NLI triples (the same rows for every scheme); the first step is reported apart
(warm-up). Schemes:
  plain            LoRA on all 30 layers, full forward each step, bf16 autocast, padded to the longest
  plain-fp32-pad   as plain, float32 weights, every text padded to max_length (like the probe)
  cached           LoRA on the top 8 layers, the lower 22 layers' states read from the cache

    python scripts/bench_train.py [--steps 4] [--schemes plain,cached]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT.parent / "shared" / "data" / "stsb" / "sts-dev.csv"


def run_scheme(scheme: str, steps: int, batch_size: int) -> dict:
    import torch

    from bellm_search.encoder import train as T

    torch.set_num_threads(1)  # the machine is shared: one thread per process wastes least
    kw = dict(data=str(ROOT / "runs" / "nli_triples.jsonl"), output="/tmp/unused", bidirectional_layers=4,
              batch_size=batch_size, max_steps=steps, dev=str(DEV))  # dev: the same cache key as training
    if scheme.startswith("plain"):
        kw["train_layers"] = None
    if scheme == "plain-fp32-pad":
        kw["dtype"] = "float32"
        width = T.TrainConfig(**kw).max_length
        orig = T.pad_batch
        def pad_to_max_length(ids, pad_id, side):  # the probe's padding: every batch to max_length
            input_ids, mask = orig(ids + [[pad_id] * width], pad_id, side)
            return input_ids[:-1], mask[:-1]

        T.pad_batch = pad_to_max_length
    t0 = time.time()
    run = T.prepare_run(T.TrainConfig(**kw))
    prep = time.time() - t0
    opt, sched = T.make_optimizer(run, steps)
    times = []
    for step in range(steps):
        t = time.time()
        T.one_step(run, opt, sched, step)
        times.append(time.time() - t)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"scheme": scheme, "prepare_s": round(prep, 1), "first_step_s": round(times[0], 2),
            "s_per_step": round(sum(times[1:]) / max(1, len(times) - 1), 2), "peak_rss_mb": round(rss)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--schemes", default="plain,plain-fp32-pad,cached")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_scheme(args.one, args.steps, args.batch_size)), flush=True)
        return 0
    for scheme in args.schemes.split(","):
        out = subprocess.run([sys.executable, __file__, "--one", scheme, "--steps", str(args.steps),
                              "--batch-size", str(args.batch_size)], capture_output=True, text=True)
        print(out.stdout.strip().splitlines()[-1] if out.returncode == 0 else f"{scheme}: failed\n{out.stderr[-2000:]}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
