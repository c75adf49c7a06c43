#!/usr/bin/env bash
# Set up (if needed), then the main job on the sample corpus shipped with the package:
# ingest 285 social-media posts into indexes/demo, search it, and deduplicate it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BS=.venv/bin/bellm-search
CORPUS=bellm_search/data/sample_posts.jsonl
mkdir -p runs
echo "== ingest $CORPUS -> indexes/demo" >&2
# the demo's own collection is rebuilt each run: one built by another version of the encoder
# (e.g. before an upgrade of the shipped adapter) is refused on open, by design
rm -rf indexes/demo
$BS ingest "$CORPUS" --collection demo --normalize-social
echo "== info" >&2
$BS info --collection demo
for q in "puppy ate something it should not have" "new phone announced today" "heavy rain and flooding"; do
  echo "== query: $q" >&2
  $BS query "$q" --collection demo -k 3
done
echo "== dedup (calibrated threshold) -> runs/demo_clusters.jsonl" >&2
$BS dedup --collection demo --output runs/demo_clusters.jsonl --emit clusters
head -n 5 runs/demo_clusters.jsonl
