"""The AnglE objective (Li & Li 2024) as pure functions on embedding tensors.

Three terms, each a scalar:

- ``contrastive_loss``: in-batch negatives. Row i of the anchors must pick its own positive among
  every positive in the batch plus every hard negative (an extra block of columns), at
  ``scale`` x cosine (scale 20 = temperature 0.05). A ``valid`` mask drops columns that must not
  count as negatives (padding negatives, the positives of rows that share the anchor).
- ``cosent_loss``: CoSENT ranking of cosine similarities, log(1 + sum exp(scale (s_j - s_i)))
  over all pairs (i, j) whose gold score says i is more similar than j.
- ``angle_loss``: the same ranking on AnglE's angle similarity: the embeddings are split into
  real and imaginary halves and compared by complex division, which keeps a gradient where the
  cosine saturates.

``angle_loss`` and ``cosent_loss`` take scored pairs (u_m, v_m, y_m); triples become pairs with
``triple_pairs`` ((anchor, positive) = 1, (anchor, negative) = 0). ``angle_objective`` adds the
weighted terms; the defaults (1.0, 0.02, 0.0) are the AnglE library's (ibn_w, angle_w, cosine_w).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

SCALE = 20.0


@dataclass(frozen=True)
class LossWeights:
    contrastive: float = 1.0
    angle: float = 0.02
    cosent: float = 0.0
    scale: float = SCALE


def cosine_matrix(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x (N, d), y (M, d) -> (N, M) cosine similarities."""
    return F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T


def contrastive_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    scale: float = SCALE,
) -> torch.Tensor:
    """InfoNCE over columns [positives (B) | negatives (B)]; the target of row i is column i.

    anchor, positive, negative: (B, d). valid: (B, C) bool, False = column ignored for that row
    (C = B, or 2B with negatives); the diagonal must stay valid.
    """
    cols = positive if negative is None else torch.cat([positive, negative], dim=0)
    logits = scale * cosine_matrix(anchor, cols).float()  # (B, C)
    if valid is not None:
        if valid.shape != logits.shape:
            raise ValueError(f"valid mask has shape {tuple(valid.shape)}, logits {tuple(logits.shape)}")
        logits = logits.masked_fill(~valid, float("-inf"))
    target = torch.arange(anchor.shape[0], device=anchor.device)
    return F.cross_entropy(logits, target)


def ranking_loss(pred: torch.Tensor, gold: torch.Tensor, scale: float = SCALE) -> torch.Tensor:
    """log(1 + sum over gold_i > gold_j of exp(scale (pred_j - pred_i))); pred, gold: (M,)."""
    pred, gold = pred.float().reshape(-1), gold.float().reshape(-1)
    diff = scale * (pred[None, :] - pred[:, None])  # [i, j] = s_j - s_i
    wrong = gold[:, None] > gold[None, :]  # i should rank above j
    diff = diff.masked_fill(~wrong, float("-inf")).reshape(-1)
    zero = torch.zeros(1, dtype=diff.dtype, device=diff.device)
    return torch.logsumexp(torch.cat([zero, diff]), dim=0)


def cosent_loss(u: torch.Tensor, v: torch.Tensor, gold: torch.Tensor, scale: float = SCALE) -> torch.Tensor:
    """CoSENT: rank pairs (u_m, v_m) by cosine in the order of their gold scores."""
    return ranking_loss(F.cosine_similarity(u.float(), v.float(), dim=-1), gold, scale)


def angle_similarity(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """AnglE's similarity of (M, d) pairs: |sum(Re + Im)| of the normalised complex quotient u / v.

    The real halves a, c and imaginary halves b, d give (a+bi)/(c+di) = ((ac+bd) + (bc-ad)i)/|c+di|^2;
    scaled by |v|/|u| the real part sums to cos(u, v). d must be even.
    """
    a, b = torch.chunk(u.float(), 2, dim=-1)
    c, d = torch.chunk(v.float(), 2, dim=-1)
    norm_u = (a * a + b * b).sum(-1, keepdim=True).sqrt()
    norm_v = (c * c + d * d).sum(-1, keepdim=True).sqrt()
    re = (a * c + b * d) / (norm_u * norm_v)
    im = (b * c - a * d) / (norm_u * norm_v)
    return (re.sum(-1) + im.sum(-1)).abs()


def angle_loss(u: torch.Tensor, v: torch.Tensor, gold: torch.Tensor, scale: float = SCALE) -> torch.Tensor:
    """The AnglE angle term: CoSENT ranking on ``angle_similarity``."""
    return ranking_loss(angle_similarity(u, v), gold, scale)


def triple_pairs(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor | None,
                 has_negative: torch.Tensor | None = None):
    """Scored pairs from triples: (anchor, positive) -> 1, (anchor, negative) -> 0.

    has_negative: (B,) bool; rows without a hard negative give only their positive pair."""
    ones = torch.ones(anchor.shape[0], device=anchor.device)
    if negative is None:
        return anchor, positive, ones
    keep = torch.ones_like(ones, dtype=torch.bool) if has_negative is None else has_negative.bool()
    u = torch.cat([anchor, anchor[keep]])
    v = torch.cat([positive, negative[keep]])
    return u, v, torch.cat([ones, torch.zeros(int(keep.sum()), device=anchor.device)])


def angle_objective(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor | None,
    valid: torch.Tensor | None,
    weights: LossWeights,
    gold: torch.Tensor | None = None,
    has_negative: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted AnglE loss. With ``gold`` (scored pairs: anchor=text1, positive=text2) the
    contrastive term is skipped; otherwise the rows are triples (negative optional)."""
    if gold is None:
        u, v, y = triple_pairs(anchor, positive, negative, has_negative)
    else:
        u, v, y = anchor, positive, gold
    terms: dict[str, torch.Tensor] = {}
    if weights.contrastive and gold is None:
        terms["contrastive"] = weights.contrastive * contrastive_loss(anchor, positive, negative, valid, weights.scale)
    if weights.angle:
        terms["angle"] = weights.angle * angle_loss(u, v, y, weights.scale)
    if weights.cosent:
        terms["cosent"] = weights.cosent * cosent_loss(u, v, y, weights.scale)
    if not terms:
        raise ValueError("all loss weights are zero for this kind of data")
    total = sum(terms.values())
    return total, {k: float(t.detach()) for k, t in terms.items()}
