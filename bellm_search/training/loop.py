"""BeLLM training: LoRA on the top decoder layers, AnglE loss, dev scoring, checkpoints, exact resume.

Schemes, chosen by ``TrainConfig.train_layers`` and ``cache_lower``:

- plain (``train_layers=None``): LoRA on every decoder layer, every step runs the whole model.
- cached (``train_layers=N``, default): LoRA on the top N layers; the frozen lower layers' states
  are computed once per distinct text (cache.py) and each step runs only the top N layers.
- top-N without the cache (``cache_lower=False``): the lower layers run forward-only every step
  (what a GPU prefers: no host-to-device copies of cached states).

A step = ``batch_size * grad_accum`` rows; its distinct texts run in length-sorted chunks padded to
their own longest text (``pad_slack``). Dev scoring is a callback (``DevScorer``) built by the
caller, so this package never imports the evaluation code. The data order is a pure function of
(seed, step), so a checkpoint (LoRA weights, optimizer, scheduler, RNG states, step) resumes exactly.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
from torch import nn

from bellm_search.config import EMBEDDED_MODEL, EncoderConfig, cache_dir
from bellm_search.encoder.encode import _safe_pad_id
from bellm_search.encoder.loading import load_tokenizer, resolve_device, resolve_dtype, resolve_model, write_adapter_json
from bellm_search.errors import ConfigError
from bellm_search.training import cache as state_cache
from bellm_search.training.cache import StateCache  # noqa: F401 - re-exported
from bellm_search.training.data import TrainData, micro_batch, negative_mask, plan_chunks, read_training_data, total_steps
from bellm_search.training.loss import LossWeights, angle_objective
from bellm_search.training.model import ALL_LINEAR, build_model, load_lora_weights, full_forward, tokenize_texts, top_forward
from bellm_search.training.packed import handled
from bellm_search.training.state import CHECKPOINT, load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)
__all__ = ["ALL_LINEAR", "DevScorer", "TrainConfig", "Run", "prepare_run", "train", "one_step", "save_adapter"]


@dataclass
class TrainConfig:
    """Everything one training run needs; saved into the checkpoint and the adapter JSON."""

    data: str  # one JSONL file or several, comma-separated
    output: str
    model: str | None = None
    bidirectional_layers: int = 4  # k = 0, 2, 4 score alike at 30 steps; the shipped adapter uses 8 (docs/training.md)
    pooling: Literal["last", "mean"] = "last"
    prompt: str | None = None
    max_length: int = 128  # training truncation (the adapter keeps the encoder default)
    train_layers: int | None = 8  # LoRA on the top N layers; None = every layer
    cache_lower: bool = True  # cache the frozen lower layers' states (train_layers only)
    full_layers: bool = False  # experiments: train the top train_layers layers themselves, no LoRA (no adapter written)
    init_adapter: str | None = None  # start the LoRA weights from this adapter folder (same r, targets, layers)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ALL_LINEAR
    epochs: float = 1.0
    max_steps: int | None = None
    lr: float = 2e-4
    warmup: float = 0.05  # fraction of the steps (< 1) or a number of steps
    batch_size: int = 32
    grad_accum: int = 1
    w_contrastive: float = 1.0
    w_angle: float = 0.02
    w_cosent: float = 0.0
    seed: int = 42
    resume: bool = False
    checkpoint_every: int = 50
    gradient_checkpointing: bool = False
    dev: str | None = None  # what the DevScorer scores (recorded in the adapter JSON)
    dev_every: int | None = None  # also score dev every N steps; the best adapter goes to <output>/best
    device: str = "auto"
    dtype: str = "auto"
    max_batch_tokens: int = 16384
    pad_slack: float = 2.0  # a forward chunk holds texts >= longest / pad_slack tokens (data.plan_chunks; docs/training.md)
    packed: bool = True  # cached top layers on the real tokens only (packed.py; False: padded, through transformers)
    cache_root: str | None = None  # where lower-layer caches live; None = <cache_dir>/train-cache
    crash_after_step: int | None = None  # testing: raise after this step (after its checkpoint)
    show_progress: bool | None = None

    def __post_init__(self) -> None:
        self.lora_targets = tuple(self.lora_targets)
        if self.batch_size < 2:
            raise ConfigError("--batch-size must be >= 2 (in-batch negatives need other rows)")
        if self.dev_every is not None and self.dev_every < 1:
            raise ConfigError("--dev-every must be >= 1")
        if self.grad_accum < 1 or self.lora_r < 1 or self.checkpoint_every < 1:
            raise ConfigError("--grad-accum, --lora-r and --checkpoint-every must be >= 1")
        if self.train_layers is not None and self.train_layers < max(1, self.bidirectional_layers):
            raise ConfigError(
                f"train_layers={self.train_layers} must be >= 1 and >= bidirectional_layers="
                f"{self.bidirectional_layers}: the bidirectional layers must be trained")
        if self.max_steps is None and self.epochs <= 0:
            raise ConfigError("give --epochs > 0 or --max-steps")
        if self.full_layers and self.train_layers is None:
            raise ConfigError("full_layers needs train_layers (the top layers to train)")
        if self.lr <= 0 or self.warmup < 0 or self.pad_slack < 1:
            raise ConfigError("--lr must be > 0, --warmup >= 0 and pad_slack >= 1")
        self.encoder_config()  # validates pooling, prompt, max_length, k

    def encoder_config(self, max_length: int | None = None) -> EncoderConfig:
        return EncoderConfig(model=self.model, bidirectional_layers=self.bidirectional_layers,
                             pooling=self.pooling, prompt=self.prompt,
                             max_length=max_length or self.max_length, padding_side="right")

    @property
    def weights(self) -> LossWeights:
        return LossWeights(self.w_contrastive, self.w_angle, self.w_cosent)

    @property
    def scheme(self) -> str:
        if self.full_layers:
            return f"full-top-{self.train_layers}"
        if self.train_layers is None:
            return "plain"
        return f"{'cached' if self.cache_lower else 'full-forward'}-top-{self.train_layers}"


@dataclass
class DevScorer:
    """Dev texts and a function of their embeddings ((n, H) float32, L2-normalised, in ``texts``
    order) returning named scores; ``key`` names the one that selects models (higher is better)."""

    texts: list[str]
    score: Callable[[np.ndarray], dict[str, float]]
    key: str


@dataclass
class Run:
    """Everything a training run holds while it goes."""

    cfg: TrainConfig
    data: TrainData
    model: nn.Module
    base: nn.Module
    start: int
    ids: list[list[int]]  # token ids of data.texts, then of the dev texts
    pad_id: int
    device: torch.device
    dtype: torch.dtype
    cache: StateCache | None = None
    dev: DevScorer | None = None
    dev_history: list = field(default_factory=list)  # [step, dev score] of --dev-every

    def autocast(self) -> Any:
        if self.dtype in (torch.bfloat16, torch.float16):
            return torch.autocast(self.device.type, dtype=self.dtype)
        return contextlib.nullcontext()

    def embed(self, text_ids: np.ndarray) -> torch.Tensor:
        """(n, H) float32 embeddings of texts ``text_ids``, in length-sorted chunks (one chunk on
        the packed path: padding only in its attention, in ``pad_slack`` buckets)."""
        lengths = np.array([len(self.ids[t]) for t in text_ids])
        parts: list[torch.Tensor] = []
        slack = 1e9 if self.packed() else self.cfg.pad_slack
        chunks = plan_chunks(lengths, self.cfg.max_batch_tokens, slack)
        for chunk in chunks:
            rows = text_ids[chunk]
            with self.autocast():
                if self.cache is not None:
                    vecs = top_forward(self.base, self.start, [self.cache[t] for t in rows], self.cfg.pooling,
                                       self.cfg.packed, self.cfg.pad_slack)
                else:
                    vecs = full_forward(self.base, [self.ids[t] for t in rows], self.pad_id, self.cfg.pooling)
            parts.append(vecs.float())
        out = torch.cat(parts)
        order = torch.from_numpy(np.argsort(np.concatenate(chunks), kind="stable")).to(out.device)
        return out[order]

    def packed(self) -> bool:
        """Whether the top layers run packed now (packed.py; not with active LoRA dropout)."""
        if self.cache is None or not self.cfg.packed:
            return False
        with self.autocast():
            return handled(self.base, self.start, self.cfg.pooling, self.cache.flat.dtype) is not None

    def step_loss(self, rows: np.ndarray) -> tuple[torch.Tensor, dict[str, float]]:
        d = self.data
        a, p, n = d.anchor[rows], d.positive[rows], d.negative[rows]
        uniq, inv = np.unique(np.concatenate([a, p, n[n >= 0]]), return_inverse=True)
        emb = self.embed(uniq)
        k = len(rows)
        A, P = emb[inv[:k]], emb[inv[k:2 * k]]
        has_neg = torch.from_numpy(n >= 0)
        N = None
        if has_neg.any():
            N = A.clone()
            N[has_neg] = emb[inv[2 * k:]].to(N.dtype)
        valid = negative_mask(a, p, n)[:, : 2 * k if N is not None else k].to(A.device)
        gold = None if d.gold is None else torch.from_numpy(d.gold[rows]).to(A.device)
        return angle_objective(A, P, N, valid, self.cfg.weights, gold, has_neg.to(A.device))

    @torch.no_grad()
    def dev_metrics(self) -> dict[str, float] | None:
        """The dev scorer's scores of the current model (eval mode while it runs)."""
        if self.dev is None:
            return None
        self.model.eval()
        first = len(self.data.texts)
        vecs = torch.nn.functional.normalize(self.embed(np.arange(first, first + len(self.dev.texts))), dim=-1)
        self.model.train()
        return self.dev.score(vecs.cpu().numpy())


def prepare_run(cfg: TrainConfig, dev: DevScorer | None = None) -> Run:
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    torch.manual_seed(cfg.seed)  # the LoRA initialisation
    data = read_training_data(cfg.data)
    model_path = resolve_model(cfg.model)
    tokenizer = load_tokenizer(model_path, "right")
    ids = tokenize_texts(tokenizer, cfg.encoder_config(), data.texts + (dev.texts if dev else []))
    model, base, start = build_model(
        model_path, dtype, device, bidirectional_layers=cfg.bidirectional_layers, train_layers=cfg.train_layers,
        lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, lora_targets=cfg.lora_targets,
        gradient_checkpointing=cfg.gradient_checkpointing, full=cfg.full_layers)
    if cfg.init_adapter:
        load_lora_weights(model, Path(cfg.init_adapter))
    run = Run(cfg, data, model, base, start, ids, _safe_pad_id(tokenizer, base), device, dtype, dev=dev)
    if cfg.train_layers is not None and cfg.cache_lower:
        root = Path(cfg.cache_root) if cfg.cache_root else cache_dir() / "train-cache"
        run.cache = state_cache.load_or_build(root, model_path, base, start, ids, run.pad_id, cfg.max_batch_tokens,
                                              cfg.show_progress, run.autocast)
    model.train()
    return run


def make_optimizer(run: Run, steps: int) -> tuple[torch.optim.Optimizer, Any]:
    params = [p for p in run.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=run.cfg.lr, weight_decay=0.0)
    warm = run.cfg.warmup if run.cfg.warmup >= 1 else round(run.cfg.warmup * steps)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        return max(0.0, (steps - step) / max(1, steps - warm))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def one_step(run: Run, opt: Any, sched: Any, step: int) -> float:
    cfg, total = run.cfg, 0.0
    for micro in range(cfg.grad_accum):
        rows = micro_batch(len(run.data), cfg.batch_size, cfg.seed, step * cfg.grad_accum + micro)
        loss, _ = run.step_loss(rows)
        (loss / cfg.grad_accum).backward()
        total += float(loss.detach()) / cfg.grad_accum
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return total


# ----------------------------------------------------------------------------- train()
def train(cfg: TrainConfig, dev: DevScorer | None = None) -> Path:
    """Train a BeLLM LoRA adapter; returns the output folder (a complete adapter)."""
    out = Path(cfg.output)
    if cfg.dev_every and dev is None:
        raise ConfigError("--dev-every needs --dev")
    if cfg.full_layers:
        raise ConfigError("full_layers trains the layers themselves: there is no adapter to write (experiments only)")
    if (out / CHECKPOINT).is_file() and not cfg.resume:
        raise ConfigError(f"{out} holds a checkpoint of an unfinished run: add --resume, or pick a new --output")
    if (out / "adapter_config.json").is_file() and not (out / CHECKPOINT).is_file():
        raise ConfigError(f"{out} already holds a trained adapter: pick a new --output")
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    t_prep = time.time()
    run = prepare_run(cfg, dev)
    prep_s = time.time() - t_prep
    steps = total_steps(cfg.epochs, cfg.max_steps, len(run.data), cfg.batch_size, cfg.grad_accum)
    opt, sched = make_optimizer(run, steps)
    step, elapsed, history = 0, 0.0, []
    if cfg.resume and (out / CHECKPOINT).is_file():
        step, elapsed, history, run.dev_history = load_checkpoint(out / CHECKPOINT, cfg, run.model, opt, sched)
    elapsed, step = train_loop(run, opt, sched, step, steps, elapsed, history)
    metrics = run.dev_metrics()
    if metrics is not None and cfg.dev_every:
        run.dev_history.append([step, round(metrics[run.dev.key], 2)])
    save_adapter(run, step, elapsed, prep_s, metrics, history)
    (out / CHECKPOINT).unlink(missing_ok=True)
    return out


def train_loop(run: Run, opt: Any, sched: Any, step: int, steps: int, elapsed: float, history: list) -> tuple[float, int]:
    from tqdm.auto import tqdm

    cfg = run.cfg
    show = sys.stderr.isatty() if cfg.show_progress is None else cfg.show_progress
    bar = tqdm(total=steps, initial=step, desc="train", unit="step", file=sys.stderr, disable=not show,
               dynamic_ncols=True)
    while step < steps:
        t0 = time.time()
        loss = one_step(run, opt, sched, step)
        step += 1
        elapsed += time.time() - t0
        history.append(round(loss, 5))
        bar.set_postfix(loss=f"{loss:.4f}")
        bar.update(1)
        if cfg.dev_every and step % cfg.dev_every == 0 and step < steps:
            periodic_dev(run, step, elapsed, history)
        if step % cfg.checkpoint_every == 0 and step < steps:
            save_checkpoint(Path(cfg.output) / CHECKPOINT, run.model, opt, sched, step, elapsed, history,
                            run.dev_history, dataclasses.asdict(cfg))
        if cfg.crash_after_step is not None and step >= cfg.crash_after_step:
            raise RuntimeError(f"injected crash after step {step}")
    bar.close()
    return elapsed, step


def periodic_dev(run: Run, step: int, elapsed: float, history: list) -> float:
    """Score dev now; keep the best adapter so far under <output>/best (model selection on dev)."""
    metrics = run.dev_metrics()
    assert metrics is not None and run.dev is not None
    score = metrics[run.dev.key]
    best = max((s for _, s in run.dev_history), default=float("-inf"))
    run.dev_history.append([step, round(score, 2)])
    log.info("step %d: dev %s %.2f", step, run.dev.key, score)
    if score > best:
        save_adapter(run, step, elapsed, 0.0, metrics, history, Path(run.cfg.output) / "best")
    return score


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _portable_base_name(path: Path, name: str) -> None:
    """peft records the local folder the base was loaded from; keep the portable name instead."""
    import json

    data = json.loads(path.read_text(encoding="utf-8"))
    data["base_model_name_or_path"] = name
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def save_adapter(run: Run, steps: int, elapsed: float, prep_s: float, metrics: dict[str, float] | None,
                 history: list, out: Path | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Peft files + bellm_adapter.json (settings to rebuild the encoder, and how it was trained)."""
    cfg = run.cfg
    out = out or Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    run.model.save_pretrained(str(out))
    (out / "README.md").unlink(missing_ok=True)  # peft's model-card stub
    _portable_base_name(out / "adapter_config.json", cfg.model or EMBEDDED_MODEL)
    metrics = {k: round(v, 2) for k, v in (metrics or {}).items()}
    training = {
        "data": str(cfg.data), "rows": len(run.data), "steps": steps,
        "rows_seen": steps * cfg.batch_size * cfg.grad_accum, "seed": cfg.seed, "scheme": cfg.scheme,
        "train_seconds": round(elapsed, 1), "prepare_seconds": round(prep_s, 1),
        "seconds_per_step": round(elapsed / max(1, steps), 3), "peak_rss_mb": round(peak_rss_mb()),
        "final_loss": float(np.mean(history[-20:])) if history else None,
        "dev": cfg.dev, "dev_spearman": metrics.get("sts"), "dev_metrics": metrics or None,
        "dev_key": run.dev.key if run.dev else None, "dev_history": run.dev_history,
        "config": {k: v for k, v in dataclasses.asdict(cfg).items()
                   if k not in ("resume", "crash_after_step", "show_progress", "cache_root")},
        **(extra or {}),
    }
    enc = EncoderConfig(model=cfg.model, bidirectional_layers=cfg.bidirectional_layers,
                        pooling=cfg.pooling, prompt=cfg.prompt)
    write_adapter_json(out, enc, {"training": training})
    return out
