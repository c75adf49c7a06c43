"""Seconds per training step of the training schemes on the same rows, side by side, with a profile.

Each scheme runs in its own process (peak RSS is per process) for --steps optimizer steps of
--batch-size rows of runs/data/nli.jsonl (scripts/prepare_data.py): the rows of the first --steps
micro-batches (seed 42) are written to one bench file, so every scheme sees the same rows in the
same order. The lower-layer cache of those texts is built once (first scheme) and shared. The
first step is reported apart (warm-up); s/step is the mean of the others. With --profile, one
more step runs under torch.profiler and its top operators go to runs/bench_train/profile-<scheme>.txt
(--profile packed: only for those schemes, comma-separated).

Schemes (all k = 8, last-token pooling, bf16 autocast where the CPU has bf16):
  today      LoRA on the top 16 layers, lower layers cached, a step's distinct texts in one forward
             chunk padded to the longest text, through transformers' layers and peft's LoRA modules
             (the scheme that trained the shipped adapter)
  bucketed   the same, the texts in length buckets (pad_slack 1.3: a bucket holds texts at least
             longest / 1.3 tokens long), each padded to its own longest text
  slack2     buckets with pad_slack 2.0 (fewer, wider buckets: the default now)
  plain      LoRA on all 30 layers, no cache, bucketed
  packed     the top layers on the real tokens only, a step's texts in one chunk (training/packed.py:
             padding only inside attention, in pad_slack 2.0 buckets; LoRA without peft's casts;
             fused q/k/v and gate/up products; the top layer for the pooled token only): the default now
  packed1    packed, attention over the whole chunk padded to its longest text (no buckets)

    flock /tmp/heavy.lock python scripts/bench_train.py [--steps 4] [--schemes today,bucketed] [--profile]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "runs" / "bench_train"
SCHEMES = {
    "today": dict(train_layers=16, pad_slack=1e9, packed=False),
    "bucketed": dict(train_layers=16, pad_slack=1.3, packed=False),
    "slack2": dict(train_layers=16, pad_slack=2.0, packed=False),
    "plain": dict(train_layers=None, pad_slack=1.3, packed=False),
    "packed": dict(train_layers=16, pad_slack=2.0, packed=True),
    "packed1": dict(train_layers=16, pad_slack=1e9, packed=True),
}


def bench_rows(steps: int, batch_size: int, src: Path) -> Path:
    """The rows of the first ``steps`` micro-batches of ``src`` (seed 42), in order, as a file."""
    from bellm_search.training.data import micro_batch

    lines = src.read_text(encoding="utf-8").splitlines()
    picked = [lines[i] for m in range(steps) for i in micro_batch(len(lines), batch_size, 42, m)]
    path = OUT / f"rows-{steps}x{batch_size}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(picked) + "\n", encoding="utf-8")
    return path


def padded_tokens(run, steps: int) -> tuple[float, float]:
    """(real, padded) tokens per step that the scheme's chunking feeds the trained layers."""
    from bellm_search.training.data import micro_batch, plan_chunks

    real = padded = 0
    d = run.data
    for step in range(steps):
        rows = micro_batch(len(d), run.cfg.batch_size, run.cfg.seed, step)
        uniq = np.unique(np.concatenate([d.anchor[rows], d.positive[rows], d.negative[rows][d.negative[rows] >= 0]]))
        lengths = np.array([len(run.ids[t]) for t in uniq])
        real += lengths.sum()
        padded += sum(len(c) * lengths[c].max() for c in plan_chunks(lengths, run.cfg.max_batch_tokens, run.cfg.pad_slack))
    return real / steps, padded / steps


def profile_step(run, opt, sched, step: int, path: Path) -> None:
    from torch.profiler import ProfilerActivity, profile

    from bellm_search.training.loop import one_step

    t = time.time()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        one_step(run, opt, sched, step)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=48)
    head = f"step {step} under the profiler: {time.time() - t:.2f} s wall, load {open('/proc/loadavg').read().split()[0]}\n"
    path.write_text(head + table + "\n", encoding="utf-8")


def run_scheme(scheme: str, data: Path, steps: int, batch_size: int, threads: int, prof: bool) -> dict:
    import torch

    from bellm_search.training.loop import TrainConfig, make_optimizer, one_step, prepare_run

    torch.set_num_threads(threads)
    cfg = TrainConfig(data=str(data), output="/tmp/unused", bidirectional_layers=8, batch_size=batch_size,
                      max_steps=steps + 1, show_progress=False, **SCHEMES[scheme])
    t0 = time.time()
    run = prepare_run(cfg)
    prep = time.time() - t0
    opt, sched = make_optimizer(run, steps + 1)
    times, losses = [], []
    for step in range(steps):
        t = time.time()
        losses.append(round(one_step(run, opt, sched, step), 5))
        times.append(time.time() - t)
    if prof:
        profile_step(run, opt, sched, steps, OUT / f"profile-{scheme}.txt")
    real, padded = padded_tokens(run, steps)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"scheme": scheme, "prepare_s": round(prep, 1), "first_step_s": round(times[0], 2),
            "s_per_step": round(sum(times[1:]) / max(1, len(times) - 1), 2), "steps": steps,
            "real_tokens_per_step": round(real), "padded_tokens_per_step": round(padded),
            "peak_rss_mb": round(rss), "threads": threads, "packed": cfg.packed, "losses": losses}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--schemes", default="today,bucketed")
    ap.add_argument("--data", type=Path, default=ROOT / "runs" / "data" / "nli.jsonl")
    ap.add_argument("--profile", nargs="?", const="*", default="", help="profile one more step (of these schemes)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--rows-file", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_scheme(args.one, args.rows_file, args.steps, args.batch_size, args.threads, args.profile)))
        return 0
    rows = bench_rows(args.steps, args.batch_size, args.data)
    for scheme in args.schemes.split(","):
        cmd = [sys.executable, __file__, "--one", scheme, "--rows-file", str(rows), "--steps", str(args.steps),
               "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
        cmd += ["--profile"] if args.profile == "*" or scheme in args.profile.split(",") else []
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = out.stdout.strip().splitlines()[-1] if out.returncode == 0 and out.stdout.strip() else None
        print(line or f"{scheme}: failed\n{out.stderr[-2000:]}", flush=True)
        if line:
            with (OUT / "results.jsonl").open("a", encoding="utf-8") as fh:
                fh.write(json.dumps({**json.loads(line), "load_before": open("/proc/loadavg").read().split()[0]}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
