"""Turn the top-k decoder layers of a Hugging Face causal LM bidirectional.

This is the one place that touches transformers internals, and it touches as little as
possible: for each of the top k layers it sets ``self_attn.is_causal = False`` and swaps the
``attention_mask`` kwarg the layer receives for a padding-only mask (a forward pre-hook).
Both are needed: ``is_causal=False`` alone is ignored by sdpa on padded batches (the causal
mask is passed explicitly) and never read by eager attention. A pre-hook on the base model
records the 2-D padding mask of the current call. Guarded by tests/test_encoder.py.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

FLASH_IMPLEMENTATIONS = ("flash_attention_2", "flash_attention_3")


def layer_owner(model: nn.Module) -> nn.Module:
    """The module holding the decoder layers (``.layers``) of a base ``*Model`` or a wrapper of one."""
    if isinstance(getattr(model, "layers", None), nn.ModuleList):
        return model
    inner = getattr(model, "model", None) or getattr(model, "language_model", None)
    if inner is not None and inner is not model:
        return layer_owner(inner)
    raise TypeError(f"cannot find decoder layers on {type(model).__name__}")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder layers of a base ``*Model`` (llama, qwen, mistral, gemma...)."""
    return layer_owner(model).layers


def padding_only_mask(pad_mask: torch.Tensor | None, dtype: torch.dtype, impl: str) -> torch.Tensor | None:
    """Additive (B,1,L,L) mask that hides padded keys only; None when nothing is padded.

    pad_mask: (B, L) with 1 for real tokens. Flash attention takes the 2-D mask itself.
    """
    if pad_mask is None or bool(pad_mask.all()):
        return None
    if impl in FLASH_IMPLEMENTATIONS:
        return pad_mask
    keep = pad_mask[:, None, None, :].to(torch.bool)  # (B,1,1,L)
    mask = torch.zeros(keep.shape, dtype=dtype, device=pad_mask.device)
    mask = mask.masked_fill(~keep, torch.finfo(dtype).min)
    return mask.expand(-1, 1, pad_mask.shape[1], -1)


class _MaskCapture:
    """Remembers the 2-D attention mask of the current base-model call."""

    def __init__(self) -> None:
        self.pad_mask: torch.Tensor | None = None

    def model_hook(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        mask = kwargs.get("attention_mask")
        self.pad_mask = mask if mask is not None and mask.dim() == 2 else None

    def layer_hook(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict]:
        hidden = args[0] if args else kwargs["hidden_states"]
        impl = getattr(module, "_bellm_attn_impl", "sdpa")
        kwargs["attention_mask"] = padding_only_mask(self.pad_mask, hidden.dtype, impl)
        return args, kwargs


def make_bidirectional(model: nn.Module, k: int) -> nn.Module:
    """Make the top ``k`` decoder layers of ``model`` (a base ``*Model``) bidirectional, in place."""
    if k <= 0:
        return model
    if getattr(model, "_bellm_bidirectional", 0):
        raise RuntimeError("model is already bidirectional")
    layers = decoder_layers(model)
    if k > len(layers):
        raise ValueError(f"bidirectional_layers={k} but the model has only {len(layers)} layers")
    capture = _MaskCapture()
    model.register_forward_pre_hook(capture.model_hook, with_kwargs=True)
    impl = getattr(model.config, "_attn_implementation", "sdpa") or "sdpa"
    for layer in layers[len(layers) - k:]:
        layer.self_attn.is_causal = False
        layer._bellm_attn_impl = impl
        layer.register_forward_pre_hook(capture.layer_hook, with_kwargs=True)
    model._bellm_bidirectional = k
    return model
