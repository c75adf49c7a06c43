"""``bellm-search train`` and ``eval sts``. Heavy imports stay inside the bodies."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from bellm_search.cli.options import (
    AdapterOpt, BatchOpt, BidirOpt, DeviceOpt, DTypeOpt, JsonOpt, MaxLenOpt, ModelOpt, PoolingOpt, PromptOpt,
    encoder_options,
)
from bellm_search.cli.output import emit, note
from bellm_search.errors import ConfigError


def _targets(value: str) -> tuple[str, ...]:
    from bellm_search.training.loop import ALL_LINEAR

    if value in ("all-linear", "all"):
        return ALL_LINEAR
    names = tuple(x.strip() for x in value.split(",") if x.strip())
    if not names:
        raise ConfigError("--lora-targets: give module names like q_proj,v_proj or 'all-linear'")
    return names


def train_command(
    data: Annotated[Path, typer.Option("--data", help="Training JSONL: {anchor, positive[, negative]} or {text1, text2, score} rows.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Adapter folder to write (peft files + bellm_adapter.json).")],
    model: ModelOpt = None,
    bidirectional_layers: Annotated[int, typer.Option("--bidirectional-layers", help="Top layers made bidirectional (0 = causal).", min=0)] = 4,
    pooling: Annotated[str, typer.Option("--pooling", help="last | mean")] = "last",
    prompt: Annotated[Optional[str], typer.Option("--prompt", help="Prompt with {text}; default: the BeLLM prompt for last pooling, {text} for mean.")] = None,
    train_layers: Annotated[Optional[int], typer.Option("--train-layers", help="LoRA on the top N layers and cache the frozen lower layers' states (0 = LoRA on every layer, no cache).", min=0)] = 8,
    lora_r: Annotated[int, typer.Option("--lora-r", help="LoRA rank.", min=1)] = 16,
    lora_alpha: Annotated[int, typer.Option("--lora-alpha", help="LoRA alpha (scale = alpha / r).", min=1)] = 32,
    lora_dropout: Annotated[float, typer.Option("--lora-dropout", help="LoRA dropout.", min=0.0, max=0.9)] = 0.0,
    lora_targets: Annotated[str, typer.Option("--lora-targets", help="Comma-separated linear module names, or all-linear.")] = "all-linear",
    epochs: Annotated[float, typer.Option("--epochs", help="Passes over the data (ignored with --max-steps).")] = 1.0,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", help="Optimizer steps (overrides --epochs).", min=1)] = None,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW, linear warmup then linear decay).")] = 2e-4,
    warmup: Annotated[float, typer.Option("--warmup", help="Warmup: a fraction of the steps (< 1) or a number of steps.")] = 0.05,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Rows per micro-batch (the in-batch negatives).", min=2)] = 32,
    grad_accum: Annotated[int, typer.Option("--grad-accum", help="Micro-batches per optimizer step.", min=1)] = 1,
    max_length: Annotated[int, typer.Option("--max-length", help="Max tokens per training text (prompt included).", min=8)] = 128,
    w_contrastive: Annotated[float, typer.Option("--w-contrastive", help="Weight of the in-batch contrastive term.")] = 1.0,
    w_angle: Annotated[float, typer.Option("--w-angle", help="Weight of the AnglE angle term.")] = 0.02,
    w_cosent: Annotated[float, typer.Option("--w-cosent", help="Weight of the CoSENT ranking term (use it for scored pairs).")] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the LoRA init, data order and dropout.")] = 42,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUTPUT/checkpoint.pt after an interruption.")] = False,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", help="Save a checkpoint every N steps.", min=1)] = 50,
    gradient_checkpointing: Annotated[bool, typer.Option("--gradient-checkpointing", help="Recompute activations in backward (less memory, slower).")] = False,
    init_adapter: Annotated[Optional[Path], typer.Option("--init-adapter", help="Start from this adapter's LoRA weights (continued training; same --lora-r and --lora-targets, --train-layers covering the adapter's layers: the others start fresh); 'default' = the shipped adapter.")] = None,
    dev: Annotated[Optional[Path], typer.Option("--dev", help="STS file scored at the end (Spearman x 100, stored in bellm_adapter.json).")] = None,
    dev_pairs: Annotated[Optional[list[Path]], typer.Option("--dev-pairs", help="Labelled pair file(s) (jsonl, twitter-url, pit2015, mrpc) scored by mean AP x 100 of cosine; with --dev, models are chosen on the mean of the two. Repeatable.")] = None,
    dev_every: Annotated[Optional[int], typer.Option("--dev-every", min=1, help="Also score the dev sets every N steps; the best adapter so far is kept in OUTPUT/best.")] = None,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N")] = "auto",
    dtype: Annotated[str, typer.Option("--dtype", help="auto | float32 | bfloat16 | float16")] = "auto",
    threads: Annotated[Optional[int], typer.Option("--threads", help="CPU threads for torch (default: torch's choice).", min=1)] = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a BeLLM LoRA adapter with the AnglE loss; OUTPUT becomes a complete adapter folder."""
    import torch

    from bellm_search.training.loop import TrainConfig, train

    if threads:
        torch.set_num_threads(threads)
    cfg = TrainConfig(
        data=str(data), output=str(output), model=model, bidirectional_layers=bidirectional_layers,
        pooling=pooling, prompt=prompt, max_length=max_length, train_layers=train_layers or None,
        lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, lora_targets=_targets(lora_targets),
        epochs=epochs, max_steps=max_steps, lr=lr, warmup=warmup, batch_size=batch_size, grad_accum=grad_accum,
        w_contrastive=w_contrastive, w_angle=w_angle, w_cosent=w_cosent, seed=seed, resume=resume,
        checkpoint_every=checkpoint_every, gradient_checkpointing=gradient_checkpointing,
        dev=",".join(str(p) for p in [dev, *(dev_pairs or [])] if p) or None, dev_every=dev_every,
        device=device, dtype=dtype, init_adapter=_init_adapter(init_adapter),
    )
    start = time.perf_counter()
    _report(train(cfg, dev_scorer(dev, dev_pairs or [])), time.perf_counter() - start, as_json)


def _report(folder: Path, seconds: float, as_json: bool) -> None:
    meta = json.loads((folder / "bellm_adapter.json").read_text(encoding="utf-8"))["training"]
    summary = {"output": str(folder), "steps": meta["steps"], "train_seconds": meta["train_seconds"],
               "seconds": round(seconds, 1), "final_loss": meta["final_loss"],
               "dev_spearman": meta["dev_spearman"], "dev_metrics": meta.get("dev_metrics")}
    dev_text = "".join(f", dev {k} {v:.2f}" for k, v in (meta.get("dev_metrics") or {}).items())
    note(f"trained {meta['steps']} steps in {meta['train_seconds']:.0f}s{dev_text}")
    emit(summary, as_json, f"adapter written to {folder}")


def _init_adapter(value: Path | None) -> str | None:
    if value is None:
        return None
    if str(value) == "default":
        from bellm_search.encoder.resolve import default_adapter_dir
        return str(default_adapter_dir())
    return str(value)


def dev_scorer(sts: Path | None, pair_files: list[Path]) -> Any:
    """The training callback scoring dev sets: "sts" (Spearman x 100 on an STS file), "ap:<file>"
    (AP x 100 of cosine on labelled pairs) and "ap_mean"; models are chosen on "sts", on "ap_mean",
    or with both on "mean" (their average). None when no dev set is given."""
    import numpy as np

    from bellm_search.eval.datasets import read_pairs, read_sts
    from bellm_search.eval.metrics import average_precision, spearman
    from bellm_search.training.loop import DevScorer

    sets = ([("sts", read_sts(sts))] if sts else []) + [(f"ap:{p.name}", read_pairs(p)) for p in pair_files]
    if not sets:
        return None
    texts = list(dict.fromkeys(t for _, pairs in sets for p in pairs for t in (p.text1, p.text2)))
    row = {t: i for i, t in enumerate(texts)}
    index = {name: (np.array([row[p.text1] for p in pairs]), np.array([row[p.text2] for p in pairs]),
                    np.array([p.score if name == "sts" else p.label for p in pairs])) for name, pairs in sets}

    def score(vecs: np.ndarray) -> dict[str, float]:
        out = {}
        for name, (a, b, gold) in index.items():
            cos = np.einsum("ij,ij->i", vecs[a], vecs[b])
            out[name] = 100.0 * (spearman(cos, gold) if name == "sts" else average_precision(cos, gold))
        aps = [v for k, v in out.items() if k.startswith("ap:")]
        if aps:
            out["ap_mean"] = float(np.mean(aps))
        if aps and sts:
            out["mean"] = (out["sts"] + out["ap_mean"]) / 2
        return out

    return DevScorer(texts, score, "mean" if sts and pair_files else "sts" if sts else "ap_mean")


def eval_sts_command(
    file: Annotated[Path, typer.Argument(help="STS file: STS-B TSV (score in column 4, sentences in 5-6) or JSONL {text1, text2, score}.")],
    model: ModelOpt = None, adapter: AdapterOpt = None, bidirectional_layers: BidirOpt = None,
    pooling: PoolingOpt = None, prompt: PromptOpt = None, max_length: MaxLenOpt = None, batch_size: BatchOpt = None,
    fmt: Annotated[str, typer.Option("--format", help="auto | stsb | jsonl")] = "auto",
    device: DeviceOpt = None, dtype: DTypeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Spearman x 100 of cosine similarity vs gold scores on an STS file."""
    from bellm_search.encoder import Encoder
    from bellm_search.eval.datasets import read_sts
    from bellm_search.eval.sts import sts_score

    pairs = read_sts(file, fmt)  # type: ignore[arg-type]
    if len(pairs) < 2:
        raise ConfigError(f"{file}: need at least 2 scored pairs")
    start = time.perf_counter()
    encoder = Encoder(**encoder_options(model, adapter, bidirectional_layers, pooling, prompt, max_length,
                                        batch_size, device, dtype))
    score = sts_score(pairs, encoder)
    seconds = time.perf_counter() - start
    cfg = encoder.config
    result = {"file": str(file), "pairs": len(pairs), "spearman": round(score, 2), "model": cfg.model,
              "adapter": cfg.adapter, "bidirectional_layers": cfg.bidirectional_layers,
              "pooling": cfg.pooling, "seconds": round(seconds, 1)}
    note(f"{len(pairs)} pairs, {seconds:.1f}s")
    emit(result, as_json, f"Spearman x 100: {score:.2f}")
