"""Mine hard negatives for training data with a trained adapter (CPU or GPU).

    python scripts/mine_negatives.py --adapter runs/abl/nli-tw-top16-k8-s42 \
        --data runs/data/nli.jsonl,runs/data/twitter_url.jsonl --out runs/data/mined.jsonl

Every row keeps its labelled negative; a copy of the row gets the mined one (see
``bellm_search.training.mining``). The adapter's own layout (bidirectional layers, LoRA layers,
rank, targets) is read from its files; with its LoRA on the top N layers the lower layers' states
come from the training cache (a superset cache is reused). Pass the training run's ``--dev`` /
``--dev-pairs`` here too: their texts join that cache, so the run that trains on the mined file
reuses it instead of building another.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapter", type=Path, required=True)
    ap.add_argument("--data", required=True, help="comma-separated training JSONL files")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--margin", type=float, default=0.95)
    ap.add_argument("--model", default=None, help="base model (default: the embedded one)")
    ap.add_argument("--dev", type=Path, default=None, help="STS dev file of the training run to follow")
    ap.add_argument("--dev-pairs", type=Path, action="append", default=[], help="its dev pair files")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from bellm_search.cli.train import dev_scorer
    from bellm_search.training.loop import TrainConfig, prepare_run
    from bellm_search.training.mining import mine_negatives

    meta = json.loads((args.adapter / "bellm_adapter.json").read_text())
    peft = json.loads((args.adapter / "adapter_config.json").read_text())
    used = meta.get("training", {}).get("config", {})
    cfg = TrainConfig(data=args.data, output=str(args.out.parent / "unused"), model=args.model,
                      bidirectional_layers=meta["bidirectional_layers"], pooling=meta["pooling"],
                      prompt=used.get("prompt"), max_length=used.get("max_length", 128),
                      train_layers=used.get("train_layers", 16), lora_r=peft["r"], lora_alpha=peft["lora_alpha"],
                      lora_targets=sorted(peft["target_modules"]), init_adapter=str(args.adapter), lora_dropout=0.0)
    t0 = time.time()
    run = prepare_run(cfg, dev_scorer(args.dev, args.dev_pairs))
    t1 = time.time()
    stats = mine_negatives(run, args.out, margin=args.margin)
    print(json.dumps({**stats, "prepare_s": round(t1 - t0, 1), "mine_s": round(time.time() - t1, 1),
                      "out": str(args.out)}))


if __name__ == "__main__":
    main()
