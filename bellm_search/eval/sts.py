"""STS evaluation: Spearman x 100 of the encoder's cosine against graded gold scores. The CLI's
`eval sts` uses it, and training scores its dev set through it (the CLI passes it in as a callback,
so training never imports evaluation)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bellm_search.eval.cosines import pair_cosines
from bellm_search.eval.metrics import spearman


def sts_score(pairs: Sequence[Any], encoder: Any) -> float:
    """Spearman x 100 of cosine(text1, text2) vs each pair's ``score`` (``StsPair``)."""
    if len(pairs) < 2:
        raise ValueError(f"STS needs at least 2 scored pairs, got {len(pairs)}")
    return 100.0 * spearman(pair_cosines(pairs, encoder), [p.score for p in pairs])
