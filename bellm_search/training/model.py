"""The trainable model: LoRA on the top decoder layers, and forward passes over layer slices.

``lower_states`` runs the frozen causal layers below the trained ones; ``top_forward`` runs the
trained layers (and the final norm) from such states; ``full_forward`` runs everything from token
ids. Right padding, causal lower layers and positions counted over real tokens make the lower
states of a text independent of its batch, which is what lets cache.py store them.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from bellm_search.config import EncoderConfig
from bellm_search.encoder.bidirectional import decoder_layers, make_bidirectional
from bellm_search.encoder.encode import Encoder, pad_batch
from bellm_search.encoder.loading import load_base_model
from bellm_search.encoder.pooling import pool
from bellm_search.errors import ConfigError
from bellm_search.training.packed import packed_top_forward

log = logging.getLogger(__name__)

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


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


def _device(base: nn.Module) -> torch.device:
    return next(base.parameters()).device


def lower_states(base: nn.Module, start: int, ids: list[list[int]], pad_id: int) -> list[torch.Tensor]:
    """The states entering layer ``start`` for each sequence, unpadded, on CPU: [(L_i, H)]."""
    input_ids, mask = (t.to(_device(base)) for t in pad_batch(ids, pad_id, "right"))
    with torch.no_grad(), layer_slice(base, 0, start, final_norm=False):
        hidden = base(input_ids=input_ids, attention_mask=mask, position_ids=positions(mask)).last_hidden_state
    return [hidden[i, : len(x)].cpu() for i, x in enumerate(ids)]


def top_forward(base: nn.Module, start: int, states: Sequence[torch.Tensor], pooling: str,
                packed: bool = True, slack: float = 2.0) -> torch.Tensor:
    """Pooled (B, H) output of layers [start:] + final norm, fed with lower states [(L_i, H)]:
    on the real tokens only (packed.py; attention in buckets of texts >= longest / ``slack``
    tokens) where the model allows it and ``packed``, else padded to the longest text."""
    if packed:
        out = packed_top_forward(base, start, states, pooling, slack)
        if out is not None:
            return out
    return padded_top_forward(base, start, states, pooling)


def padded_top_forward(base: nn.Module, start: int, states: Sequence[torch.Tensor], pooling: str) -> torch.Tensor:
    """``top_forward`` through the Hugging Face layers, the chunk padded to its longest text."""
    dev = _device(base)
    hidden = nn.utils.rnn.pad_sequence(list(states), batch_first=True).to(dev)  # (B, L, H), right-padded
    lengths = torch.tensor([len(s) for s in states], device=dev)
    mask = (torch.arange(hidden.shape[1], device=dev)[None, :] < lengths[:, None]).long()
    with layer_slice(base, start):
        out = base(inputs_embeds=hidden, attention_mask=mask, position_ids=positions(mask)).last_hidden_state
    return pool(out, mask, pooling)


def full_forward(base: nn.Module, ids: list[list[int]], pad_id: int, pooling: str) -> torch.Tensor:
    input_ids, mask = (t.to(_device(base)) for t in pad_batch(ids, pad_id, "right"))
    out = base(input_ids=input_ids, attention_mask=mask, position_ids=positions(mask)).last_hidden_state
    return pool(out, mask, pooling)


def tokenize_texts(tokenizer: Any, config: EncoderConfig, texts: list[str]) -> list[list[int]]:
    """Prompt-wrapped, truncated ids exactly as ``Encoder.tokenize`` makes them."""
    enc = Encoder.__new__(Encoder)  # reuse the encoder's tokenisation without loading a model
    enc.config, enc.tokenizer, enc.truncated = config, tokenizer, 0
    return enc.tokenize(texts)


def build_model(model_path: str, dtype: torch.dtype, device: torch.device, *, bidirectional_layers: int,
                train_layers: int | None, lora_r: int, lora_alpha: int, lora_dropout: float,
                lora_targets: Sequence[str], gradient_checkpointing: bool = False,
                full: bool = False) -> tuple[nn.Module, nn.Module, int]:
    """(peft model, its base ``*Model`` with the top k layers bidirectional, first LoRA layer).

    LoRA on the top ``train_layers`` layers (every layer when None); everything else is frozen.
    ``full``: no LoRA; the top ``train_layers`` layers themselves are trained (in float32)."""
    from peft import LoraConfig, get_peft_model

    base = load_base_model(model_path, dtype, None)
    n_layers = len(decoder_layers(base))
    if bidirectional_layers > n_layers or (train_layers or 0) > n_layers:
        raise ConfigError(f"the model has {n_layers} layers: lower --bidirectional-layers/--train-layers")
    start = 0 if train_layers is None else n_layers - train_layers
    if full:
        model = full_top_layers(base, start, bidirectional_layers).to(device)
        return model, model, start
    lora = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                      target_modules=list(lora_targets), task_type=None,
                      layers_to_transform=None if start == 0 else list(range(start, n_layers)),
                      layers_pattern=None if start == 0 else "layers")
    try:
        model = get_peft_model(base, lora)
    except ValueError as exc:
        raise ConfigError(f"--lora-targets {','.join(lora_targets)}: {exc}") from None
    make_bidirectional(model.get_base_model(), bidirectional_layers)
    if gradient_checkpointing:
        model.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.to(device), model.get_base_model(), start


def full_top_layers(base: nn.Module, start: int, bidirectional_layers: int) -> nn.Module:
    """Train decoder layers [start:] themselves (float32 master weights; bf16 autocast computes)."""
    base.requires_grad_(False)
    for layer in decoder_layers(base)[start:]:
        layer.float().requires_grad_(True)
    make_bidirectional(base, bidirectional_layers)
    return base


def load_lora_weights(model: nn.Module, folder: Path) -> None:
    """Start training from an existing adapter's LoRA weights (continued training). The adapter
    must have the same rank and targets; its layers must be the model's or a subset of them (e.g.
    an adapter on the top 16 layers continued with LoRA on all 30): layers it does not cover start
    fresh (B = 0, so the model starts as the adapter's). Anything else is refused."""
    import re

    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    file = Path(folder) / "adapter_model.safetensors"
    if not file.is_file():
        raise ConfigError(f"--init-adapter {folder}: no adapter_model.safetensors there")
    state = load_file(str(file))
    result = set_peft_model_state_dict(model, state)
    layer = re.compile(r"\.layers\.(\d+)\.")
    covered = {m.group(1) for k in state if (m := layer.search(k))}
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    partial = [k for k in missing if (m := layer.search(k)) is None or m.group(1) in covered]
    if partial or getattr(result, "unexpected_keys", None):
        raise ConfigError(f"--init-adapter {folder} does not match this run's LoRA layout "
                          f"({len(partial)} LoRA tensors missing, {len(result.unexpected_keys)} unexpected): "
                          "use the same --lora-r and --lora-targets, and --train-layers at least the adapter's")
    if missing:
        log.info("--init-adapter %s covers %d layers; %d LoRA tensors of the other layers start fresh",
                 folder, len(covered), len(missing))
