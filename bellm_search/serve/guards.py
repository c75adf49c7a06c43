"""ASGI guards around the FastAPI app, outermost first: CatchAll (a bug is a bare 500, logged),
ApiKey (401 without the key), BodyLimit (the whole body read first: 413 / 408 / 415)."""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Callable, Optional

from bellm_search.serve.settings import OPEN_PATHS, key_matches

log = logging.getLogger(__name__)


async def send_error(send: Callable, status: int, message: str, headers: Optional[dict[str, str]] = None) -> None:
    body = json.dumps({"error": message}).encode("utf-8")
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class CatchAll:
    """Last line: an unexpected exception is logged with its traceback and answered with a bare 500
    (counted in ``service.internal_errors``)."""

    def __init__(self, app: Any, service: Any) -> None:
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
