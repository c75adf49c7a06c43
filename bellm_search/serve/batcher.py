"""Micro-batching with fair shares: concurrent encode requests gathered into encoder calls on one thread.

    request ─► pending (texts + estimated tokens) ─► worker thread: the least-served requests first,
               up to max_batch texts / max_batch_tokens tokens per call ─► encode(call) ─► rows back per request

Gathering. The worker waits only while fewer texts are pending than it expects, i.e. the texts of
its previous call plus those that queued up during it, and at most ``max_wait_ms`` or a quarter of
its previous call's time, whichever is longer (``WAIT_FRACTION``). Closed-loop clients (each sends
its next request when the previous answer arrives) then land in one call instead of splitting into
alternating part-size waves: on a CPU a call of 16 short texts takes ~1 s while 16 clients need tens
of milliseconds to read their answers and send again, far more than a fixed 5 ms window, and a call
started with 3 of them makes the other 13 wait for all of it. Waiting costs at most a quarter of a
call, and only once when the load drops (the expectation is re-measured at every call). A lone
request on an idle server is encoded at once, without waiting for company that will not come.

Fair shares. A call holds at most ``max_batch`` texts and ``max_batch_tokens`` estimated tokens, so
a large request is encoded in several calls. Each call serves the requests that have had the least
so far first, and a call that holds a request never served before is not topped up with the rest of
one already running: a one-word query that arrives while 256 long documents are being encoded waits
for the call in progress only, then gets a call of its own. A request whose caller stopped waiting
(its timeout cancelled the await) is dropped before its next part: the encoder does not go on
with work nobody will read.

The encoder runs on ONE worker thread only: a torch model is not safe to call from several threads
at once, and on one device a single big batch beats many small calls anyway. Callers await
``MicroBatcher.encode(texts)`` from an asyncio event loop; results come back through the loop with
``call_soon_threadsafe``. An exception in the encoder fails the requests in that call only; the
worker goes on with the next one.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

EncodeFn = Callable[[list[str]], np.ndarray]
PROMPT_TOKENS = 12  # the BeLLM prompt around each text, in tokens (an estimate)
WAIT_FRACTION = 0.25  # the wait for expected requests may last this share of the previous call


class Overloaded(RuntimeError):
    """More texts are waiting than ``max_queue``: the caller should retry later (HTTP 503)."""


class BatcherClosed(RuntimeError):
    """The batcher was closed before the request was encoded."""


def estimate_tokens(text: str, max_length: int | None = None) -> int:
    """The tokens a text will cost the encoder, guessed before tokenising: one per 4 bytes of UTF-8
    (English BPE runs ~4.2 characters a token; a CJK character, 3 bytes, counts 3/4) plus the
    prompt, capped at ``max_length`` (the encoder truncates longer texts)."""
    n = -(-len(text.encode("utf-8", "surrogatepass")) // 4) + PROMPT_TOKENS
    return min(n, max_length) if max_length else n


@dataclass
class BatcherStats:
    calls: int = 0          # encoder calls
    requests: int = 0       # requests answered with rows
    texts: int = 0          # texts encoded
    largest: int = 0        # most texts in one call
    failed_calls: int = 0
    split_requests: int = 0  # requests encoded over several calls
    dropped_texts: int = 0  # texts of requests abandoned by their caller, never encoded
    encode_s: float = 0.0   # time inside the encoder
    wait_s: float = 0.0     # time spent waiting for more requests to join a call

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["mean_texts_per_call"] = round(self.texts / self.calls, 2) if self.calls else 0.0
        out["encode_s"], out["wait_s"] = round(self.encode_s, 3), round(self.wait_s, 3)
        return out


@dataclass(eq=False)
class _Request:
    texts: list[str]
    costs: list[int]          # estimated tokens per text
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    seq: int                  # arrival order
    taken: int = 0            # texts handed to encoder calls so far
    served: int = 0           # their estimated tokens: the fair-share key
    parts: list[np.ndarray] = field(default_factory=list)
    failed: bool = False

    def abandoned(self) -> bool:
        return self.failed or self.future.done()


Part = tuple[_Request, int, int]  # (request, first text, end)


class MicroBatcher:
    """``await batcher.encode(texts) -> float32 (len(texts), dim)``, encoded in shared, bounded calls.

    ``enabled=False`` gives calls that each hold one request's texts only (still split by the
    budgets, still on the one worker thread): the baseline that micro-batching is measured against.
    """

    def __init__(self, encode: EncodeFn, *, max_batch: int = 64, max_batch_tokens: int = 1024,
                 max_wait_ms: float = 5.0, max_queue: int = 4096, enabled: bool = True,
                 cost: Callable[[str], int] = estimate_tokens) -> None:
        for name, value in (("max_batch", max_batch), ("max_batch_tokens", max_batch_tokens), ("max_queue", max_queue)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self._encode, self._cost = encode, cost
        self.max_batch, self.max_batch_tokens = max_batch, max_batch_tokens
        self.max_wait = max_wait_ms / 1000.0 if enabled else 0.0
        self.max_queue = max_queue
        self.enabled = enabled
        self.stats = BatcherStats()
        self._cond = threading.Condition()
        self._pending: list[_Request] = []
        self._queued = 0   # texts not yet handed to a call (for the max_queue bound)
        self._expect = 0   # texts the next call is expected to gather
        self._last_call_s = 0.0
        self._seq = 0
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="bellm-encoder", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ caller side (event loop)
    async def encode(self, texts: Sequence[str]) -> np.ndarray:
        """The rows for ``texts``, in order, encoded together with other requests waiting now."""
        texts = list(texts)
        if not texts:
            raise ValueError("no texts to encode")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        costs = [self._cost(t) for t in texts]
        with self._cond:
            if self._closed:
                raise BatcherClosed("the encoder is shut down")
            if self._queued + len(texts) > self.max_queue:
                raise Overloaded(f"{self._queued} texts are already waiting for the encoder (limit {self.max_queue})")
            self._seq += 1
            self._pending.append(_Request(texts, costs, future, loop, self._seq))
            self._queued += len(texts)
            self._cond.notify()
        return await future  # cancelled (timeout, client gone): the worker drops what is left

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker after the call in progress; requests still pending fail with BatcherClosed."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    # ------------------------------------------------------------------ worker thread
    def _work(self) -> None:
        while True:
            call = self._gather()
            if call is None:
                self._fail_pending()
                return
            self._run(call)

    def _gather(self) -> list[Part] | None:
        """Block for a request, wait (until max_wait) only while fewer texts than expected are
        pending, then pick the call's parts; None once closed."""
        with self._cond:
            while True:
                self._drop_abandoned()
                if self._closed:
                    return None
                if self._pending:
                    self._wait_for_company()
                    call = self._pick()
                    if call:
                        return call
                else:
                    self._cond.wait()

    def _wait_for_company(self) -> None:
        if not self.enabled:
            return
        start = time.monotonic()
        deadline = start + max(self.max_wait, WAIT_FRACTION * self._last_call_s)
        while not self._closed and self._queued < min(self._expect, self.max_batch):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._cond.wait(remaining)
            self._drop_abandoned()
        self.stats.wait_s += time.monotonic() - start

    def _pick(self) -> list[Part]:
        """The next call: least-served requests first, within max_batch texts and max_batch_tokens
        (a single text over the token budget still goes, alone). A call holding a request never
        served before is not topped up with the rest of a running one."""
        texts_left, tokens_left = self.max_batch, self.max_batch_tokens
        call: list[Part] = []
        fresh = False  # the call holds a request never served before
        for req in sorted(self._pending, key=lambda r: (r.served, r.seq)):
            if call and (not self.enabled or (fresh and req.served)):
                break
            fresh = fresh or not req.served
            start = stop = req.taken
            while stop < len(req.texts) and texts_left and (req.costs[stop] <= tokens_left or not call and stop == start):
                tokens_left -= req.costs[stop]
                texts_left -= 1
                stop += 1
            if stop == start:
                break
            req.taken, req.served = stop, req.served + sum(req.costs[start:stop])
            call.append((req, start, stop))
            if stop < len(req.texts):
                break  # the call is full
        self._pending = [r for r in self._pending if r.taken < len(r.texts)]
        self._queued -= sum(stop - start for _, start, stop in call)
        return call

    def _drop_abandoned(self) -> None:
        """Requests nobody waits for any more (timed out, cancelled, failed) leave the queue."""
        if not any(r.abandoned() for r in self._pending):
            return
        for r in self._pending:
            if r.abandoned():
                left = len(r.texts) - r.taken
                self._queued -= left
                if not r.failed:
                    self.stats.dropped_texts += left
        self._pending = [r for r in self._pending if not r.abandoned()]

    def _run(self, call: list[Part]) -> None:
        texts = [t for req, start, stop in call for t in req.texts[start:stop]]
        started = time.monotonic()
        try:
            vecs = self._encode(texts)
        except BaseException as exc:  # handed to the waiting requests, not raised here
            self.stats.failed_calls += 1
            log.warning("encoder call of %d texts failed: %r", len(texts), exc)
            for req, _, _ in call:
                req.failed = True
                _settle(req, exc=exc)
            return
        finally:
            self._last_call_s = time.monotonic() - started
            self.stats.encode_s += self._last_call_s
            with self._cond:  # those served now will likely be back, plus those who queued meanwhile
                self._expect = min(len(texts) + self._queued, self.max_batch) if self.enabled else 0
        self._deliver(call, vecs)

    def _deliver(self, call: list[Part], vecs: np.ndarray) -> None:
        s = self.stats
        s.calls, s.texts, s.largest = s.calls + 1, s.texts + len(vecs), max(s.largest, len(vecs))
        offset = 0
        for req, start, stop in call:
            req.parts.append(vecs[offset:offset + stop - start])
            offset += stop - start
            if stop == len(req.texts):
                s.requests += 1
                s.split_requests += len(req.parts) > 1
                _settle(req, rows=req.parts[0] if len(req.parts) == 1 else np.concatenate(req.parts))

    def _fail_pending(self) -> None:
        with self._cond:
            pending, self._pending, self._queued = self._pending, [], 0
        for req in pending:
            _settle(req, exc=BatcherClosed("the encoder was shut down before this request ran"))


def _settle(req: _Request, rows: np.ndarray | None = None, exc: BaseException | None = None) -> None:
    """Resolve the request's future on its own event loop (a closed loop means nobody waits)."""

    def resolve() -> None:
        if req.future.done():
            return
        if exc is not None:
            req.future.set_exception(exc)
        else:
            req.future.set_result(rows)

    try:
        req.loop.call_soon_threadsafe(resolve)
    except RuntimeError:
        pass
