#!/usr/bin/env bash
# The data scripts/device_train.py needs, in one small file: runs/device/pack.tar.xz (runs/ is
# git-ignored; carry "runs/device" to the device machine). Training sources and dev sets only
# (scripts/prepare_data.py), no model.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python scripts/prepare_data.py --out runs/data
mkdir -p runs/device
tar -C runs/data -cJf runs/device/pack.tar.xz manifest.json nli.jsonl twitter_url.jsonl twitter_url_strict.jsonl dev
ls -l runs/device/pack.tar.xz
