"""What dropping decoder layers would cost, without retraining (issue 15's "fewer layers" lever).

Block influence (ShortGPT, Men et al. 2024): for each decoder layer, 1 - cos(input, output) of the
hidden states, averaged over the real tokens of N STS-B dev sentences; a layer that barely turns
its input is a candidate to drop. The script removes the k least influential layers among the
causal lower layers (never layer 0, never the bidirectional top layers, whose adapter weights
carry the AnglE training) and scores STS-B dev and the PIT-2015 dev AP with what is left, for
each k. Dev sets only (`runs/data/dev/` from `scripts/prepare_data.py`); nothing is written.

    python scripts/bench_layer_drop.py --drop 0,2,4,6,8,10
    python scripts/bench_layer_drop.py --drop 10 --write runs/models/v3-drop10   # the model, to retrain

``--write DIR`` saves the encoder's merged model (base + adapter, float32) with the k least
influential layers removed and the rest renumbered, plus the tokenizer, as a model folder for
``bellm-search train --model DIR`` (a fresh LoRA on top heals the cut), and scores nothing.
The full-path encoder runs (prefix reuse off) in the CPU's compute dtype; the layers are removed
from the loaded model in place, so each k costs one STS-B dev pass and one PIT dev pass.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

from bellm_search.encoder.bidirectional import decoder_layers, layer_owner
from bellm_search.encoder.encode import Encoder
from bellm_search.eval.cosines import pair_cosines
from bellm_search.eval.datasets import read_pairs, read_sts
from bellm_search.eval.metrics import average_precision
from bellm_search.eval.sts import sts_score

ROOT = Path(__file__).resolve().parents[1]
STSB_DEV = ROOT.parent / "shared" / "data" / "stsb" / "sts-dev.csv"
PIT_DEV = ROOT / "runs" / "data" / "dev" / "pit2015.jsonl"


def block_influence(enc: Encoder, texts: list[str]) -> list[float]:
    """Mean over encode calls of 1 - cos(layer input, layer output), per decoder layer.

    Each call's figure averages every position of its batch, padding included (length-sorted batches
    keep padding to a few per cent, so it barely moves the ranking)."""
    layers = list(decoder_layers(enc.replicas[0]))
    sums, calls, inputs = [0.0] * len(layers), [0] * len(layers), {}

    def before(i: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            inputs[i] = args[0] if args else kwargs["hidden_states"]
        return hook

    def after(i: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict, out) -> None:
            h = out[0] if isinstance(out, tuple) else out
            cos = torch.nn.functional.cosine_similarity(inputs.pop(i).float(), h.float(), dim=-1)
            sums[i] += float((1 - cos).mean())  # every position of the batch, padding included
            calls[i] += 1
        return hook

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(before(i), with_kwargs=True))
        handles.append(layer.register_forward_hook(after(i), with_kwargs=True))
    try:
        enc.encode(texts)
    finally:
        for h in handles:
            h.remove()
    return [s / max(c, 1) for s, c in zip(sums, calls)]


def write_dropped(enc: Encoder, full: list[nn.Module], dropped: list[int], out: Path) -> None:
    """Save the merged model without the ``dropped`` layers (renumbered, bidirectional marks cleared)."""
    model, owner, gone = enc.replicas[0], layer_owner(enc.replicas[0]), set(dropped)
    kept = [layer for i, layer in enumerate(full) if i not in gone]
    for j, layer in enumerate(kept):
        layer.self_attn.layer_idx = j
        layer.self_attn.is_causal = True  # training makes its own top layers bidirectional
    owner.layers = nn.ModuleList(kept)
    cfg = model.config
    cfg.num_hidden_layers = len(kept)
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [t for i, t in enumerate(cfg.layer_types) if i not in gone]
    model.save_pretrained(out)
    enc.tokenizer.save_pretrained(out)
    (out / "dropped_layers.json").write_text(json.dumps({"dropped": dropped, "of": len(full)}) + "\n")
    print(f"wrote {out}: {len(kept)} of {len(full)} layers (dropped {dropped})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--drop", default="0,2,4,6,8,10", help="comma-separated numbers of layers to drop")
    ap.add_argument("--influence-texts", type=int, default=256, help="STS-B dev sentences for block influence")
    ap.add_argument("--adapter", default=None, help="adapter (default: the shipped one)")
    ap.add_argument("--write", type=Path, default=None, metavar="DIR", help="save the model with --drop K layers removed")
    args = ap.parse_args()
    try:
        counts = [int(x) for x in args.drop.split(",")]
    except ValueError:
        ap.error(f"--drop {args.drop!r}: comma-separated whole numbers, e.g. 0,2,4")
    if args.write is not None and len(counts) != 1:
        ap.error("--write takes a single --drop K (the number of layers to remove)")
    kw = {"adapter": args.adapter} if args.adapter else {}
    enc = Encoder(reuse_prefix=False, **kw)
    sts, pit = read_sts(STSB_DEV), read_pairs(PIT_DEV)
    full = list(decoder_layers(enc.replicas[0]))
    top = enc.config.bidirectional_layers
    influence = block_influence(enc, [p.text1 for p in sts[: args.influence_texts]])
    print("block influence: " + " ".join(f"{i}:{b:.3f}" for i, b in enumerate(influence)), flush=True)
    order = sorted(range(1, len(full) - top), key=lambda i: influence[i])
    print(f"drop order (causal layers 1..{len(full) - top - 1}): {order}", flush=True)
    print(f"dtype {str(enc.dtype)[6:]}, torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    owner = layer_owner(enc.replicas[0])
    if any(not 0 <= k <= len(order) for k in counts):
        ap.error(f"--drop: between 0 and {len(order)} (the causal layers other than layer 0)")
    if args.write is not None:
        return write_dropped(enc, full, sorted(order[: counts[0]]), args.write)
    for k in counts:
        dropped = set(order[:k])
        owner.layers = nn.ModuleList([layer for i, layer in enumerate(full) if i not in dropped])
        t = time.perf_counter()
        stsb = sts_score(sts, enc)
        sts_s = time.perf_counter() - t
        pit_ap = 100 * average_precision(pair_cosines(pit, enc), [p.label for p in pit])
        print(json.dumps({"dropped": k, "layers": sorted(dropped), "work": round((len(full) - k) / len(full), 3),
                          "stsb_dev": round(stsb, 2), "pit_dev_ap": round(pit_ap, 2), "stsb_seconds": round(sts_s, 1)}),
              flush=True)


if __name__ == "__main__":
    main()
