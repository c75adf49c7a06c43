"""``dedup --report report.html``: one self-contained HTML page (inline SVG, no script, nothing
loaded from elsewhere) a person can look at before deleting anything: the cluster-size
distribution, the histogram of candidate-pair scores with the decision threshold, and sampled
clusters whose weakest link sits nearest the threshold, with their texts."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from bellm_search._fs import atomic_write

SAMPLED_CLUSTERS = 8
BAR_W, BAR_H = 560, 160


def _svg_bars(counts: list[int], labels: list[str], marker: float | None = None, title: str = "") -> str:
    """A bar chart as inline SVG; ``marker`` (0..1 along the x axis) draws the threshold line."""
    top = max(max(counts, default=0), 1)
    w = BAR_W / max(len(counts), 1)
    bars = []
    for k, (c, lab) in enumerate(zip(counts, labels)):
        h = (BAR_H - 20) * c / top
        bars.append(f'<rect x="{k * w + 1:.1f}" y="{BAR_H - 20 - h:.1f}" width="{max(w - 2, 1):.1f}" '
                    f'height="{h:.1f}" fill="#4a78b0"><title>{html.escape(lab)}: {c}</title></rect>')
    ticks = [f'<text x="{k * w + w / 2:.1f}" y="{BAR_H - 5}" font-size="9" text-anchor="middle">{html.escape(lab)}</text>'
             for k, lab in enumerate(labels) if len(labels) <= 12 or k % max(len(labels) // 10, 1) == 0]
    line = "" if marker is None else (f'<line x1="{marker * BAR_W:.1f}" x2="{marker * BAR_W:.1f}" y1="0" '
                                      f'y2="{BAR_H - 20}" stroke="#c0392b" stroke-width="2" stroke-dasharray="4 3"/>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{BAR_W}" height="{BAR_H}" role="img" '
            f'aria-label="{html.escape(title)}">{"".join(bars)}{"".join(ticks)}{line}</svg>')


def size_histogram(members: list[np.ndarray]) -> tuple[list[int], list[str]]:
    sizes = np.array([len(m) for m in members], dtype=np.int64)
    edges = [2, 3, 4, 5, 6, 11, 21, 51, 101]
    counts, labels = [], []
    for lo, hi in zip(edges, edges[1:] + [None]):
        counts.append(int(((sizes >= lo) & (sizes < hi)).sum() if hi else (sizes >= lo).sum()))
        labels.append(str(lo) if hi == lo + 1 else (f"{lo}-{hi - 1}" if hi else f"{lo}+"))
    return counts, labels


def score_histogram(scores: np.ndarray, lo: float, bins: int = 40) -> tuple[list[int], list[str], np.ndarray]:
    edges = np.linspace(lo, 1.0, bins + 1)
    counts = np.histogram(np.clip(scores, lo, 1.0), edges)[0]
    return counts.tolist(), [f"{e:.2f}" for e in edges[:-1]], edges


def near_threshold(found: Any, threshold: float, n: int = SAMPLED_CLUSTERS) -> list[int]:
    """The clusters whose weakest link is nearest the threshold (ties: larger first)."""
    ps = found.pairs[2]
    gap = [abs(ps[w] - threshold) if w >= 0 else np.inf for w in found.weakest.tolist()]
    order = sorted(range(len(gap)), key=lambda c: (gap[c], -len(found.members[c])))
    return [c for c in order if np.isfinite(gap[c])][:n]


def _cluster_block(coll: Any, found: Any, c: int, source: Any) -> str:
    pi, pj, ps = found.pairs
    w = int(found.weakest[c])
    members = found.members[c][:12]
    docs = coll.store.get_docs(members.tolist())
    rows = "".join(f"<tr><td>{'keep' if int(m) == found.keep[c] else ''}</td><td>{html.escape(source(m))}</td>"
                   f"<td>{html.escape(str((d or {}).get('text', ''))[:300])}</td></tr>" for m, d in zip(members, docs))
    more = len(found.members[c]) - len(members)
    return (f"<h3>cluster {c}: {len(found.members[c])} members, weakest link {html.escape(source(pi[w]))} – "
            f"{html.escape(source(pj[w]))} at {ps[w]:.3f}</h3><table>{rows}</table>"
            + (f"<p>… {more} more</p>" if more > 0 else ""))


def render(coll: Any, found: Any, decision: Any, source: Any) -> str:
    what = "P(duplicate)" if decision.model is not None else "cosine"
    sizes, size_labels = size_histogram(found.members)
    cand = found.candidates
    scores = cand.probability if cand is not None and len(cand.i) else np.zeros(0)
    lo = 0.0 if decision.model is not None else float(min(decision.candidate_cosine, decision.threshold))
    counts, labels, _ = score_histogram(scores, lo)
    marker = (decision.threshold - lo) / max(1.0 - lo, 1e-9)
    blocks = "".join(_cluster_block(coll, found, c, source) for c in near_threshold(found, decision.threshold))
    style = ("body{font:14px sans-serif;max-width:900px;margin:2em auto;color:#222}table{border-collapse:collapse;"
             "width:100%}td{border-top:1px solid #ddd;padding:3px 6px;vertical-align:top}td:first-child{color:#2a7}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>dedup report</title><style>{style}</style>"
            f"</head><body><h1>Dedup report: {html.escape(str(coll.path))}</h1>"
            f"<p>Decision: {html.escape(decision.describe())}. {len(found.members)} clusters; "
            f"{len(scores)} candidate pairs, {int(cand.duplicate.sum()) if cand is not None else 0} judged duplicates.</p>"
            f"<h2>Cluster sizes</h2>{_svg_bars(sizes, size_labels, title='cluster sizes')}"
            f"<h2>Candidate-pair {what} (dashed: the threshold {decision.threshold:.3f})</h2>"
            f"{_svg_bars(counts, labels, marker, title='score histogram')}"
            f"<h2>Clusters nearest the threshold</h2>{blocks or '<p>none</p>'}</body></html>\n")


def write_report(path: Path, coll: Any, found: Any, decision: Any, source: Any) -> None:
    text = render(coll, found, decision, source)
    atomic_write(Path(path), lambda fh: fh.write(text))
