"""The work behind the routes: validation beyond the schema, micro-batched encoding, locked reads,
serialised writes. The routes (``app.py``) and the review page (``review.py``) both call a ``Service``.

    reads:  texts ─► MicroBatcher (one encoder thread) ─► search under the shared lock (thread pool)
    writes: texts ─► MicroBatcher ─► ingest/delete with the vectors, one writer thread, exclusive lock

The server is the single writer of its collection: writes are serialised on one thread and hold the
exclusive side of a read/write lock (the FAISS index is changed in place), reads run concurrently
on the shared side. A write's response comes after its LMDB commit, so an acknowledged document is
durable and the next query sees it.
"""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any, Callable, Optional

from bellm_search.serve.settings import ServerSettings

log = logging.getLogger(__name__)


def where_strings(where: Optional[dict[str, Any]]) -> Optional[dict[str, str]]:
    """JSON filter values -> the text form the collection compares (numbers/booleans as JSON)."""
    if not where:
        return None
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in where.items()}


def http_error(status: int, message: str, headers: Optional[dict[str, str]] = None) -> Exception:
    from starlette.exceptions import HTTPException

    return HTTPException(status, message, headers=headers)


class Service:
    """Micro-batched encoding, locked reads and serialised writes over one open, writable collection."""

    def __init__(self, coll: Any, settings: ServerSettings) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from bellm_search._sync import ReadWriteLock
        from bellm_search.serve.batcher import MicroBatcher, estimate_tokens

        self.coll = coll
        self.settings = settings
        encoder = coll.encoder
        max_length = getattr(getattr(encoder, "config", None), "max_length", None)
        self.cost = lambda text: estimate_tokens(text, max_length)
        self.batcher = MicroBatcher(lambda texts: encoder.encode(texts, show_progress_bar=False),
                                    max_batch=settings.max_batch, max_batch_tokens=settings.max_batch_tokens,
                                    max_wait_ms=settings.max_wait_ms, max_queue=settings.max_queue,
                                    enabled=settings.batching, cost=self.cost)
        self.lock = ReadWriteLock()
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="bellm-writer")
        self.calibration = near_duplicate_calibration(coll)
        if self.calibration.decision is None:
            log.warning("/near-duplicates needs a threshold in every request: %s", self.calibration.reason)
        self.internal_errors = 0

    def close(self) -> None:
        self.batcher.close()
        self.writer.shutdown(wait=True)

    # ------------------------------------------------------------------ plumbing
    async def within(self, awaitable: Any) -> Any:
        """The request's work within --timeout seconds, else 503; a request cut off here is dropped
        from the encoder queue (its texts not yet encoded never are)."""
        try:
            return await asyncio.wait_for(awaitable, self.settings.timeout_s)
        except asyncio.TimeoutError:
            raise http_error(503, f"request not served within {self.settings.timeout_s:g}s (server busy); retry later",
                             {"Retry-After": "1"}) from None

    async def read(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        from starlette.concurrency import run_in_threadpool

        def locked() -> Any:
            with self.lock.read():
                return fn(*args, **kwargs)

        return await run_in_threadpool(locked)

    async def write(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """On the one writer thread, exclusive; not cut off by the time limit once started."""
        def locked() -> Any:
            with self.lock.write():
                return fn(*args, **kwargs)

        return await asyncio.get_running_loop().run_in_executor(self.writer, locked)

    def check_texts(self, texts: list[str]) -> None:
        """413 for too many, too long or too much work (estimated tokens); 422 for lone surrogates."""
        from bellm_search.corpus import utf8_encodable

        s = self.settings
        if len(texts) > s.max_texts:
            raise http_error(413, f"{len(texts)} texts in one request; the limit is {s.max_texts} (--max-texts)")
        for n, text in enumerate(texts):
            if len(text) > s.max_text_chars:
                raise http_error(413, f"text {n} has {len(text)} characters; the limit is {s.max_text_chars} (--max-text-chars)")
        if not utf8_encodable(texts):
            raise http_error(422, "a text holds a lone UTF-16 surrogate (\\ud800-\\udfff): not valid Unicode text")
        tokens = sum(self.cost(t) for t in texts)
        if tokens > s.max_request_tokens:
            raise http_error(413, f"these {len(texts)} texts need about {tokens} tokens of encoding; the limit per "
                                  f"request is {s.max_request_tokens} (--max-request-tokens): send fewer or shorter "
                                  "texts per request")

    def check_k(self, k: int) -> None:
        if k > self.settings.max_k:
            raise http_error(422, f"k={k} is over the limit of {self.settings.max_k} (--max-k)")

    def check_documents(self, records: list[dict[str, Any]]) -> None:
        from bellm_search.corpus import MAX_JSON_DEPTH, document_problem, json_depth, utf8_encodable

        self.check_texts([r["text"] for r in records])
        for n, r in enumerate(records):
            problem = document_problem(str(r["id"]), r["text"])  # the rule of `ingest`, one home
            if problem:
                raise http_error(422, f"document {n} (id {str(r['id'])[:80]!r}): {problem}")
            if json_depth(r) > MAX_JSON_DEPTH:  # stored, it would break every query returning it
                raise http_error(422, f"document {n}: nested deeper than {MAX_JSON_DEPTH} levels")
        if not utf8_encodable(records):
            raise http_error(422, "a document holds a lone UTF-16 surrogate (\\ud800-\\udfff): not valid Unicode text")

    # ------------------------------------------------------------------ operations
    async def search(self, texts: list[str], k: int, nprobe: Optional[int], where: Optional[dict[str, str]]) -> list:
        """One list of hits (dicts: id, score, text, metadata) per text, best first."""
        self.check_texts(texts)
        self.check_k(k)
        return await self.within(self._search(texts, k, nprobe, where))

    async def _search(self, texts: list[str], k: int, nprobe: Optional[int], where: Optional[dict[str, str]]) -> list:
        xq = await self.batcher.encode(texts)
        hits = await self.read(self.coll.query_vectors, xq, k, nprobe=nprobe, where=where)
        return [[h.to_dict() for h in row] for row in hits]

    def near_decision(self, field: str) -> Any:
        """The calibrated pair-model decision; 422 (give ``field``, a cosine, instead) when no
        calibration fits this collection's encoder."""
        if self.calibration.decision is None:
            reason = self.calibration.reason.replace('"threshold"', f'"{field}"')
            raise http_error(422, f'give "{field}": {reason}')
        return self.calibration.decision

    async def near_duplicates(self, texts: list[str], threshold: Optional[float], k: int,
                              nprobe: Optional[int]) -> dict[str, Any]:
        """Each text's stored near duplicates: hits at cosine >= ``threshold`` (the request's), else
        those the calibrated pair model judges duplicates (each with its probability)."""
        decision = self.near_decision("threshold") if threshold is None else None
        rows = await self.search(texts, k, nprobe, None)
        if decision is None:
            return {"threshold": threshold, "threshold_source": "request",
                    "results": [[h for h in row if h["score"] >= threshold] for row in rows]}
        from starlette.concurrency import run_in_threadpool

        results = await run_in_threadpool(judged_hits, decision, texts, rows)
        return {"threshold": decision.threshold, "threshold_source": "calibration", "results": results}

    async def embed(self, texts: list[str]) -> Any:
        self.check_texts(texts)
        return await self.within(self.batcher.encode(texts))

    async def add(self, records: list[dict[str, Any]], near: Optional[float], near_model: bool = False) -> dict[str, Any]:
        """Encode the records not stored yet (micro-batched), then ingest them with those vectors.
        Near duplicates: ``near`` a cosine threshold, or ``near_model`` the calibrated pair model."""
        decision = self.near_decision("skip_near_duplicates") if near_model else None
        self.check_documents(records)
        for r in records:
            r["id"] = str(r["id"])
        known = await self.read(self.coll.store.lookup_keys, [r["id"] for r in records])
        fresh = [r for r, int_id in zip(records, known) if int_id is None]  # a known id stays known (kept on delete)
        vecs = await self.within(self.batcher.encode([r["text"] for r in fresh])) if fresh else None
        stats = await self.write(self._ingest, fresh, vecs, near, decision)  # once started, it finishes and answers
        stats["skipped_known"] += len(records) - len(fresh)
        return stats

    def _ingest(self, fresh: list[dict[str, Any]], vecs: Any, near: Optional[float], decision: Any) -> dict[str, Any]:
        """``near``: a cosine threshold; ``decision``: the pair model (for ``Collection.ingest``); or neither."""
        out = {"added": 0, "skipped_known": 0, "exact_duplicates": 0, "near_duplicates": 0}
        if fresh:
            near_model = (lambda _coll: decision) if decision is not None else None
            stats = self.coll.ingest(fresh, vectors=vecs, skip_near_duplicates=near, near_model=near_model).to_dict()
            out = {k: stats[k] for k in out}
        out["documents"] = self.coll.store.count()
        return out

    async def delete(self, doc_id: str) -> bool:
        deleted, _ = await self.write(self.coll.delete, [doc_id])
        return deleted == 1

    async def info(self) -> dict[str, Any]:
        data = await self.read(self.coll.info)
        data["server"] = {**self.settings.public(), "encoder_calls": self.batcher.stats.to_dict(),
                          "internal_errors": self.internal_errors,
                          "near_duplicates_calibrated": self.calibration.decision is not None}
        return data


def judged_hits(decision: Any, texts: list[str], rows: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
    """Per text, its hits the pair model judges duplicates: at cosine >= the decision's candidate
    cosine, with the probability of (text, hit text) at or above its threshold; each hit gets its
    ``probability``; most probable first."""
    import numpy as np

    pairs = [(q, h) for q, row in zip(texts, rows) for h in row if h["score"] >= decision.candidate_cosine]
    if pairs:
        _, prob = decision.text_probabilities(np.array([h["score"] for _, h in pairs]), [q for q, _ in pairs],
                                              [h["text"] for _, h in pairs])
        for (_, h), p in zip(pairs, prob.tolist()):
            h["probability"] = p
    kept = [[h for h in row if h.get("probability", -1.0) >= decision.threshold] for row in rows]
    return [sorted(row, key=lambda h: -h["probability"]) for row in kept]


@dataclass
class NearCalibration:
    """The pair-model decision /near-duplicates (and /documents with "near_duplicates") applies when
    a request gives no cosine threshold, and its probability threshold; None (with the reason) when
    no calibration was made for this collection's encoder."""

    decision: Any  # dedup.calibration.Decision, or None
    reason: str

    @property
    def threshold(self) -> Optional[float]:
        """The decision's probability threshold (None: no calibration fits)."""
        return None if self.decision is None else self.decision.threshold


def near_duplicate_calibration(coll: Any) -> NearCalibration:
    """The collection's own calibration, or the shipped one (bellm_search/calibration.json), only
    when it was fitted for this collection's encoder (see ``dedup.calibration.find_calibration``)."""
    from bellm_search.dedup.calibration import decision_for
    from bellm_search.errors import ConfigError

    try:
        decision = decision_for(coll, strict=True)
    except ConfigError as exc:  # no calibration for this encoder (or an unreadable one): no default
        return NearCalibration(None, str(exc).replace("--threshold", '"threshold"'))
    return NearCalibration(decision, f"pair model of the {decision.source} calibration")
