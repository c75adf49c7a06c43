"""Prompt-prefix reuse: an exact saving for prompt-wrapped texts.

The prompt's leading tokens (``The representative word for sentence``) are the same for every text,
and the lower decoder layers are causal: at those positions their states never depend on the text.
So the prefix runs through the lower layers once per model (per device and dtype), its keys and
values are kept, and each batch runs only the rest of every sequence (text + prompt tail) through
the lower layers, attending to the cached prefix. The full sequence (cached prefix states + the
rest) then goes through the bidirectional top layers as before. Positions and padding (either side)
are those of the full path, so the vectors equal it up to float rounding (tests/test_encoder.py).

Rows whose token ids do not start with the prefix (a tokenizer that merges across the boundary),
flash attention (it takes 2-D masks only) and sequences longer than a sliding window use the full
path. Lower and upper layers are run through two shallow views of the base model that share its
modules, parameters and hooks, so the model itself is never changed.
"""
from __future__ import annotations

import copy
import inspect
from typing import Any

import torch
from torch import nn

from bellm_search.encoder.bidirectional import FLASH_IMPLEMENTATIONS, decoder_layers, layer_owner


def common_prefix(a: list[int], b: list[int]) -> list[int]:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def layer_view(base: nn.Module, start: int, stop: int | None, final_norm: bool) -> nn.Module:
    """A shallow copy of a base ``*Model`` that runs only layers[start:stop] (shared modules and hooks)."""
    view = copy.copy(base)
    view._modules = dict(base._modules)  # its own module table: the base keeps all its layers
    view.layers = nn.ModuleList(list(base.layers)[start:stop])
    if not final_norm:
        view.norm = nn.Identity()
    return view


def _cache_keyword(base: nn.Module) -> str:
    """transformers 5.24+ calls the cache argument ``cache``; earlier versions ``past_key_values``."""
    params = inspect.signature(base.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def lower_mask(rest_mask: torch.Tensor, prefix_len: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive (B, 1, Lr, P + Lr) mask: every query sees the whole prefix, and earlier real rest tokens."""
    batch, width = rest_mask.shape
    causal = torch.ones(width, width, dtype=torch.bool, device=rest_mask.device).tril()
    rest = causal[None] & rest_mask[:, None, :].to(torch.bool)
    prefix = torch.ones(batch, width, prefix_len, dtype=torch.bool, device=rest_mask.device)
    allowed = torch.cat([prefix, rest], dim=-1)[:, None]
    zeros = torch.zeros(allowed.shape, dtype=dtype, device=rest_mask.device)
    return zeros.masked_fill(~allowed, torch.finfo(dtype).min)


class PrefixRunner:
    """Runs batches of (prefix + rest) sequences with the prefix's lower-layer work done once."""

    def __init__(self, model: nn.Module, prefix_ids: list[int], bidirectional_layers: int) -> None:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.base = layer_owner(base)
        start = len(decoder_layers(self.base)) - bidirectional_layers
        self.lower = layer_view(self.base, 0, start, final_norm=False)
        self.upper = layer_view(self.base, start, None, final_norm=True)
        self.cache_kw = _cache_keyword(self.base)
        self.prefix_ids = list(prefix_ids)
        self.states: torch.Tensor | None = None  # (P, H) entering the first upper layer
        self.kv: list[tuple[torch.Tensor, torch.Tensor]] = []

    @property
    def length(self) -> int:
        return len(self.prefix_ids)

    def _prepare(self, device: torch.device) -> None:
        from transformers import DynamicCache

        kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

        class Recorder(DynamicCache):
            def update(self, key_states, value_states, layer_idx, *args, **kwargs):
                kv[layer_idx] = (key_states, value_states)
                return super().update(key_states, value_states, layer_idx, *args, **kwargs)

        ids = torch.tensor([self.prefix_ids], device=device)
        out = self.lower(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=torch.arange(self.length,
                         device=device)[None], use_cache=True, **{self.cache_kw: Recorder()})
        self.states = out.last_hidden_state[0]
        self.kv = [kv[i] for i in sorted(kv)]

    def fits(self, rows: list[list[int]]) -> bool:
        """Every row starts with the prefix and has tokens after it; no sliding window is exceeded."""
        p = self.length
        window = getattr(self.base.config, "sliding_window", None)
        if window and max(len(r) for r in rows) > window:
            return False
        return all(len(r) > p and r[:p] == self.prefix_ids for r in rows)

    def forward(self, rest_ids: torch.Tensor, rest_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, Lr) ids and 0/1 mask of the rows after the prefix -> (B, P + Lr, H) states, (B, P + Lr) mask."""
        from transformers import DynamicCache

        if self.states is None:
            self._prepare(rest_ids.device)
        batch, p = rest_ids.shape[0], self.length
        cache = DynamicCache()
        for layer, (k, v) in enumerate(self.kv):
            cache.update(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1), layer)
        rest_pos = p + (rest_mask.cumsum(-1) - 1).clamp(min=0)
        dtype = self.states.dtype
        out = self.lower(input_ids=rest_ids, attention_mask=lower_mask(rest_mask, p, dtype), position_ids=rest_pos,
                         use_cache=True, **{self.cache_kw: cache}).last_hidden_state
        hidden = torch.cat([self.states.expand(batch, -1, -1).to(out.dtype), out], dim=1)
        mask = torch.cat([torch.ones(batch, p, dtype=rest_mask.dtype, device=rest_mask.device), rest_mask], dim=1)
        positions = torch.cat([torch.arange(p, device=rest_pos.device).expand(batch, -1), rest_pos], dim=1)
        top = self.upper(inputs_embeds=hidden, attention_mask=mask, position_ids=positions).last_hidden_state
        return top, mask


def prefix_runner(model: nn.Module, config: Any, prefix_ids: list[int]) -> PrefixRunner | None:
    """A runner when prefix reuse applies to this model and prompt, else None (the full path)."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if len(prefix_ids) < 1 or impl in FLASH_IMPLEMENTATIONS:
        return None
    try:
        return PrefixRunner(model, prefix_ids, config.bidirectional_layers)
    except (TypeError, AttributeError, ValueError):  # no .layers / .norm: not a decoder we know
        return None
