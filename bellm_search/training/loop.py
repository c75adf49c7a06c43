"""BeLLM training: LoRA on the top decoder layers, AnglE loss, checkpoints with exact resume.

Two schemes, chosen by ``TrainConfig.train_layers``:

- plain (``train_layers=None``): LoRA on every decoder layer, every step runs the whole model.
- cached (``train_layers=N``, N >= bidirectional_layers): LoRA on the top N layers only. The
  lower layers are frozen and causal, so a sentence's states entering layer L-N never change:
  they are computed once per distinct sentence (no grad, model dtype, on disk next to the
  cache root) and each step runs only the top N layers from them. Padding does not change
  them either (right padding, causal layers, positions counted over real tokens).

A step = ``batch_size * grad_accum`` rows. The data order is a pure function of (seed, step),
so a checkpoint (LoRA weights, optimizer, scheduler, RNG states, step) resumes exactly.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import torch
from torch import nn

from bellm_search.config import EMBEDDED_MODEL, EncoderConfig, cache_dir
from bellm_search.encoder.bidirectional import decoder_layers, make_bidirectional
from bellm_search.encoder.encode import Encoder, _safe_pad_id, pad_batch, plan_batches
from bellm_search.encoder.loading import (
    load_base_model,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
    resolve_model,
    write_adapter_json,
)
from bellm_search.training.loss import LossWeights, angle_objective
from bellm_search.encoder.pooling import pool
from bellm_search.errors import ConfigError, CorpusError

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class TrainConfig:
    """Everything one training run needs; saved into the checkpoint and the adapter JSON."""

    data: str
    output: str
    model: str | None = None
    bidirectional_layers: int = 4  # k = 0, 2, 4 score alike at 30 steps; the shipped adapter uses 8, the best k (docs/training.md)
    pooling: Literal["last", "mean"] = "last"
    prompt: str | None = None
    max_length: int = 128  # training truncation (the adapter keeps the encoder default)
    train_layers: int | None = 8  # LoRA on the top N layers, lower states cached; None = plain
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
    dev: str | None = None  # STS file scored at the end (Spearman x 100), recorded in the JSON
    dev_every: int | None = None  # also score dev every N steps; the best adapter goes to <output>/best
    device: str = "auto"
    dtype: str = "auto"
    max_batch_tokens: int = 16384
    cache_root: str | None = None  # where lower-layer caches live; None = <cache_dir>/train-cache
    crash_after_step: int | None = None  # testing: raise after this step (after its checkpoint)
    show_progress: bool | None = None

    def __post_init__(self) -> None:
        self.lora_targets = tuple(self.lora_targets)
        if self.batch_size < 2:
            raise ConfigError("--batch-size must be >= 2 (in-batch negatives need other rows)")
        if self.dev_every is not None and (self.dev_every < 1 or not self.dev):
            raise ConfigError("--dev-every needs --dev and must be >= 1")
        if self.grad_accum < 1 or self.lora_r < 1 or self.checkpoint_every < 1:
            raise ConfigError("--grad-accum, --lora-r and --checkpoint-every must be >= 1")
        if self.train_layers is not None and self.train_layers < max(1, self.bidirectional_layers):
            raise ConfigError(
                f"train_layers={self.train_layers} must be >= 1 and >= bidirectional_layers="
                f"{self.bidirectional_layers}: the bidirectional layers must be trained")
        if self.max_steps is None and self.epochs <= 0:
            raise ConfigError("give --epochs > 0 or --max-steps")
        if self.lr <= 0 or self.warmup < 0:
            raise ConfigError("--lr must be > 0 and --warmup >= 0")
        self.encoder_config()  # validates pooling, prompt, max_length, k

    def encoder_config(self, max_length: int | None = None) -> EncoderConfig:
        return EncoderConfig(model=self.model, bidirectional_layers=self.bidirectional_layers,
                             pooling=self.pooling, prompt=self.prompt,
                             max_length=max_length or self.max_length, padding_side="right")

    @property
    def weights(self) -> LossWeights:
        return LossWeights(self.w_contrastive, self.w_angle, self.w_cosent)


# ----------------------------------------------------------------------------- data
@dataclass
class TrainData:
    """Rows as indices into ``texts``: anchor/text1, positive/text2, negative (-1 = none), gold."""

    texts: list[str]
    anchor: np.ndarray
    positive: np.ndarray
    negative: np.ndarray
    gold: np.ndarray | None  # scored pairs only

    def __len__(self) -> int:
        return len(self.anchor)


def read_training_data(path: str | Path) -> TrainData:
    """JSONL rows {"anchor","positive"[,"negative"]} or {"text1","text2","score"}; not mixed."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such training file")
    index: dict[str, int] = {}
    cols: dict[str, list] = {"a": [], "p": [], "n": [], "y": []}
    kind = None
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            row = _parse_row(path, n, line)
            row_kind = "scored" if "score" in row else "triples"
            if kind and row_kind != kind:
                raise CorpusError(str(path), n, f"a {row_kind} row in a file of {kind}: use one kind per file")
            kind = row_kind
            _add_row(row, kind, index, cols)
    if len(cols["a"]) < 2:
        raise CorpusError(str(path), 1, "need at least 2 training rows")
    gold = np.array(cols["y"], dtype=np.float32) if kind == "scored" else None
    return TrainData(list(index), np.array(cols["a"]), np.array(cols["p"]), np.array(cols["n"]), gold)


def _parse_row(path: Path, n: int, line: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CorpusError(str(path), n, f"invalid JSON ({exc.msg})") from None
    if not isinstance(row, dict):
        raise CorpusError(str(path), n, "expected a JSON object")
    keys = ("text1", "text2") if "score" in row else ("anchor", "positive")
    for key in keys + (("negative",) if row.get("negative") is not None else ()):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise CorpusError(str(path), n, f"'{key}' must be a non-empty string "
                              "(rows are {anchor, positive[, negative]} or {text1, text2, score})")
    if "score" in row and (isinstance(row["score"], bool) or not isinstance(row["score"], (int, float))):
        raise CorpusError(str(path), n, f"'score' must be a number, got {row['score']!r}")
    return row


def _add_row(row: dict[str, Any], kind: str, index: dict[str, int], cols: dict[str, list]) -> None:
    def idx(text: str | None) -> int:
        return -1 if text is None else index.setdefault(text, len(index))

    if kind == "scored":
        cols["a"].append(idx(row["text1"]))
        cols["p"].append(idx(row["text2"]))
        cols["y"].append(float(row["score"]))
    else:
        cols["a"].append(idx(row["anchor"]))
        cols["p"].append(idx(row["positive"]))
    cols["n"].append(idx(row.get("negative")))


def micro_batch(n_rows: int, batch_size: int, seed: int, m: int) -> np.ndarray:
    """Row indices of global micro-batch ``m``: epoch e is a permutation seeded by (seed, e);
    the incomplete tail of each epoch is dropped."""
    per_epoch = max(1, n_rows // batch_size)
    epoch, k = divmod(m, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n_rows)
    return perm[k * batch_size:(k + 1) * batch_size]


def total_steps(cfg: TrainConfig, n_rows: int) -> int:
    if cfg.max_steps is not None:
        return cfg.max_steps
    per_epoch = max(1, n_rows // cfg.batch_size) / cfg.grad_accum
    return max(1, math.ceil(cfg.epochs * per_epoch))


def negative_mask(a: np.ndarray, p: np.ndarray, n: np.ndarray) -> torch.Tensor:
    """(B, 2B) valid columns for row i: its own positive; other positives unless they share i's
    anchor or are i's positive/anchor text; hard negatives that exist and are not i's texts."""
    same_anchor = a[:, None] == a[None, :]
    pos_clash = (p[None, :] == p[:, None]) | (p[None, :] == a[:, None]) | same_anchor
    pos_ok = ~pos_clash | np.eye(len(a), dtype=bool)
    neg_ok = (n[None, :] >= 0) & (n[None, :] != p[:, None]) & (n[None, :] != a[:, None])
    return torch.from_numpy(np.concatenate([pos_ok, neg_ok], axis=1))


# ----------------------------------------------------------------------------- model pieces
def layer_owner(base: nn.Module) -> nn.Module:
    """The module whose ``layers`` attribute holds the decoder layers."""
    layers = decoder_layers(base)
    for module in base.modules():
        if getattr(module, "layers", None) is layers:
            return module
    raise TypeError(f"cannot find the owner of the decoder layers of {type(base).__name__}")


@contextlib.contextmanager
def layer_slice(base: nn.Module, start: int, stop: int | None = None, final_norm: bool = True) -> Iterator[None]:
    """Run ``base`` with only decoder layers [start:stop] (and without its final norm)."""
    owner = layer_owner(base)
    full, norm = owner.layers, owner.norm
    owner.layers = nn.ModuleList(list(full)[start:stop])
    if not final_norm:
        owner.norm = nn.Identity()
    try:
        yield
    finally:
        owner.layers, owner.norm = full, norm


def positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


def lower_states(base: nn.Module, start: int, ids: list[list[int]], pad_id: int) -> list[torch.Tensor]:
    """The states entering layer ``start`` for each sequence, unpadded: [(L_i, H)]."""
    input_ids, mask = pad_batch(ids, pad_id, "right")
    dev = next(base.parameters()).device
    input_ids, mask = input_ids.to(dev), mask.to(dev)
    with torch.no_grad(), layer_slice(base, 0, start, final_norm=False):
        hidden = base(input_ids=input_ids, attention_mask=mask, position_ids=positions(mask)).last_hidden_state
    return [hidden[i, : len(x)].cpu() for i, x in enumerate(ids)]


def top_forward(base: nn.Module, start: int, states: list[torch.Tensor], pooling: str) -> torch.Tensor:
    """Pooled (B, H) output of layers [start:] + final norm, fed with cached lower states."""
    dev = next(base.parameters()).device
    width, dim = max(len(s) for s in states), states[0].shape[-1]
    hidden = torch.zeros((len(states), width, dim), dtype=states[0].dtype, device=dev)
    mask = torch.zeros((len(states), width), dtype=torch.long, device=dev)
    for i, s in enumerate(states):
        hidden[i, : len(s)] = s.to(dev)
        mask[i, : len(s)] = 1
    with layer_slice(base, start):
        out = base(inputs_embeds=hidden, attention_mask=mask, position_ids=positions(mask)).last_hidden_state
    return pool(out, mask, pooling)


def full_forward(base: nn.Module, ids: list[list[int]], pad_id: int, pooling: str) -> torch.Tensor:
    dev = next(base.parameters()).device
    input_ids, mask = pad_batch(ids, pad_id, "right")
    input_ids, mask = input_ids.to(dev), mask.to(dev)
    out = base(input_ids=input_ids, attention_mask=mask, position_ids=positions(mask)).last_hidden_state
    return pool(out, mask, pooling)


def tokenize_texts(tokenizer: Any, config: EncoderConfig, texts: list[str]) -> list[list[int]]:
    """Prompt-wrapped, truncated ids exactly as ``Encoder.tokenize`` makes them."""
    enc = Encoder.__new__(Encoder)  # reuse the encoder's tokenisation without loading a model
    enc.config, enc.tokenizer, enc.truncated = config, tokenizer, 0
    return enc.tokenize(texts)


def build_model(cfg: TrainConfig, device: torch.device, dtype: torch.dtype) -> tuple[nn.Module, nn.Module, int]:
    """(peft model, its base ``*Model`` with the top k layers bidirectional, first LoRA layer)."""
    from peft import LoraConfig, get_peft_model

    base = load_base_model(resolve_model(cfg.model), dtype, None)
    n_layers = len(decoder_layers(base))
    if cfg.bidirectional_layers > n_layers or (cfg.train_layers or 0) > n_layers:
        raise ConfigError(f"the model has {n_layers} layers: lower --bidirectional-layers/--train-layers")
    start = 0 if cfg.train_layers is None else n_layers - cfg.train_layers
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_targets), task_type=None,
                      layers_to_transform=None if start == 0 else list(range(start, n_layers)),
                      layers_pattern=None if start == 0 else "layers")
    try:
        model = get_peft_model(base, lora)
    except ValueError as exc:
        raise ConfigError(f"--lora-targets {','.join(cfg.lora_targets)}: {exc}") from None
    make_bidirectional(model.get_base_model(), cfg.bidirectional_layers)
    if cfg.gradient_checkpointing:
        model.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.to(device), model.get_base_model(), start


# ----------------------------------------------------------------------------- the state cache
class StateCache:
    """Lower-layer states of every distinct text, flat (sum L_i, H) with offsets."""

    def __init__(self, flat: torch.Tensor, lengths: torch.Tensor) -> None:
        self.flat, self.lengths = flat, lengths
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.flat[self.offsets[i]: self.offsets[i + 1]]

    @classmethod
    def build(cls, base: nn.Module, start: int, ids: list[list[int]], pad_id: int, max_tokens: int,
              show: bool | None) -> "StateCache":
        from tqdm.auto import tqdm

        lengths = torch.tensor([len(x) for x in ids], dtype=torch.long)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
        dim, dtype = base.config.hidden_size, next(base.parameters()).dtype
        flat = torch.empty((int(lengths.sum()), dim), dtype=dtype)
        bar = tqdm(total=len(ids), desc="cache lower layers", unit="text", file=sys.stderr,
                   disable=not (sys.stderr.isatty() if show is None else show), dynamic_ncols=True)
        for batch in plan_batches(lengths.numpy(), max_tokens, 512):
            for i, s in zip(batch, lower_states(base, start, [ids[i] for i in batch], pad_id)):
                flat[offsets[i]: offsets[i + 1]] = s
            bar.update(len(batch))
        bar.close()
        return cls(flat, lengths)

    def save(self, path: Path) -> None:
        _atomic_save({"flat": self.flat, "lengths": self.lengths}, path)

    @classmethod
    def load(cls, path: Path) -> "StateCache":
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # no private copy
        return cls(data["flat"], data["lengths"])


def cache_key(cfg: TrainConfig, model_path: str, start: int, dtype: torch.dtype, ids: list[list[int]]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([model_path, start, str(dtype)]).encode())
    for x in ids:
        h.update(np.asarray(x, dtype=np.int64).tobytes() + b"|")
    return h.hexdigest()[:20]


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- the run
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
    dev_pairs: list = field(default_factory=list)
    dev_history: list = field(default_factory=list)  # [step, dev Spearman] of --dev-every

    def autocast(self) -> Any:
        if self.dtype in (torch.bfloat16, torch.float16):
            return torch.autocast(self.device.type, dtype=self.dtype)
        return contextlib.nullcontext()

    def embed(self, text_ids: np.ndarray) -> torch.Tensor:
        """(n, H) float32 embeddings of texts ``text_ids``, in length-sorted token-budget chunks."""
        lengths = np.array([len(self.ids[t]) for t in text_ids])
        out: list[tuple[np.ndarray, torch.Tensor]] = []
        for chunk in plan_batches(lengths, self.cfg.max_batch_tokens, 4096):
            rows = text_ids[chunk]
            with self.autocast():
                if self.cache is not None:
                    vecs = top_forward(self.base, self.start, [self.cache[t] for t in rows], self.cfg.pooling)
                else:
                    vecs = full_forward(self.base, [self.ids[t] for t in rows], self.pad_id, self.cfg.pooling)
            out.append((chunk, vecs.float()))
        result = torch.empty((len(text_ids), out[0][1].shape[1]), device=out[0][1].device)
        order = torch.from_numpy(np.concatenate([c for c, _ in out])).to(result.device)
        return result.index_copy(0, order, torch.cat([v for _, v in out]))

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
    def dev_score(self) -> float | None:
        from bellm_search.eval.metrics import spearman

        if not self.dev_pairs:
            return None
        self.model.eval()
        first = len(self.data.texts)
        u = self.embed(np.arange(first, first + len(self.dev_pairs)))
        v = self.embed(np.arange(first + len(self.dev_pairs), first + 2 * len(self.dev_pairs)))
        self.model.train()
        cos = torch.nn.functional.cosine_similarity(u, v).cpu().numpy()
        return 100 * spearman(cos, [x.score for x in self.dev_pairs])


def prepare_run(cfg: TrainConfig) -> Run:
    from bellm_search.eval.metrics import read_sts

    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    torch.manual_seed(cfg.seed)  # the LoRA initialisation
    data = read_training_data(cfg.data)
    dev_pairs = read_sts(cfg.dev) if cfg.dev else []
    model_path = resolve_model(cfg.model)
    tokenizer = load_tokenizer(model_path, "right")
    texts = data.texts + [x.text1 for x in dev_pairs] + [x.text2 for x in dev_pairs]
    ids = tokenize_texts(tokenizer, cfg.encoder_config(), texts)
    model, base, start = build_model(cfg, device, dtype)
    run = Run(cfg, data, model, base, start, ids, _safe_pad_id(tokenizer, base), device, dtype,
              dev_pairs=dev_pairs)
    if cfg.train_layers is not None:
        run.cache = load_or_build_cache(run, model_path)
    model.train()
    return run


def load_or_build_cache(run: Run, model_path: str) -> StateCache:
    cfg = run.cfg
    root = Path(cfg.cache_root) if cfg.cache_root else cache_dir() / "train-cache"
    path = root / f"lower-{cache_key(cfg, model_path, run.start, run.dtype, run.ids)}.pt"
    if path.is_file():
        log.info("using cached lower-layer states %s", path)
        return StateCache.load(path)
    t0 = time.time()
    with run.autocast():
        cache = StateCache.build(run.base, run.start, run.ids, run.pad_id, cfg.max_batch_tokens, cfg.show_progress)
    log.info("cached %d texts below layer %d in %.0f s", len(run.ids), run.start, time.time() - t0)
    cache.save(path)
    return cache


# ----------------------------------------------------------------------------- optimiser, checkpoints
def make_optimizer(run: Run, steps: int) -> tuple[torch.optim.Optimizer, Any]:
    params = [p for p in run.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=run.cfg.lr, weight_decay=0.0)
    warm = run.cfg.warmup if run.cfg.warmup >= 1 else round(run.cfg.warmup * steps)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        return max(0.0, (steps - step) / max(1, steps - warm))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.detach().cpu().clone() for k, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(run: Run, opt: Any, sched: Any, step: int, elapsed: float, history: list) -> None:
    state = {
        "step": step, "elapsed": elapsed, "history": history, "dev_history": run.dev_history,
        "config": dataclasses.asdict(run.cfg),
        "trainable": trainable_state(run.model),
        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                "numpy": _numpy_state_tensors()},
    }
    _atomic_save(state, Path(run.cfg.output) / CHECKPOINT)


def _numpy_state_tensors() -> dict[str, Any]:
    """numpy's global RNG state as tensors and numbers (loadable with weights_only=True)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def _set_numpy_state(state: dict[str, Any]) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state((state["name"], keys, state["pos"], state["has_gauss"], state["gauss"]))


# settings a resumed run may change; a new --max-steps/--epochs re-plans the rest of the decay
# (a --max-steps at or below the checkpoint's step just writes the adapter from the checkpoint)
RESUME_IGNORED = {"resume", "crash_after_step", "show_progress", "checkpoint_every", "device", "cache_root",
                  "dev", "dev_every", "max_steps", "epochs"}


def load_checkpoint(run: Run, opt: Any, sched: Any) -> tuple[int, float, list]:
    path = Path(run.cfg.output) / CHECKPOINT
    state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle arbitrary objects
    saved, now = state["config"], dataclasses.asdict(run.cfg)
    diff = sorted(k for k in now if k not in RESUME_IGNORED and saved.get(k) != now[k])
    if diff:
        raise ConfigError(f"--resume: {path} was written with different settings ({', '.join(diff)}); "
                          "use the same options or a fresh --output")
    params = dict(run.model.named_parameters())
    with torch.no_grad():
        for k, v in state["trainable"].items():
            params[k].copy_(v)
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    _set_numpy_state(state["rng"]["numpy"])
    run.dev_history = [list(x) for x in state.get("dev_history", [])]
    log.info("resumed from %s at step %d", path, state["step"])
    return state["step"], state["elapsed"], state["history"]


# ----------------------------------------------------------------------------- train()
def train(cfg: TrainConfig) -> Path:
    """Train a BeLLM LoRA adapter; returns the output folder (a complete adapter)."""
    out = Path(cfg.output)
    if (out / CHECKPOINT).is_file() and not cfg.resume:
        raise ConfigError(f"{out} holds a checkpoint of an unfinished run: add --resume, or pick a new --output")
    if (out / "adapter_config.json").is_file() and not (out / CHECKPOINT).is_file():
        raise ConfigError(f"{out} already holds a trained adapter: pick a new --output")
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    t_prep = time.time()
    run = prepare_run(cfg)
    prep_s = time.time() - t_prep
    steps = total_steps(cfg, len(run.data))
    opt, sched = make_optimizer(run, steps)
    step, elapsed, history = 0, 0.0, []
    if cfg.resume and (out / CHECKPOINT).is_file():
        step, elapsed, history = load_checkpoint(run, opt, sched)
    elapsed, step = train_loop(run, opt, sched, step, steps, elapsed, history)
    dev = run.dev_score()
    if dev is not None and cfg.dev_every:
        run.dev_history.append([step, round(dev, 2)])
    save_adapter(run, step, elapsed, prep_s, dev, history)
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
            save_checkpoint(run, opt, sched, step, elapsed, history)
        if cfg.crash_after_step is not None and step >= cfg.crash_after_step:
            raise RuntimeError(f"injected crash after step {step}")
    bar.close()
    return elapsed, step


def periodic_dev(run: Run, step: int, elapsed: float, history: list) -> float:
    """Score dev now; keep the best adapter so far under <output>/best (model selection on dev)."""
    score = run.dev_score()
    assert score is not None
    best = max((s for _, s in run.dev_history), default=float("-inf"))
    run.dev_history.append([step, round(score, 2)])
    log.info("step %d: dev Spearman %.2f", step, score)
    if score > best:
        save_adapter(run, step, elapsed, 0.0, score, history, Path(run.cfg.output) / "best")
    return score


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


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _portable_base_name(path: Path, name: str) -> None:
    """peft records the local folder the base was loaded from; keep the portable name instead."""
    data = json.loads(path.read_text(encoding="utf-8"))
    data["base_model_name_or_path"] = name
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def save_adapter(run: Run, steps: int, elapsed: float, prep_s: float, dev: float | None, history: list,
                 out: Path | None = None) -> None:
    cfg = run.cfg
    out = out or Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    run.model.save_pretrained(str(out))
    (out / "README.md").unlink(missing_ok=True)  # peft's model-card stub
    _portable_base_name(out / "adapter_config.json", cfg.model or EMBEDDED_MODEL)
    training = {
        "data": str(cfg.data), "rows": len(run.data), "steps": steps,
        "rows_seen": steps * cfg.batch_size * cfg.grad_accum, "seed": cfg.seed,
        "scheme": "plain" if cfg.train_layers is None else f"cached-top-{cfg.train_layers}",
        "train_seconds": round(elapsed, 1), "prepare_seconds": round(prep_s, 1),
        "seconds_per_step": round(elapsed / max(1, steps), 3), "peak_rss_mb": round(peak_rss_mb()),
        "final_loss": float(np.mean(history[-20:])) if history else None,
        "dev": cfg.dev, "dev_spearman": None if dev is None else round(dev, 2),
        "dev_history": run.dev_history,
        "config": {k: v for k, v in dataclasses.asdict(cfg).items()
                   if k not in ("resume", "crash_after_step", "show_progress", "cache_root")},
    }
    enc = EncoderConfig(model=cfg.model, bidirectional_layers=cfg.bidirectional_layers,
                        pooling=cfg.pooling, prompt=cfg.prompt)
    write_adapter_json(out, enc, {"training": training})
