"""Micro-batching: concurrent encode requests gathered into one encoder call on one thread.

    request ─► queue ─► worker thread: first item, then more until max_batch texts or max_wait ─► encode(all)
                                                                                  └─► each future gets its rows

The wait is adaptive and bounded: the worker waits (at most ``max_wait_ms``) only while fewer
texts are in hand than it expects, i.e. the texts of its previous call plus those that queued
up during it. Closed-loop clients (each sends its next request when the previous answer
arrives) then land in one call instead of splitting into two alternating half-size waves, and
a lone request on an idle server is encoded at once, without waiting for company that will
not come. The expectation is re-measured at every call, so it follows the load down as well.

The encoder runs on ONE worker thread only: a torch model is not safe to call from several
threads at once, and on one device a single big batch beats many small calls anyway. Callers
await ``MicroBatcher.encode(texts)`` from an asyncio event loop; results come back through the
loop with ``call_soon_threadsafe``. A request larger than ``max_batch`` is encoded alone (the
encoder splits it by its own token budget). An exception in the encoder fails the requests of
that batch only; the worker goes on with the next one.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

EncodeFn = Callable[[list[str]], np.ndarray]
_STOP = object()


class Overloaded(RuntimeError):
    """More texts are waiting than ``max_queue``: the caller should retry later (HTTP 503)."""


class BatcherClosed(RuntimeError):
    """The batcher was closed before the request was encoded."""


@dataclass
class BatcherStats:
    calls: int = 0        # encoder calls
    requests: int = 0     # requests served by those calls
    texts: int = 0        # texts encoded
    largest: int = 0      # most texts in one call
    failed_calls: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["mean_texts_per_call"] = round(self.texts / self.calls, 2) if self.calls else 0.0
        return out


@dataclass
class _Item:
    texts: list[str]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


class MicroBatcher:
    """``await batcher.encode(texts) -> float32 (len(texts), dim)``; one encoder call per gathered batch.

    ``enabled=False`` gives one encoder call per request (still on the one worker thread): the
    baseline that micro-batching is measured against.
    """

    def __init__(self, encode: EncodeFn, *, max_batch: int = 64, max_wait_ms: float = 5.0,
                 max_queue: int = 4096, enabled: bool = True) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self._encode = encode
        self.max_batch = max_batch if enabled else 1
        self.max_wait = max_wait_ms / 1000.0 if enabled else 0.0
        self.max_queue = max_queue
        self.enabled = enabled
        self.stats = BatcherStats()
        self._queue: queue.Queue = queue.Queue()
        self._carry: _Item | None = None  # taken from the queue but left for the next call
        self._queued = 0                  # texts waiting (for the max_queue bound)
        self._expect = 0                  # texts the next call is expected to gather
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="bellm-encoder", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ caller side (event loop)
    async def encode(self, texts: Sequence[str]) -> np.ndarray:
        """The rows for ``texts``, in order, encoded together with other requests waiting now."""
        texts = list(texts)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            if self._closed:
                raise BatcherClosed("the encoder is shut down")
            if self._queued + len(texts) > self.max_queue:
                raise Overloaded(f"{self._queued} texts are already waiting for the encoder (limit {self.max_queue})")
            self._queued += len(texts)
        self._queue.put(_Item(texts, future, loop))
        return await future

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker after the call in progress; requests still queued fail with BatcherClosed."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout)

    # ------------------------------------------------------------------ worker thread
    def _work(self) -> None:
        while True:
            batch = self._gather()
            if batch is None:
                self._fail_pending()
                return
            self._run(batch)

    def _gather(self) -> list[_Item] | None:
        """Block for the first request, then take what is queued; wait (until max_wait) only while
        fewer texts than expected are in hand; stop at max_batch texts."""
        first = self._carry if self._carry is not None else self._queue.get()
        self._carry = None
        if first is _STOP:
            return None
        batch, total = [first], len(first.texts)
        deadline = time.monotonic() + self.max_wait
        while total < self.max_batch:
            item = self._next(deadline if total < self._expect else None)
            if item is None:
                break
            if item is _STOP or total + len(item.texts) > self.max_batch:
                self._carry = item
                break
            batch.append(item)
            total += len(item.texts)
        return batch

    def _next(self, deadline: float | None) -> Any:
        """The next queued item: waiting until ``deadline``, or only what is there already (None)."""
        remaining = 0.0 if deadline is None else deadline - time.monotonic()
        try:
            return self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
        except queue.Empty:
            return None

    def _run(self, batch: list[_Item]) -> None:
        with self._lock:
            self._queued -= sum(len(item.texts) for item in batch)
        live = [item for item in batch if not item.future.done()]  # skip requests already cancelled
        if not live:
            return
        texts = [t for item in live for t in item.texts]
        try:
            vecs = self._encode(texts)
        except BaseException as exc:  # handed to the waiting requests, not raised here
            self.stats.failed_calls += 1
            log.warning("encoder call of %d texts failed: %r", len(texts), exc)
            for item in live:
                _settle(item, exc=exc)
            return
        finally:
            with self._lock:  # those served now will likely be back, plus those who queued meanwhile
                self._expect = min(len(texts) + self._queued, self.max_batch) if self.enabled else 0
        self._count(len(live), len(texts))
        start = 0
        for item in live:
            _settle(item, rows=vecs[start:start + len(item.texts)])
            start += len(item.texts)

    def _count(self, requests: int, texts: int) -> None:
        s = self.stats
        s.calls, s.requests, s.texts, s.largest = s.calls + 1, s.requests + requests, s.texts + texts, max(s.largest, texts)

    def _fail_pending(self) -> None:
        items = [self._carry] if self._carry is not None else []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        for item in items:
            if item is not _STOP and item is not None:
                _settle(item, exc=BatcherClosed("the encoder was shut down before this request ran"))


def _settle(item: _Item, rows: np.ndarray | None = None, exc: BaseException | None = None) -> None:
    """Resolve the request's future on its own event loop (a closed loop means nobody waits)."""

    def resolve() -> None:
        if item.future.done():
            return
        if exc is not None:
            item.future.set_exception(exc)
        else:
            item.future.set_result(rows)

    try:
        item.loop.call_soon_threadsafe(resolve)
    except RuntimeError:
        pass
