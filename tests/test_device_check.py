"""scripts/device_check.py: its CPU dry run (tiny models) passes, and a failing section is a FAIL row
while the other sections still run."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scripts_loader import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "device_check.py"


@pytest.fixture(scope="module")
def device_check():
    return load_script("device_check")


def test_dry_run_passes_every_section(tmp_path):
    # a fresh process, as on the device: other tests of this session import lmdb and faiss, which
    # the script's last row would (rightly) report as loaded
    run = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    text = (tmp_path / "device_check.md").read_text()
    assert run.returncode == 0, text + run.stderr[-2000:]
    assert "FAIL" not in text
    for section in ("environment", "bf16 = fp32", "OOM back-off", "training step", "batching gain", "throughput"):
        assert f"| {section} |" in text, section
    assert text.count("| throughput | token budget") == 3  # 1024, 4096, 4096 without prefix reuse
    assert "| throughput | prefix reuse speed-up at budget" in text
    assert "| prompt-prefix reuse active on the device (passed its self-check) | yes | PASS |" in text
    assert "| lmdb / faiss / gguf imported | none (not needed) | PASS |" in text
    assert "| section | check | result | status |" in run.stdout


def test_a_failing_section_is_reported_and_the_rest_run(device_check, tmp_path):
    def broken(ck):
        raise RuntimeError("planted failure")

    ran = []
    sections = [("broken", broken), ("after", lambda ck: ran.append(ck.add("after", "ran", "yes")))]
    rc = device_check.main(["--dry-run", "--out", str(tmp_path)], sections=sections)
    text = (tmp_path / "device_check.md").read_text()
    assert rc == 1
    assert "| broken | broken | RuntimeError: planted failure | FAIL |" in text
    assert ran and "| after | ran | yes | INFO |" in text
