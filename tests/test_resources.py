"""Resources: a full disk (or a file size limit) during `bellm-search ingest`.

The ingest runs the real CLI entry point (``bellm_search.cli.main.main``) in a subprocess, with the
fake encoder put in place of the model (no torch). The disk fills up (a) through
RLIMIT_FSIZE with SIGXFSZ ignored, so writes fail with EFBIG, applied from the start (LMDB
commits fail mid-ingest), when the index is saved, or when the manifest is written; (b) on a
small tmpfs (ENOSPC) in a private mount namespace (``unshare -rm``), where that is allowed.
Each time: exit 1 with one ``error:`` line and no traceback; then the collection opens,
``check()`` is clean, every chunk reported committed is there and nothing more; a re-run with
space completes with the exact count. (LMDB map growth is covered in tests/test_store.py:
test_map_growth_from_tiny_map, test_reads_from_threads_while_map_grows.)
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bellm_search.collection.core import Collection
from fakes import FakeEncoder

HERE = Path(__file__).parent
ROOT = HERE.parent
N_DOCS, CHUNK, DIM = 3000, 200, 64

DRIVER = r'''
import os, resource, signal, sys, types
sys.path.insert(0, os.environ["TESTS_DIR"])
from fakes import FakeEncoder

class Encoder(FakeEncoder):  # stands in for the model: bellm_search.encoder.encode is never imported
    def __init__(self, config=None, **_):
        super().__init__(dim=int(os.environ["FAKE_DIM"]))
        if config is not None:
            self.config = config

fake = types.ModuleType("bellm_search.encoder.encode")
fake.Encoder = Encoder
sys.modules["bellm_search.encoder.encode"] = fake

import bellm_search.collection.ingest as ingest
import bellm_search.collection.manifest as manifest
import bellm_search.index.faiss_index as index

def limit_files():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
    size = int(os.environ["FSIZE"])
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

ingest_chunk = ingest.ingest_chunk
def reporting(coll, chunk, *args, **kwargs):  # one LMDB transaction per chunk: report each commit
    ingest_chunk(coll, chunk, *args, **kwargs)
    print("committed", ",".join(r.id for r in chunk), flush=True)
ingest.ingest_chunk = reporting

when = os.environ.get("FSIZE_AT")
if when == "start":
    limit_files()
elif when == "index":
    save = index.VectorIndex.save
    def limited_save(self, *args, **kwargs):
        limit_files()
        save(self, *args, **kwargs)
    index.VectorIndex.save = limited_save
elif when == "manifest":
    write = manifest.write_json_atomic
    def limited_write(*args, **kwargs):
        limit_files()
        write(*args, **kwargs)
    manifest.write_json_atomic = limited_write

from bellm_search.cli.main import main
main(sys.argv[1:])
'''


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "posts.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(N_DOCS):
            fh.write(json.dumps({"id": f"doc-{i}", "text": f"synthetic post number {i} " + "words " * (i % 40), "n": i}) + "\n")
    return path


def ingest_cmd(corpus: Path, coll: Path) -> list[str]:
    return [sys.executable, "-c", DRIVER, "ingest", str(corpus), "-c", str(coll), "--chunk-size", str(CHUNK), "--json"]


def driver_env(**extra: str) -> dict[str, str]:
    import os

    return {**os.environ, "TESTS_DIR": str(HERE), "FAKE_DIM": str(DIM), **extra}


def new_collection(path: Path) -> Path:
    Collection.create(path, encoder=FakeEncoder(dim=DIM)).close()
    return path


def committed(stdout: str) -> list[str]:
    return [i for line in stdout.splitlines() if line.startswith("committed ") for i in line.split(" ", 1)[1].split(",")]


def assert_clean_failure(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and proc.stderr.strip().splitlines()[-1] == errors[0], proc.stderr[-3000:]
    assert "re-run the command to resume" in errors[0]
    return errors[0]


def assert_consistent(path: Path, ids: list[str]) -> None:
    """Opens, check() is clean, holds exactly ``ids`` (in ingest order) and no temp file is left."""
    with Collection.open(path, readonly=True) as coll:  # no encoder needed to read and check
        report = coll.check()
        assert report["ok"], report
        assert coll.store.count() == len(ids)
        assert [doc["id"] for _, doc in coll.store.iter_docs()] == ids
        assert coll.load_index().ntotal == len(ids)
    assert not [p.name for p in path.rglob("*tmp*")], "temporary files left behind"


def rerun_completes(corpus: Path, path: Path, already: int) -> None:
    proc = subprocess.run(ingest_cmd(corpus, path), env=driver_env(), capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (summary["added"], summary["skipped_known"], summary["documents"]) == (N_DOCS - already, already, N_DOCS)
    assert_consistent(path, [f"doc-{i}" for i in range(N_DOCS)])


# ----------------------------------------------------------------------------- EFBIG (file size limit)
@pytest.mark.parametrize("when, size, message", [
    ("start", 400_000, "LMDB store could not write"),  # data.mdb outgrows it after a few chunks
    ("index", 4096, "cannot write the index"),         # every chunk committed, then index.faiss fails
    ("manifest", 256, "File too large"),                # index saved, then manifest.json fails
])
def test_file_size_limit_during_ingest_fails_cleanly_and_a_rerun_completes(tmp_path, corpus, when, size, message):
    path = new_collection(tmp_path / "coll")
    proc = subprocess.run(ingest_cmd(corpus, path), env=driver_env(FSIZE=str(size), FSIZE_AT=when),
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    error = assert_clean_failure(proc)
    assert message in error, error
    done = committed(proc.stdout)
    assert done == [f"doc-{i}" for i in range(len(done))]
    assert (0 < len(done) < N_DOCS) if when == "start" else len(done) == N_DOCS
    assert_consistent(path, done)
    rerun_completes(corpus, path, len(done))


# ----------------------------------------------------------------------------- ENOSPC (a small tmpfs)
def full_size(tmp_path: Path, corpus: Path) -> int:
    """Bytes a complete ingest takes on disk (measured on a plain folder)."""
    path = new_collection(tmp_path / "measure")
    subprocess.run(ingest_cmd(corpus, path), env=driver_env(), capture_output=True, check=True, cwd=ROOT, timeout=300)
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    shutil.rmtree(path)
    return size


def on_tmpfs(tmp_path: Path, corpus: Path, seed: Path, size: int) -> tuple[subprocess.CompletedProcess, Path]:
    """Copy ``seed`` onto a tmpfs of ``size`` bytes, ingest there, copy the result back out."""
    mnt, out = tmp_path / "mnt", tmp_path / "out"
    mnt.mkdir()
    out.mkdir()
    script = ('mount -t tmpfs -o size="$SIZE" tmpfs "$MNT" || exit 99; cp -a "$SEED" "$MNT/coll" || exit 98; '
              '"$@"; rc=$?; cp -a "$MNT/coll" "$OUT/coll"; exit $rc')
    env = driver_env(SIZE=str(size), MNT=str(mnt), SEED=str(seed), OUT=str(out))
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", *ingest_cmd(corpus, mnt / "coll")],
                          env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)
    if proc.returncode in (98, 99):
        pytest.skip(f"cannot mount a tmpfs in a private namespace here: {proc.stderr.strip()[:200]}")
    return proc, out / "coll"


@pytest.fixture(scope="module")
def can_unshare() -> None:
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1)")
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"user/mount namespaces not allowed here: {probe.stderr.strip()[:200]}")


@pytest.mark.parametrize("fraction", [0.35, 0.7, 0.95])
def test_disk_full_during_ingest_fails_cleanly_and_a_rerun_completes(tmp_path, corpus, can_unshare, fraction):
    seed = new_collection(tmp_path / "seed")
    size = int(full_size(tmp_path, corpus) * fraction)
    proc, path = on_tmpfs(tmp_path, corpus, seed, size)
    error = assert_clean_failure(proc)
    assert any(words in error for words in ("disk may be full", "No space left")), error
    done = committed(proc.stdout)
    assert done == [f"doc-{i}" for i in range(len(done))]
    if fraction < 0.5:
        assert len(done) < N_DOCS  # LMDB ran out mid-ingest (larger tmpfs: the index or manifest did)
    assert_consistent(path, done)
    rerun_completes(corpus, path, len(done))


# ----------------------------------------------------------------------------- the error mapping itself
def test_storage_errors_are_one_line_and_other_errors_keep_their_traceback():
    import errno

    import lmdb

    from bellm_search.errors import storage_error

    full = storage_error(OSError(errno.ENOSPC, "No space left on device", "/c/manifest.json"))
    assert full.startswith("cannot write (/c/manifest.json): No space left on device;") and "re-run" in full
    assert storage_error(OSError(errno.EACCES, "Permission denied", "/c")) == "Permission denied (/c)"
    assert "disk may be full" in storage_error(lmdb.Error("mdb_txn_commit: Input/output error"))
    assert storage_error(lmdb.CorruptedError("mdb_get: MDB_CORRUPTED")).startswith("the collection's LMDB store failed")
    faiss_msg = "Error in write_index: Error: 'ret == (n)' failed: write error in /c/.index.faiss.tmp-1: 5 != 9 (File too large)"
    assert storage_error(RuntimeError(faiss_msg)).startswith("cannot write the index /c/.index.faiss.tmp-1: 5 != 9 (File too large)")
    for bug in (RuntimeError("planted"), OSError(errno.EBADF, "Bad file descriptor"), ValueError("x"), KeyError("k")):
        assert storage_error(bug) is None


def test_a_full_disk_under_the_server_is_a_507_and_it_serves_on(tmp_path, monkeypatch):
    import errno

    from starlette.testclient import TestClient

    from bellm_search.serve.app import create_app

    coll = Collection.create(tmp_path / "c", encoder=FakeEncoder())
    coll.ingest([{"id": "a", "text": "first post"}])
    failure: list[Exception] = []

    def ingest(*args, **kwargs):
        raise failure[0]

    monkeypatch.setattr(coll, "ingest", ingest)
    app = create_app(coll)
    with TestClient(app, raise_server_exceptions=False) as client:
        failure.append(OSError(errno.ENOSPC, "No space left on device"))
        res = client.post("/documents", json={"documents": [{"id": "b", "text": "second post"}]})
        assert res.status_code == 507 and res.json()["error"].startswith("storage error: cannot write: No space left")
        failure[0] = RuntimeError("a bug, not the disk")
        res = client.post("/documents", json={"documents": [{"id": "b", "text": "second post"}]})
        assert res.status_code == 500 and res.json() == {"error": "internal server error (logged on the server)"}
        assert client.post("/query", json={"text": "first post", "k": 1}).json()["results"][0][0]["id"] == "a"
        assert app.state.service.internal_errors == 1
    coll.close()
