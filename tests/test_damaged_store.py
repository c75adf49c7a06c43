"""Damaged or missing stores (issue 18 items 2 and 3): every command refuses them with one line and
exit 1, and a repair never creates an empty store in place of a lost one. The commands run in a
subprocess: a SIGBUS (what a truncated store caused) would kill pytest."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fakes import FakeEncoder  # noqa: E402

from bellm_search.collection.core import Collection  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("damaged") / "C"
    coll = Collection.create(path, encoder=FakeEncoder(dim=64))
    with coll:
        coll.ingest([{"id": f"d{i}", "text": f"post number {i} " + "x" * (i % 50)} for i in range(3000)])
    assert (path / "meta.lmdb" / "data.mdb").stat().st_size > 800_000
    return path


@pytest.fixture
def coll_path(built, tmp_path) -> Path:
    return Path(shutil.copytree(built, tmp_path / "C"))


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bellm_search.cli.main", *args], capture_output=True, text=True,
                          timeout=120)


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*"))
            if f.is_file() and f.name not in ("lock.mdb", ".write.lock")}


@pytest.mark.parametrize("command", [["check"], ["check", "--repair"], ["info"], ["query", "post number 7"],
                                     ["delete", "d1"]])
def test_truncated_store_is_refused_by_every_command(coll_path, command):
    data = coll_path / "meta.lmdb" / "data.mdb"
    os.truncate(data, 400_000)  # what `truncate -s 400000 C/meta.lmdb/data.mdb` did: SIGBUS (exit 135) in each
    before = snapshot(coll_path)
    proc = cli(*command, "-c", str(coll_path))
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-800:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "is damaged: data.mdb holds 400000 bytes" in lines[0], proc.stderr
    assert "restore it from a backup, or re-ingest" in lines[0]
    assert snapshot(coll_path) == before  # nothing written


@pytest.mark.parametrize("command", [["check", "--repair"], ["check"], ["info"], ["ingest"], ["reindex"]])
def test_a_lost_store_is_refused_not_replaced_by_an_empty_one(coll_path, command, tmp_path):
    shutil.rmtree(coll_path / "meta.lmdb")
    before = snapshot(coll_path)
    extra = [str(tmp_path / "more.txt")] if command == ["ingest"] else []
    if extra:
        Path(extra[0]).write_text("one more post\n", encoding="utf-8")
    proc = cli(*command, *extra, "-c", str(coll_path))
    assert proc.returncode == 1, (proc.returncode, proc.stdout[-500:], proc.stderr[-800:])
    assert "no store at" in proc.stderr and "restore it from a backup, or re-ingest" in proc.stderr, proc.stderr
    assert not (coll_path / "meta.lmdb").exists()  # not re-created empty
    assert snapshot(coll_path) == before  # the index and the manifest are kept as they were


@pytest.mark.parametrize("damage", ["truncate", "lose"])
def test_check_json_reports_a_refused_store_on_stdout(coll_path, damage):
    if damage == "truncate":
        os.truncate(coll_path / "meta.lmdb" / "data.mdb", 400_000)
    else:
        shutil.rmtree(coll_path / "meta.lmdb")
    before = snapshot(coll_path)
    proc = cli("check", "--json", "-c", str(coll_path))
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-800:])
    report = json.loads(proc.stdout)  # a machine reading --json gets a report, not an empty stdout
    assert report["ok"] is False and report["repaired"] is False and report["store"] == "refused"
    assert len(report["problems"]) == 1 and "restore it from a backup, or re-ingest" in report["problems"][0]
    assert len(proc.stderr.strip().splitlines()) == 1  # the same one error line as without --json
    assert snapshot(coll_path) == before
