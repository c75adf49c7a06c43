"""``bellm-search serve``: the options, then ``bellm_search.serve.app.run_server``."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from bellm_search.cli.options import CollectionOpt, collection_path


def serve_command(
    collection: CollectionOpt = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on. Anything but loopback requires an API key.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port (0 = any free port; the log line says which).")] = 8000,
    api_key: Annotated[Optional[str], typer.Option(
        "--api-key", envvar="BELLM_API_KEY", show_default=False,
        help="Require 'Authorization: Bearer KEY' or 'X-API-Key: KEY' on every request but /health "
             "(prefer the env var BELLM_API_KEY: a flag is visible in the process list).")] = None,
    max_batch: Annotated[int, typer.Option("--max-batch", help="Most texts per micro-batched encoder call.", min=1)] = 64,
    max_batch_tokens: Annotated[int, typer.Option(
        "--max-batch-tokens", min=1,
        help="Most (estimated) tokens per encoder call: a large request is encoded in several calls, "
             "and other requests get their turn between them.")] = 1024,
    max_request_tokens: Annotated[int, typer.Option(
        "--max-request-tokens", min=1,
        help="Most (estimated) tokens of encoding one request may ask for (413 beyond).")] = 32_768,
    max_wait_ms: Annotated[float, typer.Option("--max-wait-ms", help="Longest wait for more requests before an encoder call (only when more are expected).", min=0)] = 5.0,
    no_batching: Annotated[bool, typer.Option("--no-batching", help="Encoder calls hold one request's texts only (for comparison).")] = False,
    max_body_bytes: Annotated[int, typer.Option("--max-body-bytes", help="Largest request body (413 beyond).", min=1)] = 1_000_000,
    max_texts: Annotated[int, typer.Option("--max-texts", help="Most texts or documents per request (413 beyond).", min=1)] = 256,
    max_text_chars: Annotated[int, typer.Option("--max-text-chars", help="Longest text in characters (413 beyond).", min=1)] = 20_000,
    max_k: Annotated[int, typer.Option("--max-k", help="Largest k (422 beyond).", min=1)] = 1000,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds a request may take, queueing included (503 beyond).", min=0.001)] = 30.0,
    max_queue: Annotated[int, typer.Option("--max-queue", help="Texts waiting for the encoder before requests get 503.", min=1)] = 4096,
    device: Annotated[Optional[str], typer.Option("--device", help="Encoder device: auto | cpu | cuda | cuda:N")] = None,
) -> None:
    """Serve a collection over HTTP (FastAPI): query, embed, near-duplicates, add and delete documents."""
    from bellm_search.serve.app import ServerSettings, run_server

    settings = ServerSettings(host=host, port=port, api_key=api_key or None, batching=not no_batching,
                              max_batch=max_batch, max_batch_tokens=max_batch_tokens,
                              max_request_tokens=max_request_tokens, max_wait_ms=max_wait_ms, max_queue=max_queue,
                              max_body_bytes=max_body_bytes, max_texts=max_texts, max_text_chars=max_text_chars,
                              max_k=max_k, timeout_s=timeout)
    settings.validate()  # before anything slow: an unsafe bind fails at once
    _require_serve_extra()
    run_server(collection_path(collection), settings, **({"device": device} if device else {}))


def _require_serve_extra() -> None:
    from bellm_search.errors import MissingDependency

    for module in ("fastapi", "uvicorn"):
        try:
            __import__(module)
        except ImportError:
            raise MissingDependency(module, "serve") from None
