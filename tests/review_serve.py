"""Serve a collection with a FakeEncoder that plants the sample corpus's near-duplicate groups
(edits at cosine 0.97, paraphrases at 0.92 to their group's first post; every other text gets its
own hashed vector, so exact copies only cluster by their ingest-time link).

    python tests/review_serve.py COLLECTION '{"port": 0, "api_key": "..."}'
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from fakes import FakeEncoder, base_vector, near  # noqa: E402

from bellm_search.serve.app import ServerSettings, run_server  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / "bellm_search" / "data"
CORPUS = DATA / "sample_posts.jsonl"
COSINE = {"edit": 0.97, "paraphrase": 0.92}


def sample_posts() -> list[dict]:
    return [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]


def planted_groups() -> list[dict]:
    return json.loads((DATA / "sample_posts_truth.json").read_text(encoding="utf-8"))


def planted_encoder() -> FakeEncoder:
    text = {p["id"]: p["text"] for p in sample_posts()}
    table = {}
    for group in planted_groups():
        if group["type"] != "near":
            continue
        first = base_vector(group["ids"][0])
        table[text[group["ids"][0]]] = first
        for other in group["ids"][1:]:
            table[text[other]] = near(first, COSINE.get(group["variant"], 0.95), other)
    return FakeEncoder(table)


def main() -> None:
    path, options = Path(sys.argv[1]), json.loads(sys.argv[2])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    run_server(path, ServerSettings(**options), encoder=planted_encoder())


if __name__ == "__main__":
    main()
