"""Hard negatives mined by a trained model from its own training texts.

For each training row: the training text nearest to the anchor that is neither the anchor nor one
of its positives, and whose cosine stays below ``margin`` x cosine(anchor, positive)
(positive-aware mining keeps likely paraphrases out). Used by the GPU grid
(scripts/device_train.py) and on CPU by scripts/mine_negatives.py.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch


def mine_negatives(run: Any, path: Path, margin: float = 0.95, chunk: int = 2048) -> dict[str, Any]:
    """Hard negatives mined by the trained model: for each row, the training text nearest to the
    anchor that is neither the anchor nor one of its positives, and whose cosine is below
    ``margin`` x cosine(anchor, positive) (positive-aware mining keeps likely paraphrases out).
    Writes every row with its labelled negative, plus a copy with the mined one (rows without a
    negative just get the mined one), as JSONL at ``path``."""
    d = run.data
    run.model.eval()
    with torch.no_grad():
        emb = torch.nn.functional.normalize(run.embed(np.arange(len(d.texts))), dim=-1)
    run.model.train()
    positives: dict[int, list[int]] = {}
    for a, p in zip(d.anchor.tolist(), d.positive.tolist()):
        positives.setdefault(a, []).append(p)
    mined = np.full(len(d), -1)
    for lo in range(0, len(d), chunk):
        rows = np.arange(lo, min(lo + chunk, len(d)))
        a = torch.from_numpy(d.anchor[rows]).to(emb.device)
        sims = emb[a] @ emb.T  # (c, T)
        pos = (emb[a] * emb[torch.from_numpy(d.positive[rows]).to(emb.device)]).sum(-1)
        for i, r in enumerate(rows):
            sims[i, [int(d.anchor[r]), *positives[int(d.anchor[r])]]] = -2.0
        sims[sims >= margin * pos[:, None]] = -2.0
        best, idx = sims.max(dim=1)
        mined[rows] = np.where(best.cpu().numpy() > -2.0, idx.cpu().numpy(), -1)
    return write_mined(d, mined, path)


def write_mined(d: Any, mined: np.ndarray, path: Path) -> dict[str, Any]:
    lines = []
    for r in range(len(d)):
        row = {"anchor": d.texts[d.anchor[r]], "positive": d.texts[d.positive[r]]}
        if d.negative[r] >= 0:
            lines.append({**row, "negative": d.texts[d.negative[r]]})
        if mined[r] >= 0:
            lines.append({**row, "negative": d.texts[mined[r]]})
        elif d.negative[r] < 0:
            lines.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    return {"rows_in": len(d), "rows_out": len(lines), "mined": int((mined >= 0).sum())}
