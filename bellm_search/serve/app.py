"""HTTP API: ``bellm-search serve`` (FastAPI on uvicorn) with micro-batched encoding.

    request ─► CatchAll ─► ApiKey ─► BodyLimit ─► FastAPI route ─► validate (pydantic + limits)
        reads:  texts ─► MicroBatcher (one encoder thread) ─► search under the shared lock (thread pool)
        writes: texts ─► MicroBatcher ─► ingest/delete with the vectors, one writer thread, exclusive lock

The server is the single writer of its collection: it opens it writable, writes are serialised
on one thread and hold the exclusive side of a read/write lock (the FAISS index is changed in
place), reads run concurrently on the shared side. A write's response comes after its LMDB
commit, so an acknowledged document is durable and the next query sees it.

No ``from __future__ import annotations`` here: FastAPI resolves the endpoint annotations, and
FastAPI, uvicorn and the request models are imported lazily (``bellm-search --help`` stays fast).
"""
import asyncio
import functools
import hmac
import ipaddress
import json
import logging
import socket
import threading
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Optional

from bellm_search.errors import BellmError, ConfigError

log = logging.getLogger(__name__)

MIN_KEY_CHARS = 16
OPEN_PATHS = frozenset({"/health"})  # answered without an API key


# ----------------------------------------------------------------------------- settings
@dataclass
class ServerSettings:
    """Everything the server is configured with; ``validate`` refuses unsafe or absurd values."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: Optional[str] = None
    batching: bool = True
    max_batch: int = 64              # texts per encoder call
    max_wait_ms: float = 5.0         # longest wait for more requests, only when more are expected
    max_queue: int = 4096            # texts waiting for the encoder before 503
    max_body_bytes: int = 1_000_000  # request body (413 beyond)
    max_texts: int = 256             # texts or documents per request (413 beyond)
    max_text_chars: int = 20_000     # characters per text (413 beyond)
    max_k: int = 1000                # results per text (422 beyond)
    timeout_s: float = 30.0          # per request, queueing included (503 beyond)
    max_connections: int = 256       # open connections + tasks (uvicorn answers 503 beyond)

    def validate(self) -> None:
        if not is_loopback(self.host) and not self.api_key:
            raise ConfigError(
                f"refusing to listen on {self.host!r} without an API key: anyone who can reach it could read and "
                "change the collection. Set --api-key or BELLM_API_KEY, or keep the default --host 127.0.0.1")
        if self.api_key is not None and len(self.api_key) < MIN_KEY_CHARS:
            raise ConfigError(f"the API key must be at least {MIN_KEY_CHARS} characters; make one with "
                              "python -c \"import secrets; print(secrets.token_urlsafe(32))\"")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port {self.port}: use 1..65535 (0 = any free port)")
        positive = ("max_batch", "max_queue", "max_body_bytes", "max_texts", "max_text_chars", "max_k",
                    "timeout_s", "max_connections")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ConfigError(f"--max-wait-ms must be >= 0, got {self.max_wait_ms}")

    def public(self) -> dict[str, Any]:
        """What /info shows: the settings without the key."""
        out = asdict(self)
        out["api_key"] = self.api_key is not None
        return out


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and 'localhost' only; any other name or address counts as exposed."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def key_matches(headers: dict[str, str], key: str) -> bool:
    """``Authorization: Bearer KEY`` or ``X-API-Key: KEY``, compared in constant time."""
    auth = headers.get("authorization", "")
    given = auth[7:].strip() if auth[:7].lower() == "bearer " else headers.get("x-api-key", "")
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), key.encode("utf-8"))


def where_strings(where: Optional[dict[str, Any]]) -> Optional[dict[str, str]]:
    """JSON filter values -> the text form the collection compares (numbers/booleans as JSON)."""
    if not where:
        return None
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in where.items()}


def utf8_ok(value: Any) -> bool:
    """False for strings holding lone surrogates (valid JSON escapes, not storable text)."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


class ReadWriteLock:
    """Many readers or one writer; a waiting writer holds back new readers (no starvation)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writing and not self._waiting)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            self._cond.wait_for(lambda: not self._writing and not self._readers)
            self._waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


# ----------------------------------------------------------------------------- request/response models
@functools.lru_cache(maxsize=1)
def api_models() -> Any:
    """The pydantic models of the API (built on first use: pydantic stays out of the CLI's startup)."""
    from types import SimpleNamespace
    from typing import Union

    from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, model_validator

    Scalar = Union[StrictStr, StrictInt, StrictFloat, StrictBool]

    class Texts(BaseModel):
        model_config = ConfigDict(extra="forbid")
        text: Optional[StrictStr] = Field(None, description="One text (or use `texts`).")
        texts: Optional[list[StrictStr]] = Field(None, description="Several texts: one result per text, in order.")

        @model_validator(mode="after")
        def _one_of(self) -> "Texts":
            if (self.text is None) == (self.texts is None):
                raise ValueError("give 'text' or 'texts' (one of them, not both)")
            if self.texts is not None and not self.texts:
                raise ValueError("'texts' is empty")
            return self

        def given(self) -> list[str]:
            return [self.text] if self.text is not None else list(self.texts or [])

    class QueryIn(Texts):
        k: int = Field(10, ge=1, description="Results per text.")
        where: Optional[dict[str, Scalar]] = Field(None, description="Metadata filter: field -> value (all must match).")
        nprobe: Optional[int] = Field(None, ge=1, description="IVF lists to visit (default from the collection).")

    class EmbedIn(Texts):
        pass

    class NearDuplicatesIn(Texts):
        threshold: Optional[float] = Field(None, ge=-1.0, le=1.0, description="Cosine threshold (default: the calibrated cosine-only threshold).")
        k: int = Field(10, ge=1, description="Neighbours examined per text.")
        nprobe: Optional[int] = Field(None, ge=1)

    class DocumentIn(BaseModel):
        model_config = ConfigDict(extra="allow", json_schema_extra={"example": {"id": "p1", "text": "hello", "lang": "en"}})
        id: Union[Annotated[StrictStr, Field(min_length=1)], StrictInt] = Field(description="Source id (unique).")
        text: StrictStr

    class DocumentsIn(BaseModel):
        model_config = ConfigDict(extra="forbid")
        documents: list[DocumentIn] = Field(description="Records: id, text, any other fields are metadata.")
        skip_near_duplicates: Optional[float] = Field(
            None, ge=-1.0, le=1.0, description="Record a document as a duplicate when its cosine to a stored one is >= this.")

    class HitOut(BaseModel):
        id: str
        score: float
        text: str
        metadata: dict[str, Any]

    class ResultsOut(BaseModel):
        results: list[list[HitOut]] = Field(description="One list of hits per input text, best first.")

    class NearDuplicatesOut(ResultsOut):
        threshold: float

    class EmbedOut(BaseModel):
        dim: int
        vectors: list[list[float]] = Field(description="L2-normalised float32 vectors, one per text.")

    class IngestOut(BaseModel):
        added: int
        skipped_known: int
        exact_duplicates: int
        near_duplicates: int
        documents: int = Field(description="Live documents in the collection after this write.")

    class DeleteOut(BaseModel):
        id: str
        deleted: bool

    class ErrorOut(BaseModel):
        error: str
        detail: Optional[list[dict[str, Any]]] = None

    return SimpleNamespace(**{k: v for k, v in locals().items() if isinstance(v, type) and issubclass(v, BaseModel)})


# ----------------------------------------------------------------------------- the service
class Service:
    """The work behind the routes: micro-batched encoding, locked reads, serialised writes."""

    def __init__(self, coll: Any, settings: ServerSettings) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from bellm_search.serve.batcher import MicroBatcher
        from bellm_search.dedup.job import default_cosine_threshold

        self.coll = coll
        self.settings = settings
        encoder = coll.encoder
        self.batcher = MicroBatcher(lambda texts: encoder.encode(texts, show_progress_bar=False),
                                    max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms,
                                    max_queue=settings.max_queue, enabled=settings.batching)
        self.lock = ReadWriteLock()
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="bellm-writer")
        self.threshold = default_cosine_threshold()
        self.internal_errors = 0

    def close(self) -> None:
        self.batcher.close()
        self.writer.shutdown(wait=True)

    # ------------------------------------------------------------------ plumbing
    async def within(self, awaitable: Any) -> Any:
        """The request's work within --timeout seconds, else 503 (a cancelled encode is skipped)."""
        from fastapi import HTTPException

        try:
            return await asyncio.wait_for(awaitable, self.settings.timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(503, f"request not served within {self.settings.timeout_s:g}s (server busy); retry later",
                                headers={"Retry-After": "1"}) from None

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
        from fastapi import HTTPException

        s = self.settings
        if len(texts) > s.max_texts:
            raise HTTPException(413, f"{len(texts)} texts in one request; the limit is {s.max_texts} (--max-texts)")
        for n, text in enumerate(texts):
            if len(text) > s.max_text_chars:
                raise HTTPException(413, f"text {n} has {len(text)} characters; the limit is {s.max_text_chars} (--max-text-chars)")
        if not utf8_ok(texts):
            raise HTTPException(422, "a text holds a lone UTF-16 surrogate (\\ud800-\\udfff): not valid Unicode text")

    def check_k(self, k: int) -> None:
        from fastapi import HTTPException

        if k > self.settings.max_k:
            raise HTTPException(422, f"k={k} is over the limit of {self.settings.max_k} (--max-k)")

    # ------------------------------------------------------------------ operations
    async def search(self, texts: list[str], k: int, nprobe: Optional[int], where: Optional[dict[str, str]]) -> list:
        self.check_texts(texts)
        self.check_k(k)
        return await self.within(self._search(texts, k, nprobe, where))

    async def _search(self, texts: list[str], k: int, nprobe: Optional[int], where: Optional[dict[str, str]]) -> list:
        xq = await self.batcher.encode(texts)
        hits = await self.read(self.coll.query_vectors, xq, k, nprobe=nprobe, where=where)
        return [[h.to_dict() for h in row] for row in hits]

    async def near_duplicates(self, texts: list[str], threshold: float, k: int, nprobe: Optional[int]) -> list:
        rows = await self.search(texts, k, nprobe, None)
        return [[h for h in row if h["score"] >= threshold] for row in rows]

    async def embed(self, texts: list[str]) -> Any:
        self.check_texts(texts)
        return await self.within(self.batcher.encode(texts))

    async def add(self, records: list[dict[str, Any]], near: Optional[float]) -> dict[str, Any]:
        """Encode the records not stored yet (micro-batched), then ingest them with those vectors."""
        from fastapi import HTTPException

        from bellm_search.corpus import MAX_JSON_DEPTH, json_depth

        self.check_texts([r["text"] for r in records])
        if any(json_depth(r) > MAX_JSON_DEPTH for r in records):  # stored, it would break every query returning it
            raise HTTPException(422, f"a document is nested deeper than {MAX_JSON_DEPTH} levels")
        if not utf8_ok(records):
            raise HTTPException(422, "a document holds a lone UTF-16 surrogate (\\ud800-\\udfff): not valid Unicode text")
        for r in records:
            r["id"] = str(r["id"])
        known = await self.read(self.coll.store.lookup_keys, [r["id"] for r in records])
        fresh = [r for r, int_id in zip(records, known) if int_id is None]  # a known id stays known (kept on delete)
        vecs = await self.within(self.batcher.encode([r["text"] for r in fresh])) if fresh else None
        stats = await self.write(self._ingest, fresh, vecs, near)  # once started, it finishes and is answered
        stats["skipped_known"] += len(records) - len(fresh)
        return stats

    def _ingest(self, fresh: list[dict[str, Any]], vecs: Any, near: Optional[float]) -> dict[str, Any]:
        out = {"added": 0, "skipped_known": 0, "exact_duplicates": 0, "near_duplicates": 0}
        if fresh:
            stats = self.coll.ingest(fresh, vectors=vecs, skip_near_duplicates=near).to_dict()
            out = {k: stats[k] for k in out}
        out["documents"] = self.coll.store.count()
        return out

    async def delete(self, doc_id: str) -> bool:
        deleted, _ = await self.write(self.coll.delete, [doc_id])
        return deleted == 1

    async def info(self) -> dict[str, Any]:
        data = await self.read(self.coll.info)
        data["server"] = {**self.settings.public(), "encoder_calls": self.batcher.stats.to_dict(),
                          "internal_errors": self.internal_errors}
        return data


# ----------------------------------------------------------------------------- ASGI guards
async def send_error(send: Callable, status: int, message: str, headers: Optional[dict[str, str]] = None) -> None:
    body = json.dumps({"error": message}).encode("utf-8")
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class CatchAll:
    """Last line: an unexpected exception is logged with its traceback and answered with a bare 500."""

    def __init__(self, app: Any, service: Service) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        started = False

        async def watch(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            self.service.internal_errors += 1
            log.exception("internal error on %s %s", scope.get("method"), scope.get("path"))
            if scope["type"] == "http" and not started:
                await send_error(send, 500, "internal server error (logged on the server)")


class ApiKey:
    """With a key set, every path but /health needs it (401 otherwise)."""

    def __init__(self, app: Any, key: Optional[str]) -> None:
        self.app, self.key = app, key

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if self.key is None or scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if not key_matches(headers, self.key):
            return await send_error(send, 401, "missing or wrong API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                                    {"WWW-Authenticate": "Bearer"})
        await self.app(scope, receive, send)


class BodyLimit:
    """Reads the whole body first (at most ``max_bytes``, within ``timeout`` seconds), then replays it."""

    def __init__(self, app: Any, max_bytes: int, timeout: float) -> None:
        self.app, self.max_bytes, self.timeout = app, max_bytes, timeout

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            status = 413 if declared.isdigit() else 400
            return await send_error(send, status, f"request body over {self.max_bytes} bytes (--max-body-bytes)"
                                    if status == 413 else "invalid Content-Length header")
        try:
            body = await asyncio.wait_for(self._read(receive), self.timeout)
        except asyncio.TimeoutError:
            return await send_error(send, 408, f"request body not received within {self.timeout:g}s")
        if body is None:
            return await send_error(send, 413, f"request body over {self.max_bytes} bytes (--max-body-bytes)")
        kind = dict(scope["headers"]).get(b"content-type", b"application/json").split(b";")[0].strip().lower()
        if body and not (kind == b"application/json" or kind.endswith(b"+json")):
            return await send_error(send, 415, f"the body must be JSON: send 'Content-Type: application/json', "
                                               f"not {kind.decode('latin-1')!r}")
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Callable) -> Optional[bytes]:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                return b""
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)


def _replay(body: bytes, receive: Callable) -> Callable:
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if sent:
            return await receive()  # waits for the disconnect
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


# ----------------------------------------------------------------------------- the app
def create_app(coll: Any, settings: Optional[ServerSettings] = None) -> Any:
    """The FastAPI app over an open, writable collection (its encoder is loaded here)."""
    from fastapi import FastAPI

    from bellm_search import __version__

    settings = settings or ServerSettings()
    service = Service(coll, settings)

    @asynccontextmanager
    async def lifespan(_app: Any) -> Any:
        yield
        service.close()

    app = FastAPI(title="bellm-search", version=__version__, lifespan=lifespan,
                  description="Vector search and near-duplicate detection over one bellm-search collection. "
                              "Errors are JSON `{\"error\": message}`.")
    app.state.service = service
    _error_handlers(app)
    _routes(app, service)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, timeout=settings.timeout_s)
    app.add_middleware(ApiKey, key=settings.api_key)
    app.add_middleware(CatchAll, service=service)  # added last = outermost of ours
    return app


def _error_handlers(app: Any) -> None:
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    from bellm_search.serve.batcher import BatcherClosed, Overloaded

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Any, exc: RequestValidationError) -> Any:
        errors = exc.errors()
        detail = [{"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in errors]
        if errors and errors[0].get("type") == "json_invalid":
            reason = (errors[0].get("ctx") or {}).get("error", "")
            message = f"the body is not valid JSON ({reason} at character {detail[0]['loc'][-1]})"
        else:
            message = "invalid request: " + "; ".join(f"{'.'.join(d['loc'][1:]) or 'body'}: {d['msg']}" for d in detail[:3])
        return JSONResponse({"error": message, "detail": detail}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Any, exc: HTTPException) -> Any:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(BellmError)
    async def known(_request: Any, exc: BellmError) -> Any:
        return JSONResponse({"error": str(exc)}, status_code=400)

    import lmdb

    @app.exception_handler(OSError)
    @app.exception_handler(RuntimeError)  # FAISS write errors; Overloaded/BatcherClosed have their own
    @app.exception_handler(lmdb.Error)
    async def storage(_request: Any, exc: Exception) -> Any:
        from bellm_search.errors import storage_error

        message = storage_error(exc, "; retry once there is space (ids already stored are skipped)")
        if message is None:
            raise exc  # a bug: the catch-all logs it and answers a bare 500
        log.error("storage error: %s", message)
        return JSONResponse({"error": f"storage error: {message}"}, status_code=507)

    @app.exception_handler(Overloaded)
    @app.exception_handler(BatcherClosed)
    async def busy(_request: Any, exc: Exception) -> Any:
        return JSONResponse({"error": f"server busy: {exc}; retry later"}, status_code=503, headers={"Retry-After": "1"})


def _routes(app: Any, service: Service) -> None:
    from fastapi import HTTPException

    m = api_models()
    errors = {code: {"model": m.ErrorOut} for code in (400, 401, 413, 422, 503)}

    @app.post("/query", response_model=m.ResultsOut, responses=errors, summary="Nearest documents to each text")
    async def query(body: m.QueryIn) -> Any:
        return {"results": await service.search(body.given(), body.k, body.nprobe, where_strings(body.where))}

    @app.post("/near-duplicates", response_model=m.NearDuplicatesOut, responses=errors,
              summary="Stored documents whose cosine to each text is >= threshold (empty list: none)")
    async def near_duplicates(body: m.NearDuplicatesIn) -> Any:
        threshold = service.threshold if body.threshold is None else body.threshold
        results = await service.near_duplicates(body.given(), threshold, body.k, body.nprobe)
        return {"threshold": threshold, "results": results}

    @app.post("/embed", response_model=m.EmbedOut, responses=errors, summary="Embeddings of texts")
    async def embed(body: m.EmbedIn) -> Any:
        vecs = await service.embed(body.given())
        return {"dim": int(vecs.shape[1]), "vectors": vecs.tolist()}

    @app.post("/documents", response_model=m.IngestOut, responses=errors,
              summary="Add documents (answered once they are durable; known ids are skipped)")
    async def add_documents(body: m.DocumentsIn) -> Any:
        return await service.add([d.model_dump() for d in body.documents], body.skip_near_duplicates)

    @app.delete("/documents/{doc_id:path}", response_model=m.DeleteOut, responses={**errors, 404: {"model": m.ErrorOut}},
                summary="Delete a document by its source id")
    async def delete_document(doc_id: str) -> Any:
        if not await service.delete(doc_id):
            raise HTTPException(404, f"no document with id {doc_id!r} (or it was already deleted)")
        return {"id": doc_id, "deleted": True}

    @app.get("/health", summary="Liveness (no API key needed)")
    async def health() -> Any:
        return {"status": "ok"}

    @app.get("/info", responses=errors, summary="The collection and the server's settings and counters")
    async def info() -> Any:
        return await service.info()


# ----------------------------------------------------------------------------- running it
def bind(host: str, port: int) -> socket.socket:
    """A bound socket (port 0 = any free port), so the real port is known before serving."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (choose another --port or --host)") from None
    sock.set_inheritable(True)
    return sock


def run_server(path: Path, settings: ServerSettings, encoder: Any = None, **encoder_options: Any) -> None:
    """Open the collection (writable; ``encoder`` may be any object with ``encode``/``config``/``dim``),
    load the encoder and index, then serve until SIGINT/SIGTERM."""
    from bellm_search.collection.core import Collection

    settings.validate()
    sock = bind(settings.host, settings.port)  # first: a taken port fails before the model loads
    try:
        with Collection.open(path, encoder=encoder, **encoder_options) as coll:
            app = create_app(coll, settings)
            coll.index  # noqa: B018 - load (and catch up) the index before the first request
            coll.encoder.encode(["warm-up"])
            _serve(app, sock, path, settings)
    finally:
        sock.close()


def _serve(app: Any, sock: socket.socket, path: Path, settings: ServerSettings) -> None:
    import uvicorn

    config = uvicorn.Config(app, log_level="info", access_log=False, server_header=False, timeout_keep_alive=5,
                            limit_concurrency=settings.max_connections, lifespan="on")
    sock.listen(2048)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    log.info("serving %s on http://%s:%d (micro-batching %s, max_batch=%d, max_wait_ms=%g, api key %s)",
             path, shown, port, "on" if settings.batching else "off", settings.max_batch, settings.max_wait_ms,
             "required" if settings.api_key else "off")
    uvicorn.Server(config).run(sockets=[sock])

