"""The review page at ``/``: search, dedup clusters, near-threshold labelling, keep / remove export.

    GET  /                       the page (static: no data, no API key needed; see settings.OPEN_PATHS)
    GET  /review/app.js, .css    its script and style
    POST /review/dedup           run a dedup (threshold, k, keep) in a worker thread under the read lock
    GET  /review/files           clusters JSONL files (``dedup --output``) in the collection folder
    POST /review/load            load one of them instead of running
    GET  /review/clusters        a page of the last result's clusters (sort, keep policy)
    GET  /review/export          keep / remove list of the last result (one source id per line)
    GET  /review/pairs           near-threshold pairs to label (``dedup.labels.pairs_to_label``)
    GET/POST /review/labels      label counts / append one answer (by "review-page") to COLL/labels.jsonl
    POST /review/calibrate       ``eval.calibrate.calibrate_collection`` on the writer thread

Search uses the API's own ``POST /query``. Every data route sits behind the server's API-key guard.
No ``from __future__ import annotations``: FastAPI resolves the endpoint annotations.
"""
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

STATIC = Path(__file__).parent / "static"
COSINE_MARGIN = 0.1  # pure cosine: label pairs from this far below the threshold
ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}


@dataclass
class Result:
    """A dedup outcome held for the page: clusters of int ids and the links that made them."""

    origin: str                          # "run: <decision>" or "file: <name>"
    members: list                        # per cluster: np.ndarray of int ids
    edges: list                          # per cluster: list of (i, j, score, row of features | -1)
    live: np.ndarray
    min_score: list
    summary: dict = field(default_factory=dict)
    keeps: dict = field(default_factory=dict)  # keep policy -> list of kept int ids
    names: tuple = ()                    # feature names (columns of X)
    X: Optional[np.ndarray] = None       # features of the duplicate candidate pairs that linked clusters


class Review:
    """The page's state (the last dedup result) and its work; every method runs in a worker thread
    under the service's lock (``service.read`` / ``service.write``)."""

    def __init__(self, coll: Any) -> None:
        self.coll = coll
        self.result: Optional[Result] = None
        self.guard = threading.Lock()

    # ---------------------------------------------------------------- dedup
    def run(self, threshold: Optional[float], k: int, keep: str) -> dict:
        from bellm_search.dedup.calibration import decision_for
        from bellm_search.dedup.job import find_clusters

        decision = decision_for(self.coll, threshold=threshold, strict=False)
        found, live, _ = find_clusters(self.coll, decision, k, keep)
        cand = found.candidates
        pi, pj, ps = found.pairs
        dup_i, dup_j = cand.i[cand.duplicate].tolist(), cand.j[cand.duplicate].tolist()
        rows = {(min(a, b), max(a, b)): r for r, (a, b) in enumerate(zip(dup_i, dup_j))}  # pair -> row of X
        edges = _edges_by_cluster(found.members, pi, pj, ps, rows)
        result = Result("run: " + decision.describe(), found.members, edges, live,
                        [float(x) for x in found.min_score], names=cand.features, X=cand.X[cand.duplicate])
        result.keeps[keep] = [int(x) for x in found.keep]
        result.summary = {"warning": decision.warning, "score": "probability" if decision.model else "cosine"}
        return self._hold(result, keep)

    def files(self) -> list:
        folder = Path(self.coll.path)
        return sorted(p.name for p in folder.glob("*.jsonl") if p.name != "labels.jsonl" and p.is_file())

    def load(self, name: str, keep: str) -> dict:
        from bellm_search.errors import ConfigError

        if name not in self.files():
            raise ConfigError(f"no clusters file {name!r} in the collection folder (known: {', '.join(self.files()) or 'none'})")
        rows = [json.loads(line) for line in (Path(self.coll.path) / name).read_text(encoding="utf-8").splitlines() if line.strip()]
        if rows and "members" not in rows[0]:
            raise ConfigError(f"{name} is not a clusters file (dedup --emit clusters): its lines have no \"members\"")
        members, edges, weakest = [], [], []
        for row in rows:
            ids = [i for i in self.coll.store.lookup_keys([str(m) for m in row["members"]]) if i is not None]
            if len(ids) < 2:  # deleted since the file was written
                continue
            members.append(np.asarray(ids, dtype=np.int64))
            link = row.get("weakest_link") or {}
            ends = self.coll.store.lookup_keys([str(link.get("id1")), str(link.get("id2"))]) if link else [None, None]
            edges.append([(ends[0], ends[1], link["score"], -1)] if None not in ends else [])
            weakest.append(float(row["min_score"]) if row.get("min_score") is not None else float("nan"))
        result = Result("file: " + name, members, edges, self.coll.store.live_ids(), weakest)
        result.summary = {"warning": None, "score": "as written in the file"}
        return self._hold(result, keep)

    def _hold(self, result: Result, keep: str) -> dict:
        self._keeps(result, keep)
        with self.guard:
            self.result = result
        return self.summary(result)

    def summary(self, result: Result) -> dict:
        removed = sum(len(m) - 1 for m in result.members)
        return {"origin": result.origin, "clusters": len(result.members), "documents": int(len(result.live)),
                "removed": removed, **result.summary}

    def _keeps(self, result: Result, keep: str) -> list:
        from bellm_search.dedup.job import _doc_getter
        from bellm_search.dedup.keep import choose_keep, parse_keep

        parse_keep(keep)
        if keep not in result.keeps:
            docs = _doc_getter(self.coll, result.members)
            result.keeps[keep] = [choose_keep(m, keep, docs) for m in result.members]
        return result.keeps[keep]

    def current(self) -> Result:
        from bellm_search.errors import ConfigError

        with self.guard:
            if self.result is None:
                raise ConfigError("no dedup result yet: run a dedup or load a clusters file first")
            return self.result

    def clusters(self, sort: str, keep: str, offset: int, limit: int) -> dict:
        result = self.current()
        kept = self._keeps(result, keep)
        n = len(result.members)
        if sort == "weakest":
            order = sorted(range(n), key=lambda c: (np.nan_to_num(result.min_score[c], nan=2.0), c))
        else:
            order = sorted(range(n), key=lambda c: (-len(result.members[c]), c))
        page = [self._cluster(result, c, kept[c]) for c in order[offset:offset + limit]]
        return {**self.summary(result), "keep": keep, "sort": sort, "offset": offset, "page": page}

    def _cluster(self, result: Result, c: int, kept: int) -> dict:
        ids = [int(i) for i in result.members[c]]
        docs = dict(zip(ids, self.coll.store.get_docs(ids)))
        source = {i: (docs[i] or {}).get("id", str(i)) for i in ids}
        members = [{"id": source[i], "text": (docs[i] or {}).get("text", ""), "metadata": (docs[i] or {}).get("meta", {}),
                    "kept": i == kept} for i in ids]
        members.sort(key=lambda m: not m["kept"])  # the kept one first
        pairs = [{"a": source.get(i, str(i)), "b": source.get(j, str(j)), "score": _num(s),
                  "features": None if row < 0 else {n: _num(v) for n, v in zip(result.names, result.X[row])}}
                 for i, j, s, row in result.edges[c]]
        return {"cluster": c, "size": len(ids), "keep": source[kept], "min_score": _num(result.min_score[c]),
                "members": members, "pairs": pairs}

    def export(self, kind: str, keep: str) -> str:
        result = self.current()
        kept = self._keeps(result, keep)
        removed = {int(i) for m, k in zip(result.members, kept) for i in m if int(i) != k}
        ids = [int(i) for i in result.live if (int(i) in removed) == (kind == "remove")]
        docs = self.coll.store.get_docs(ids) if ids else []
        return "".join(f"{(d or {}).get('id', i)}\n" for d, i in zip(docs, ids))

    # ---------------------------------------------------------------- labels
    def pairs(self, n: int, threshold: Optional[float]) -> list:
        """Unanswered pairs nearest the decision threshold (the page's, else the calibrated one). In
        pure-cosine mode the candidates reach ``COSINE_MARGIN`` below the threshold, so pairs on both
        sides of it are asked."""
        from bellm_search.dedup.calibration import Decision, decision_for
        from bellm_search.dedup.labels import labels_path, pairs_to_label

        decision = decision_for(self.coll, threshold=threshold, strict=False)
        if decision.model is None:
            floor = max(decision.threshold - COSINE_MARGIN, 0.0)
            decision = Decision(None, decision.threshold, decision.source, floor, decision.warning)
        return pairs_to_label(self.coll, labels_path(self.coll), n=n, decision=decision)

    def counts(self) -> dict:
        from bellm_search.dedup.labels import labels_path, read_labels

        labels = read_labels(labels_path(self.coll)).values()
        yes = sum(1 for x in labels if x["duplicate"] is True)
        no = sum(1 for x in labels if x["duplicate"] is False)
        return {"labels": yes + no, "duplicates": yes, "not_duplicates": no, "skipped": len(labels) - yes - no}

    def label(self, body: dict) -> dict:
        from bellm_search.dedup.labels import append_label, labels_path

        extra = {key: float(body[key]) for key in ("probability", "cosine") if isinstance(body.get(key), (int, float))}
        append_label(labels_path(self.coll), str(body["a"]), str(body["b"]), body["duplicate"], **extra, by="review-page")
        return self.counts()

    def calibrate(self) -> dict:
        from bellm_search.dedup.labels import labels_path
        from bellm_search.eval.calibrate import calibrate_collection

        return calibrate_collection(self.coll, labels_path(self.coll))


def _num(x: Any) -> Optional[float]:
    return None if x is None or (isinstance(x, float) and np.isnan(x)) else round(float(x), 4)


def _edges_by_cluster(members: list, pi: np.ndarray, pj: np.ndarray, ps: np.ndarray, rows: dict) -> list:
    """The links inside each cluster with their score and row of features (-1: an ingest-time link)."""
    owner = {int(i): c for c, m in enumerate(members) for i in m}
    edges: list = [[] for _ in members]
    for i, j, s in zip(pi.tolist(), pj.tolist(), ps.tolist()):
        c = owner.get(i)
        if c is not None and owner.get(j) == c:
            edges[c].append((i, j, s, rows.get((min(i, j), max(i, j)), -1)))
    return edges


def add_routes(app: Any, service: Any) -> None:
    """The page and its JSON routes over ``service`` (its API-key guard covers them)."""
    from fastapi import Request
    from fastapi.responses import FileResponse, PlainTextResponse
    from starlette.exceptions import HTTPException

    review = Review(service.coll)

    @app.get("/", include_in_schema=False)
    async def page() -> Any:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    for name, media in ASSETS.items():  # fixed paths: they are the open ones in settings.OPEN_PATHS
        app.add_api_route(f"/review/{name}", _asset(STATIC / name, media), include_in_schema=False)

    @app.post("/review/dedup", summary="Review page: run a dedup (threshold: null = calibrated)")
    async def dedup(request: Request) -> Any:
        body = await _json(request)
        threshold = body.get("threshold")
        return await service.read(review.run, None if threshold in (None, "") else float(threshold),
                                  int(body.get("k") or 10), str(body.get("keep") or "first"))

    @app.get("/review/files", summary="Review page: clusters files in the collection folder")
    async def files() -> Any:
        return {"files": await service.read(review.files)}

    @app.post("/review/load", summary="Review page: load a dedup --output clusters file")
    async def load(request: Request) -> Any:
        body = await _json(request)
        return await service.read(review.load, str(body.get("file", "")), str(body.get("keep") or "first"))

    @app.get("/review/clusters", summary="Review page: a page of clusters")
    async def clusters(sort: str = "size", keep: str = "first", offset: int = 0, limit: int = 20) -> Any:
        return await service.read(review.clusters, sort, keep, max(offset, 0), min(max(limit, 1), 200))

    @app.get("/review/export", summary="Review page: the keep or remove list of the last result")
    async def export(kind: str = "remove", keep: str = "first") -> Any:
        if kind not in ("keep", "remove"):
            raise HTTPException(422, "kind must be keep or remove")
        text = await service.read(review.export, kind, keep)
        return PlainTextResponse(text, headers={"Content-Disposition": f'attachment; filename="{kind}.txt"'})

    _label_routes(app, service, review)


def _label_routes(app: Any, service: Any, review: Review) -> None:
    from fastapi import Request
    from starlette.exceptions import HTTPException

    @app.get("/review/pairs", summary="Review page: near-threshold pairs to label")
    async def pairs(n: int = 10, threshold: Optional[float] = None) -> Any:
        return {"pairs": await service.read(review.pairs, min(max(n, 1), 50), threshold)}

    @app.get("/review/labels", summary="Review page: how many labels the collection has")
    async def counts() -> Any:
        return await service.read(review.counts)

    @app.post("/review/labels", summary="Review page: store one answer in COLL/labels.jsonl")
    async def label(request: Request) -> Any:
        body = await _json(request)
        if not body.get("a") or not body.get("b") or body.get("duplicate") not in (True, False, None):
            raise HTTPException(422, 'give {"a": id, "b": id, "duplicate": true | false | null}')
        return await service.write(review.label, body)

    @app.post("/review/calibrate", summary="Review page: fit the collection's calibration from its labels")
    async def calibrate() -> Any:
        from bellm_search.serve.service import near_duplicate_calibration

        report = await service.write(review.calibrate)
        service.calibration = await service.read(near_duplicate_calibration, service.coll)
        return report


def _asset(path: Path, media: str) -> Any:
    from fastapi.responses import FileResponse

    async def asset() -> Any:
        return FileResponse(path, media_type=media)

    return asset


async def _json(request: Any) -> dict:
    from starlette.exceptions import HTTPException

    try:
        body = await request.json()
    except ValueError:
        raise HTTPException(422, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise HTTPException(422, "the body must be a JSON object")
    return body
