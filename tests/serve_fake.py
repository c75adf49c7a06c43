"""Serve a collection with the deterministic FakeEncoder: the server process the tests talk to.

    python tests/serve_fake.py COLLECTION '{"port": 0, "max_k": 50, "delay": 0.01}'

The JSON holds ServerSettings fields plus ``delay`` (seconds per encoder call) and ``per_char``
(seconds per character of the call's texts: a cost that grows with the tokens). Two planted texts
exercise failure paths: "__boom__" makes the encoder raise, "__sleep__" stalls it for 2.5 s.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from fakes import FakeEncoder  # noqa: E402

from bellm_search.serve.app import ServerSettings, run_server  # noqa: E402

SLEEP_S = 2.5


class PlantedEncoder(FakeEncoder):
    def __init__(self, delay: float = 0.0, per_char: float = 0.0) -> None:
        super().__init__(delay=delay)
        self.per_char = per_char

    def encode(self, texts, **kw):
        if self.per_char:
            time.sleep(self.per_char * sum(len(t) for t in texts))
        if "__boom__" in texts:
            raise RuntimeError("planted encoder failure (must not reach the client)")
        if "__sleep__" in texts:
            time.sleep(SLEEP_S)
        return super().encode(texts, **kw)


def main() -> None:
    path, options = Path(sys.argv[1]), json.loads(sys.argv[2])
    delay, per_char = float(options.pop("delay", 0.0)), float(options.pop("per_char", 0.0))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    run_server(path, ServerSettings(**options), encoder=PlantedEncoder(delay=delay, per_char=per_char))


if __name__ == "__main__":
    main()
