"""A markdown table of trained adapters' dev scores, read from each folder's bellm_adapter.json.

    python scripts/ablation_table.py runs/abl/*/

Columns: the settings that differ between rows (data, LoRA layers, k, seed, steps), training time,
STS-B dev Spearman x 100 and AP x 100 of cosine on each dev pair set, their mean, and the mean of
STS-B and the AP mean (the model-selection key). Only figures the training runs wrote are shown.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

PAIRS = ("ap:twitter_url_calibration.jsonl", "ap:pit2015.jsonl", "ap:mrpc_train.jsonl")


def row(folder: Path) -> str | None:
    meta_path = folder / "bellm_adapter.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    t = meta.get("training", {})
    cfg, m = t.get("config", {}), t.get("dev_metrics") or {}
    data = "+".join(Path(p).stem for p in str(cfg.get("data", "")).split(","))
    fig = [f"{m[k]:.2f}" if k in m else "-" for k in ("sts", *PAIRS, "ap_mean", "mean")]
    return (f"| {folder.name} | {data} | {cfg.get('train_layers')} | {meta.get('bidirectional_layers')} | "
            f"{cfg.get('seed')} | {t.get('steps')} | {t.get('seconds_per_step')} | " + " | ".join(fig) + " |")


def main(argv: list[str]) -> None:
    print("| row | data | LoRA layers | k | seed | steps | s/step | STS-B dev | AP cal | AP PIT | AP MRPC | AP mean | mean |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for arg in argv:
        line = row(Path(arg))
        if line:
            print(line)


if __name__ == "__main__":
    main(sys.argv[1:])
