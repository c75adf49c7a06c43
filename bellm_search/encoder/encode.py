"""Batched BeLLM encoding: sort by length, token-budget batches, restore order."""
from __future__ import annotations

import logging
import queue
import sys
import threading
from collections.abc import Sequence
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from bellm_search.config import EncoderConfig
from bellm_search.encoder.bidirectional import make_bidirectional
from bellm_search.encoder.loading import (
    INT8,
    apply_adapter,
    load_base_model,
    load_merged_model,
    load_tokenizer,
    quantize_int8,
    resolve_device,
    resolve_dtype,
    resolve_model,
)
from bellm_search.encoder.pooling import pool
from bellm_search.encoder.prefix import PrefixRunner, common_prefix, prefix_runner
from bellm_search.errors import ConfigError

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- pure helpers
MAX_PAD = 0.05  # a batch ends where a row would be padded by more than this share of its longest row ...
MIN_ROWS = 16  # ... once it has this many rows (fewer, smaller products would cost more than the padding)


def plan_batches(lengths: np.ndarray, max_tokens: int, max_batch: int, max_pad: float = MAX_PAD,
                 min_rows: int = MIN_ROWS) -> list[np.ndarray]:
    """Indices grouped into batches, longest first; padded size (rows x longest) <= max_tokens, and
    past ``min_rows`` rows no row shorter than (1 - max_pad) x the batch's longest (bounded padding:
    on 2,000 tweets 2 % padded tokens instead of 11 % with the budget alone)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    ordered = np.asarray(lengths)[order]
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        longest = max(int(ordered[start]), 1)
        end = min(len(order), start + max(1, min(max_batch, max_tokens // longest)))
        short = np.flatnonzero(ordered[start + min_rows:end] < longest * (1 - max_pad))
        if len(short):
            end = start + min_rows + int(short[0])
        batches.append(order[start:end])
        start = end
    return batches


def pad_batch(ids: list[list[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) input ids and 0/1 mask, padded on ``side``."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        span = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
        input_ids[row, span] = torch.tensor(seq, dtype=torch.long)
        mask[row, span] = 1
    return input_ids, mask


def is_oom(exc: BaseException) -> bool:
    oom_type = getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(exc, oom_type) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc))


def parse_devices(device: str) -> list[torch.device]:
    """'auto', 'cpu', 'cuda:1', 'cuda:0,cuda:1' or 'cuda:all' -> a list of devices."""
    if device == "cuda:all":
        count = torch.cuda.device_count()
        if count == 0:
            raise ConfigError("--device cuda:all: no CUDA device is visible (use --device cpu)")
        return [torch.device(f"cuda:{i}") for i in range(count)]
    return [resolve_device(part.strip()) for part in device.split(",") if part.strip()]


# ----------------------------------------------------------------------------- model building
def build_backbone(config: EncoderConfig, device: torch.device, dtype: torch.dtype, merge_adapter: bool = True) -> nn.Module:
    """Base model (+ adapter) with the top layers bidirectional, on ``device``, in eval mode.

    ``config.dtype == "int8"``: float32 activations, int8 weights in every linear layer (dynamic
    quantisation, CPU only)."""
    from bellm_search.encoder.adapter import read_adapter

    path, attn = resolve_model(config.model), config.attn_implementation
    adapter = read_adapter(config.adapter).path if config.adapter else None
    if adapter is not None and merge_adapter:
        model = load_merged_model(path, adapter, dtype, attn)  # cached merged weights when possible
    else:
        model = load_base_model(path, dtype, attn)
        if adapter is not None:
            model = apply_adapter(model, adapter, merge=False)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    make_bidirectional(base, config.bidirectional_layers)
    model = model.to(device).eval()
    return quantize_int8(model) if config.dtype == INT8 else model


class Encoder:
    """BeLLM sentence encoder: ``Encoder(config).encode(texts) -> float32 (n, dim)``.

    ``reuse_prefix`` (default True; also an attribute): run the prompt's shared prefix through the
    lower layers once (encoder/prefix.py, exact); False is the full path on every sequence."""

    def __init__(self, config: EncoderConfig | None = None, *, reuse_prefix: bool = True, **overrides: Any) -> None:
        if config is None:
            from bellm_search.encoder.resolve import resolve_config

            config = resolve_config(**overrides)
        elif overrides:
            raise TypeError("pass either an EncoderConfig or keyword settings, not both")
        self.config = config
        self.devices = parse_devices(config.device)
        self.dtype = resolve_dtype(config.dtype, self.devices[0])
        self.tokenizer = load_tokenizer(resolve_model(config.model), config.padding_side)
        self.replicas = [build_backbone(config, dev, self.dtype) for dev in self.devices]
        self.max_batch = config.batch_size
        self.max_tokens = config.max_batch_tokens
        self.truncated = 0
        self.pad_id = _safe_pad_id(self.tokenizer, self.replicas[0])
        self.reuse_prefix = reuse_prefix
        self.runners = [self._checked_runner(r) for r in range(len(self.replicas))] if reuse_prefix else []

    @property
    def dim(self) -> int:
        return int(self.replicas[0].config.hidden_size)

    # ------------------------------------------------------------------ tokenisation
    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of prompt-wrapped texts; over-long texts are cut (the prompt stays whole)."""
        prompt, limit = self.config.resolved_prompt, self.config.max_length
        ids = self.tokenizer([prompt.replace("{text}", t) for t in texts], add_special_tokens=True)["input_ids"]
        filler = self.tokenizer.bos_token_id
        filler = self.tokenizer.eos_token_id if filler is None else filler
        ids = [x if x else [filler] for x in ids]  # an empty text with a bare prompt: one token
        long_rows = [i for i, x in enumerate(ids) if len(x) > limit]
        for i in long_rows:
            ids[i] = self._truncate(texts[i], prompt, limit)
        if long_rows:
            self.truncated += len(long_rows)
            log.warning("%d text(s) longer than max_length=%d tokens were truncated", len(long_rows), limit)
        return ids

    def _truncate(self, text: str, prompt: str, limit: int) -> list[int]:
        overhead = len(self.tokenizer(prompt.replace("{text}", ""))["input_ids"])
        keep = max(limit - overhead - 1, 1)
        text_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        while True:
            cut = self.tokenizer.decode(text_ids[:keep])
            ids = self.tokenizer(prompt.replace("{text}", cut))["input_ids"]
            if len(ids) <= limit or keep <= 1:
                return ids[:limit] if len(ids) > limit else ids
            keep -= max(1, len(ids) - limit)

    # ------------------------------------------------------------------ encoding
    def encode(
        self,
        texts: Sequence[str],
        *,
        show_progress_bar: bool | None = False,  # None: a bar when stderr is a terminal
        normalize_embeddings: bool = True,
    ) -> np.ndarray:
        """float32 (n, dim) embeddings in input order, L2-normalised by default."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of strings, not a single string")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not len(texts):
            return out
        ids = self.tokenize(texts)
        batches = plan_batches(np.array([len(x) for x in ids]), self.max_tokens, self.max_batch)
        bar = _progress(len(texts), show_progress_bar)
        try:
            self._run(batches, ids, out, bar.update)
        finally:
            bar.close()
        if normalize_embeddings:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def _run(self, batches: list[np.ndarray], ids: list[list[int]], out: np.ndarray, done: Callable[[int], Any]) -> None:
        if len(self.replicas) == 1:
            for idx in batches:
                out[idx] = self._embed_safe(0, [ids[i] for i in idx])
                done(len(idx))
            return
        self._run_parallel(batches, ids, out, done)

    def _run_parallel(self, batches, ids, out, done) -> None:
        """One thread per GPU replica, pulling batches from a shared queue."""
        work: queue.Queue = queue.Queue()
        for idx in batches:
            work.put(idx)
        errors: list[BaseException] = []
        lock = threading.Lock()

        def worker(r: int) -> None:
            while not errors:
                try:
                    idx = work.get_nowait()
                except queue.Empty:
                    return
                try:
                    vecs = self._embed_safe(r, [ids[i] for i in idx])
                except BaseException as exc:  # re-raised in the caller
                    errors.append(exc)
                    return
                with lock:
                    out[idx] = vecs
                    done(len(idx))

        threads = [threading.Thread(target=worker, args=(r,), daemon=True) for r in range(len(self.replicas))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    def _embed_safe(self, replica: int, batch: list[list[int]]) -> np.ndarray:
        """Embed a batch; on CUDA out-of-memory halve it (and later batches) and go on."""
        try:
            return self._embed(replica, batch)
        except Exception as exc:
            if not is_oom(exc) or len(batch) == 1:
                raise
        if self.devices[replica].type == "cuda":
            torch.cuda.empty_cache()
        half = len(batch) // 2
        self.max_batch = max(1, min(self.max_batch, half))
        log.warning("out of memory on a batch of %d; halving to %d", len(batch), half)
        return np.concatenate([self._embed_safe(replica, batch[:half]), self._embed_safe(replica, batch[half:])])

    def _embed(self, replica: int, batch: list[list[int]]) -> np.ndarray:
        runner = self.runners[replica] if self.reuse_prefix and self.runners else None
        if runner is not None and runner.fits(batch):
            return self._embed_prefixed(runner, replica, batch)
        return self._embed_full(replica, batch)

    def _embed_full(self, replica: int, batch: list[list[int]]) -> np.ndarray:
        model, device = self.replicas[replica], self.devices[replica]
        input_ids, mask = pad_batch(batch, self.pad_id, self.config.padding_side)
        input_ids, mask = input_ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            hidden = model(input_ids=input_ids, attention_mask=mask, position_ids=positions).last_hidden_state
            vecs = pool(hidden, mask, self.config.pooling).float()
        return vecs.cpu().numpy()

    def _embed_prefixed(self, runner: PrefixRunner, replica: int, batch: list[list[int]]) -> np.ndarray:
        rest_ids, rest_mask = pad_batch([x[runner.length:] for x in batch], self.pad_id, self.config.padding_side)
        device = self.devices[replica]
        with torch.inference_mode():
            hidden, mask = runner.forward(rest_ids.to(device), rest_mask.to(device))
            vecs = pool(hidden, mask, self.config.pooling).float()
        return vecs.cpu().numpy()

    # ------------------------------------------------------------------ prefix reuse
    def prompt_prefix_ids(self) -> list[int]:
        """The token ids every prompt-wrapped text starts with (empty for a prompt like "{text}")."""
        prompt = self.config.resolved_prompt
        probes = self.tokenizer([prompt.replace("{text}", t) for t in ("a", "Z 9")])["input_ids"]
        return common_prefix(probes[0], probes[1])

    def _checked_runner(self, replica: int) -> PrefixRunner | None:
        """The replica's prefix runner, if it gives the full path's vectors on a probe (guards
        against a transformers version whose cache or mask handling differs)."""
        runner = prefix_runner(self.replicas[replica], self.config, self.prompt_prefix_ids())
        if runner is None:
            return None
        prompt = self.config.resolved_prompt
        probe = self.tokenizer([prompt.replace("{text}", t) for t in ("a man is playing a guitar", "cat")])["input_ids"]
        probe = [x for x in probe if len(x) <= self.config.max_length]
        if not probe or not runner.fits(probe):
            return runner  # this prompt's rows take the full path anyway
        full, reused = self._embed_full(replica, probe), self._embed_prefixed(runner, replica, probe)
        full /= np.linalg.norm(full, axis=1, keepdims=True)
        reused /= np.linalg.norm(reused, axis=1, keepdims=True)
        worst = float((full * reused).sum(1).min())
        exact = self.dtype == torch.float32 and self.config.dtype != INT8  # int8 scales depend on the batch
        if worst < (1 - 1e-6 if exact else 0.999):
            log.warning("prompt-prefix reuse disagrees with the full path (cosine %.6f); using the full path", worst)
            return None
        return runner


def _safe_pad_id(tokenizer: Any, model: nn.Module) -> int:
    """The pad id, or eos when the tokenizer's pad lies outside the embedding table (masked anyway)."""
    vocab = model.get_input_embeddings().num_embeddings
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None and 0 <= candidate < vocab:
            return int(candidate)
    return 0


def _progress(total: int, show: bool | None) -> Any:
    from tqdm.auto import tqdm

    enabled = sys.stderr.isatty() if show is None else show
    return tqdm(total=total, disable=not enabled, unit="text", desc="encode", dynamic_ncols=True)
