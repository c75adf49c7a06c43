"""Pooling of token states into one vector per sequence. Pure tensor maths."""
from __future__ import annotations

import torch


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token in each row of a (B, L) 0/1 mask; left or right padding."""
    length = mask.shape[1]
    flipped_first = torch.argmax(mask.flip(1).to(torch.int32), dim=1)  # (B,)
    return length - 1 - flipped_first


def last_token_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """hidden (B, L, H), mask (B, L) -> (B, H): the state at each row's last real token."""
    idx = last_token_index(mask)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """hidden (B, L, H), mask (B, L) -> (B, H): mean over real tokens."""
    m = mask.to(hidden.dtype).unsqueeze(-1)  # (B, L, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "last":
        return last_token_pool(hidden, mask)
    if pooling == "mean":
        return mean_pool(hidden, mask)
    raise ValueError(f"unknown pooling {pooling!r}")
