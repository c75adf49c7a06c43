"""The trained top layers on packed tokens: a chunk's texts without their padding.

``model.padded_top_forward`` pads a chunk's texts to its longest text and runs the Hugging Face
layers, so every projection, norm and LoRA product also runs on the padding (a step of 32 NLI
rows fed 6,384 tokens for 1,788 real ones). Here every token-wise operation (norms, the seven
projections with their LoRA terms, rotary, the MLP) runs on the real tokens only, concatenated
(T, H); only attention scatters q/k/v into the padded (B, L) layout, masking padded keys (and
future keys in the causal layers). Pure re-arrangement of the same arithmetic, plus:

- the LoRA products run in the activations' dtype: peft casts every LoRA input to the float32
  adapter weights and autocast casts it straight back (two copies per module per call); here
  autocast casts only the small A/B weights, as it did inside peft. Same values.
- q/k/v and gate/up share their input: one product with their frozen weights (concatenated once)
  and one with their LoRA A matrices; the B matrices form one block-diagonal matrix (exact zeros).
- the LoRA scaling multiplies the rank-r product before B instead of the output after it (exact
  when alpha / r is a power of two, as with the default 32 / 16).
- with last-token pooling the top layer computes queries, attention output and MLP of the last
  token only (keys and values still from every token): nothing else of that layer is pooled.

Only Llama-style layers (llama, mistral, qwen2: q/k/v/o, gate/up/down, two RMSNorms, rotate-half
rotary) with active LoRA dropout off are handled; ``packed_top_forward`` returns None otherwise
and the caller falls back to the padded path. tests/test_training_speed.py checks the values and
gradients against the padded path.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from bellm_search.encoder.bidirectional import decoder_layers, layer_owner
from bellm_search.encoder.pooling import pool
from bellm_search.training.data import plan_chunks

FAMILIES = ("llama", "mistral", "qwen2")
_PREPARED: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def _lora_parts(module: nn.Module) -> tuple[nn.Linear, tuple | None] | None:
    """(frozen base Linear, (A, B, scaling, dropout) or None); None when the module is not handled."""
    if isinstance(module, nn.Linear) and not hasattr(module, "lora_A"):
        return (module, None) if not module.weight.requires_grad else None
    base = getattr(module, "base_layer", None)
    if not isinstance(base, nn.Linear) or base.weight.requires_grad or getattr(module, "merged", False):
        return None
    active = list(getattr(module, "active_adapters", []))
    if getattr(module, "disable_adapters", False) or len(active) != 1 or getattr(module, "lora_variant", {}):
        return None
    name = active[0]
    lin_b = module.lora_B[name]
    if lin_b.bias is not None:
        return None
    return base, (module.lora_A[name].weight, lin_b.weight, float(module.scaling[name]), module.lora_dropout[name])


def _dropping(drop: nn.Module) -> bool:
    """LoRA dropout that would change values now (peft draws it per module: not reproduced here)."""
    return not isinstance(drop, nn.Identity) and drop.training and getattr(drop, "p", 0.0) > 0


class Group:
    """Projections sharing one input: frozen weights concatenated once, LoRA A stacked, B block-diagonal."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        parts = [_lora_parts(m) for m in modules]
        self.ok = all(p is not None for p in parts)
        if not self.ok:
            return
        bases = [p[0] for p in parts]
        self.sizes = [b.out_features for b in bases]
        self.weight = torch.cat([b.weight.detach() for b in bases]) if len(bases) > 1 else bases[0].weight.detach()
        biases = [b.bias for b in bases]
        self.bias = None if biases[0] is None else torch.cat([b.detach() for b in biases])
        self.loras = [p[1] for p in parts]
        scales = {lo[2] for lo in self.loras if lo is not None}
        self.ok = len(scales) <= 1  # one scaling per group (train never makes another)
        self.scale = scales.pop() if scales else 1.0

    def dropping(self) -> bool:
        return any(lo is not None and _dropping(lo[3]) for lo in self.loras)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if not any(self.loras):
            return y
        a = [lo[0] for lo in self.loras if lo is not None]
        u = F.linear(x, a[0] if len(a) == 1 else torch.cat(a)) * self.scale
        blocks = [lo[1] if lo is not None else y.new_zeros((n, 0)) for lo, n in zip(self.loras, self.sizes)]
        return y + F.linear(u, blocks[0] if len(blocks) == 1 else torch.block_diag(*blocks))


def rope(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half rotary of (T, heads, d) with (T, d) cos/sin, as Hugging Face's Llama computes it."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    half = t.shape[-1] // 2
    return (t * cos) + (torch.cat((-t[..., half:], t[..., :half]), dim=-1) * sin)


@dataclass
class Bucket:
    """Texts [r0:r1] (tokens [o0:o1] of the packed tensor), padded together for attention."""

    r0: int
    r1: int
    o0: int
    o1: int
    L: int
    flat: torch.Tensor  # (o1 - o0,) row * L + position, rows counted from r0
    key_mask: torch.Tensor  # (r1 - r0, 1, 1, L) real keys
    causal_mask: torch.Tensor  # (r1 - r0, 1, L, L) real keys at or before the query

    def pad(self, t: torch.Tensor) -> torch.Tensor:
        """Packed (T, ...) -> this bucket's (rows, L, ...), zeros at padded positions."""
        rows, rest = self.r1 - self.r0, tuple(t.shape[1:])
        out = t.new_zeros((rows * self.L,) + rest).index_copy(0, self.flat, t[self.o0:self.o1])
        return out.view((rows, self.L) + rest)


@dataclass
class Geometry:
    """The packed texts (sorted longest first), their attention buckets, rotary tables, last tokens."""

    buckets: list[Bucket]
    last: torch.Tensor  # (B,) packed index of each text's last token
    B: int
    cos: torch.Tensor  # (T, d)
    sin: torch.Tensor

    @classmethod
    def of(cls, lengths: list[int], slack: float, h: torch.Tensor, rotary: nn.Module) -> "Geometry":
        """``lengths`` sorted longest first; a bucket holds texts >= its longest / ``slack`` tokens."""
        dev = h.device
        n = torch.tensor(lengths, device=dev)
        ends = torch.cumsum(n, 0)
        pos = torch.arange(int(ends[-1]), device=dev) - torch.repeat_interleave(ends - n, n)
        buckets, r0 = [], 0
        for chunk in plan_chunks(np.array(lengths), 1 << 62, slack):  # contiguous: lengths are sorted
            r1, L = r0 + len(chunk), lengths[r0]
            o0, o1 = int(ends[r0] - n[r0]), int(ends[r1 - 1])
            rows = torch.repeat_interleave(torch.arange(r1 - r0, device=dev), n[r0:r1])
            key = (torch.arange(L, device=dev)[None, :] < n[r0:r1, None])[:, None, None, :]
            causal = key & torch.ones(L, L, dtype=torch.bool, device=dev).tril()[None, None]
            buckets.append(Bucket(r0, r1, o0, o1, L, rows * L + pos[o0:o1], key, causal))
            r0 = r1
        cos, sin = rotary(h, pos[None])
        return cls(buckets, ends - 1, len(lengths), cos[0], sin[0])


class PackedLayer:
    """One decoder layer over packed tokens (``last_only``: outputs of each text's last token only)."""

    def __init__(self, layer: nn.Module, last_only: bool) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        self.heads, self.kv_heads = attn.config.num_attention_heads, attn.config.num_key_value_heads
        self.hd, self.scaling, self.attn = attn.head_dim, attn.scaling, attn
        self.last_only = last_only
        if last_only:
            self.q, self.kv = Group([attn.q_proj]), Group([attn.k_proj, attn.v_proj])
            groups = [self.q, self.kv]
        else:
            self.qkv = Group([attn.q_proj, attn.k_proj, attn.v_proj])
            groups = [self.qkv]
        self.o, self.gate_up, self.down = Group([attn.o_proj]), Group([mlp.gate_proj, mlp.up_proj]), Group([mlp.down_proj])
        self.norm1, self.norm2, self.act = layer.input_layernorm, layer.post_attention_layernorm, mlp.act_fn
        self.groups = groups + [self.o, self.gate_up, self.down]
        self.ok = all(g.ok for g in self.groups)

    def __call__(self, h: torch.Tensor, g: Geometry) -> torch.Tensor:
        x = self.norm1(h)
        q_dim, kv_dim = self.heads * self.hd, self.kv_heads * self.hd
        if self.last_only:
            k, v = self.kv(x).split([kv_dim, kv_dim], -1)
            q = rope(self.q(x[g.last]).view(g.B, self.heads, self.hd), g.cos[g.last], g.sin[g.last])
            h = h[g.last]
        else:
            q, k, v = self.qkv(x).split([q_dim, kv_dim, kv_dim], -1)
            q = rope(q.view(-1, self.heads, self.hd), g.cos, g.sin)
        k = rope(k.view(-1, self.kv_heads, self.hd), g.cos, g.sin)
        h = h + self.o(self.attend(q, k, v.view(-1, self.kv_heads, self.hd), g))
        return h + self.down(self.mlp_inner(self.norm2(h)))

    def mlp_inner(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.act(gate) * up

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Geometry) -> torch.Tensor:
        outs = [self.attend_bucket(q, k, v, b) for b in g.buckets]
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def attend_bucket(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, b: Bucket) -> torch.Tensor:
        rows, rep, d = b.r1 - b.r0, self.heads // self.kv_heads, self.hd
        kp, vp = (b.pad(t).transpose(1, 2) for t in (k, v))  # (rows, kv_heads, L, d)
        if rep > 1:  # as transformers' repeat_kv
            kp, vp = (t[:, :, None].expand(rows, self.kv_heads, rep, b.L, d).reshape(rows, self.heads, b.L, d)
                      for t in (kp, vp))
        if self.last_only:  # the last token sees every real key of its text, causal or not
            out = F.scaled_dot_product_attention(q[b.r0:b.r1, :, None], kp, vp, attn_mask=b.key_mask, scale=self.scaling)
            return out.reshape(rows, self.heads * d)
        mask = b.causal_mask if getattr(self.attn, "is_causal", True) else b.key_mask
        out = F.scaled_dot_product_attention(b.pad(q).transpose(1, 2), kp, vp, attn_mask=mask, scale=self.scaling)
        return out.transpose(1, 2).reshape(rows * b.L, self.heads * d).index_select(0, b.flat)


def _prepared(base: nn.Module, start: int, last_only: bool) -> list[PackedLayer] | None:
    key = (start, last_only)
    cache = _PREPARED.setdefault(base, {})
    if key not in cache:
        layers = list(decoder_layers(base))[start:]
        packed = [PackedLayer(layer, last_only and i == len(layers) - 1) for i, layer in enumerate(layers)]
        cache[key] = packed if all(p.ok for p in packed) else None
    return cache[key]


def supported(base: nn.Module) -> bool:
    config = base.config
    return (getattr(config, "model_type", None) in FAMILIES and not getattr(config, "attention_dropout", 0.0)
            and all(not hasattr(layer.self_attn, "q_norm") for layer in decoder_layers(base)))


def handled(base: nn.Module, start: int, pooling: str, dtype: torch.dtype) -> list[PackedLayer] | None:
    """The packed layers when this model, adapter and mode are handled now, else None."""
    if not supported(base):
        return None
    layers = _prepared(base, start, pooling == "last")
    if layers is None or any(grp.dropping() for layer in layers for grp in layer.groups):
        return None
    device = next(base.parameters()).device.type
    if not torch.is_autocast_enabled(device) and any(p.requires_grad and p.dtype != dtype for p in base.parameters()):
        return None  # peft would compute LoRA in float32 here
    return layers


def packed_top_forward(base: nn.Module, start: int, states: Sequence[torch.Tensor], pooling: str,
                       slack: float = 2.0) -> torch.Tensor | None:
    """Pooled (B, H) output of layers [start:] + final norm from lower states [(L_i, H)], computed on
    the real tokens only, attention in buckets of texts >= longest / ``slack`` tokens; None when this
    model/adapter is not handled (use the padded path)."""
    lengths = [len(s) for s in states]
    window = getattr(base.config, "sliding_window", None)
    if window and getattr(base.config, "use_sliding_window", True) and max(lengths) > window:
        return None
    layers = handled(base, start, pooling, states[0].dtype)
    if layers is None:
        return None
    owner = layer_owner(base)
    order = sorted(range(len(states)), key=lambda i: -lengths[i])  # stable: longest first
    h = torch.cat([states[i] for i in order]).to(next(base.parameters()).device)
    g = Geometry.of([lengths[i] for i in order], slack, h, owner.rotary_emb)
    for layer in layers:
        h = layer(h, g)
    h = owner.norm(h)
    if pooling != "last":
        h = torch.cat([pool(b.pad(h), (b.key_mask[:, 0, 0]).long(), pooling) for b in g.buckets])
    inverse = torch.empty(len(order), dtype=torch.long, device=h.device)
    inverse[torch.tensor(order, device=h.device)] = torch.arange(len(order), device=h.device)
    return h[inverse]
