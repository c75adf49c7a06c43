"""HTTP API: the FastAPI app over one collection, and ``run_server`` (uvicorn) behind ``bellm-search serve``.

    request ─► CatchAll ─► ApiKey ─► BodyLimit ─► FastAPI route ─► Service (validation, batcher, locks)

``guards.py`` holds the ASGI guards, ``service.py`` the work, ``models.py`` the request and response
bodies, ``batcher.py`` the micro-batcher, ``settings.py`` the settings. The command's options live
in ``bellm_search/cli/serve.py``.

No ``from __future__ import annotations`` here: FastAPI resolves the endpoint annotations, and
FastAPI, uvicorn and the request models are imported lazily (``bellm-search --help`` stays fast).
"""
import logging
import socket
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Optional

from bellm_search.errors import BellmError, ConfigError
from bellm_search.serve.settings import ServerSettings

log = logging.getLogger(__name__)

__all__ = ["ServerSettings", "create_app", "run_server"]


def create_app(coll: Any, settings: Optional[ServerSettings] = None) -> Any:
    """The FastAPI app over an open, writable collection (its encoder is loaded here).
    ``app.state.service`` is the ``Service`` every route calls."""
    from fastapi import FastAPI

    from bellm_search import __version__
    from bellm_search.serve.guards import ApiKey, BodyLimit, CatchAll
    from bellm_search.serve.service import Service

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
    # more routes over the same service (the review page) are added here
    from bellm_search.serve import review; review.add_routes(app, service)  # noqa: E702  the page at /
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
        return JSONResponse(_validation_error(exc.errors()), status_code=422)

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


def _validation_error(errors: list) -> dict[str, Any]:
    """pydantic's errors -> {"error": one line, "detail": [{loc, msg, type}]}."""
    detail = [{"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", ""), "type": e.get("type", "")}
              for e in errors]
    if errors and errors[0].get("type") == "json_invalid":
        reason = (errors[0].get("ctx") or {}).get("error", "")
        message = f"the body is not valid JSON ({reason} at character {detail[0]['loc'][-1]})"
    else:
        message = "invalid request: " + "; ".join(f"{'.'.join(d['loc'][1:]) or 'body'}: {d['msg']}" for d in detail[:3])
    return {"error": message, "detail": detail}


def _routes(app: Any, service: Any) -> None:
    from starlette.exceptions import HTTPException

    from bellm_search.serve import models as m
    from bellm_search.serve.service import where_strings

    errors = {code: {"model": m.ErrorOut} for code in (400, 401, 413, 422, 503)}

    @app.post("/query", response_model=m.ResultsOut, responses=errors, summary="Nearest documents to each text")
    async def query(body: m.QueryIn) -> Any:
        return {"results": await service.search(body.given(), body.k, body.nprobe, where_strings(body.where))}

    @app.post("/near-duplicates", response_model=m.NearDuplicatesOut, responses=errors,
              summary="Stored near duplicates of each text: the calibrated pair model, or cosine >= threshold (empty list: none)")
    async def near_duplicates(body: m.NearDuplicatesIn) -> Any:
        return await service.near_duplicates(body.given(), body.threshold, body.k, body.nprobe)

    @app.post("/embed", response_model=m.EmbedOut, responses=errors, summary="Embeddings of texts")
    async def embed(body: m.EmbedIn) -> Any:
        vecs = await service.embed(body.given())
        return {"dim": int(vecs.shape[1]), "vectors": vecs.tolist()}

    @app.post("/documents", response_model=m.IngestOut, responses=errors,
              summary="Add documents (answered once they are durable; known ids are skipped)")
    async def add_documents(body: m.DocumentsIn) -> Any:
        return await service.add([d.model_dump() for d in body.documents], body.skip_near_duplicates,
                                 body.near_duplicates)

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
            coll.load_index()  # load (and catch up) the index before the first request
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
    log.info("serving %s on http://%s:%d (micro-batching %s, max_batch=%d, max_batch_tokens=%d, max_wait_ms=%g, "
             "api key %s)", path, shown, port, "on" if settings.batching else "off", settings.max_batch,
             settings.max_batch_tokens, settings.max_wait_ms, "required" if settings.api_key else "off")
    uvicorn.Server(config).run(sockets=[sock])
