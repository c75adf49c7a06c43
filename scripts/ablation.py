"""STS-B dev ablation of BeLLM settings: same NLI data, steps and seed for every trained row.

Each row trains an adapter into runs/ablation/<name> (skipped when its result is already in
runs/ablation/results.jsonl) and records the dev Spearman x 100 measured at the end of training.
Rows are run one after another (the machine has 2 cores). The equivalent CLI command of each
row is stored with the result.

    python scripts/ablation.py [--steps 60] [--rows k0-s42,k4-s42] [--train-layers 8]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "runs" / "data" / "nli.jsonl"  # scripts/prepare_data.py
DEV = ROOT.parent / "shared" / "data" / "stsb" / "sts-dev.csv"


def rows(seeds: list[int]) -> list[dict]:
    out = []
    for seed in seeds:
        for k in (0, 1, 2, 4, 8):
            out.append({"name": f"last-k{k}-s{seed}", "pooling": "last", "k": k, "seed": seed})
        for k in (0, 4):
            out.append({"name": f"mean-k{k}-s{seed}", "pooling": "mean", "k": k, "seed": seed})
    return out


def command(row: dict, steps: int, train_layers: int) -> str:
    return (f"bellm-search train --data runs/data/nli.jsonl --output runs/ablation/{row['name']} "
            f"--pooling {row['pooling']} --bidirectional-layers {row['k']} --train-layers {train_layers} "
            f"--max-steps {steps} --batch-size 32 --seed {row['seed']} --dev ../shared/data/stsb/sts-dev.csv")


def main() -> int:
    import torch

    from bellm_search.cli.train import dev_scorer
    from bellm_search.training.loop import TrainConfig, train

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--train-layers", type=int, default=8)
    ap.add_argument("--seeds", default="42")
    ap.add_argument("--rows", default="", help="comma-separated row names (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out_dir = ROOT / "runs" / "ablation"
    out_dir.mkdir(parents=True, exist_ok=True)
    results = out_dir / "results.jsonl"
    done = {json.loads(x)["name"] for x in results.read_text().splitlines()} if results.exists() else set()
    wanted = set(filter(None, args.rows.split(",")))
    for row in rows([int(s) for s in args.seeds.split(",")]):
        if row["name"] in done or (wanted and row["name"] not in wanted):
            continue
        cfg = TrainConfig(data=str(DATA), output=str(out_dir / row["name"]), pooling=row["pooling"],
                          bidirectional_layers=row["k"], train_layers=args.train_layers,
                          max_steps=args.steps, seed=row["seed"], dev=str(DEV), resume=True,
                          checkpoint_every=1000, show_progress=False)
        t0 = time.time()
        folder = train(cfg, dev_scorer(DEV, []))
        meta = json.loads((folder / "bellm_adapter.json").read_text())["training"]
        rec = {**row, "steps": args.steps, "dev_spearman": meta["dev_spearman"],
               "seconds_per_step": meta["seconds_per_step"], "wall_s": round(time.time() - t0),
               "peak_rss_mb": meta["peak_rss_mb"], "command": command(row, args.steps, args.train_layers)}
        with results.open("a") as fh:
            fh.write(json.dumps(rec) + "\n")
        print(json.dumps(rec), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
