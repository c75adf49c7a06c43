"""The server's settings and the pure safety helpers behind them (loopback check, API-key match).
No heavy imports: the CLI builds ``ServerSettings`` before anything slow is loaded."""
from __future__ import annotations

import hmac
import ipaddress
from dataclasses import asdict, dataclass
from typing import Any, Optional

from bellm_search.errors import ConfigError

MIN_KEY_CHARS = 16
OPEN_PATHS = frozenset({"/health", "/", "/review/app.js", "/review/style.css"})  # answered without an API key (the review page's static files hold no data)
POSITIVE = ("max_batch", "max_batch_tokens", "max_request_tokens", "max_queue", "max_body_bytes", "max_texts",
            "max_text_chars", "max_k", "timeout_s", "max_connections")


@dataclass
class ServerSettings:
    """Everything the server is configured with; ``validate`` refuses unsafe or absurd values.

    Token counts are estimates made before tokenising (see ``batcher.estimate_tokens``)."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: Optional[str] = None
    batching: bool = True
    max_batch: int = 64                # texts per encoder call
    max_batch_tokens: int = 1024       # estimated tokens per encoder call (a big request is split in such calls)
    max_request_tokens: int = 32_768   # estimated tokens per request (413 beyond): bounds one request's work
    max_wait_ms: float = 5.0           # longest wait for more requests, only when more are expected
    max_queue: int = 4096              # texts waiting for the encoder before 503
    max_body_bytes: int = 1_000_000    # request body (413 beyond)
    max_texts: int = 256               # texts or documents per request (413 beyond)
    max_text_chars: int = 20_000       # characters per text (413 beyond)
    max_k: int = 1000                  # results per text (422 beyond)
    timeout_s: float = 30.0            # per request, queueing included (503 beyond)
    max_connections: int = 256         # open connections + tasks (uvicorn answers 503 beyond)

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
        for name in POSITIVE:
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
