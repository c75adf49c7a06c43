"""What a person sees from the command line: exit codes that tell the truth, one line for path
mistakes, option names, which log lines and warnings reach stderr, and (with the real model and
the shipped adapter) no library warning and at most one progress bar per command."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from test_cli import run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": t, "lang": "en"}) + "\n" for i, t in enumerate(
        ["a man is playing guitar", "the stock market crashed", "a dog runs in the park"])), encoding="utf-8")
    return path


@pytest.fixture
def built(capsys, corpus, tiny_llama, tmp_path):
    """A small collection made by the CLI with the tiny random model."""
    path = tmp_path / "coll"
    code, _, err = run(capsys, "ingest", str(corpus), "-c", str(path), "--model", str(tiny_llama), "--adapter", "none")
    assert code == 0, err
    return path


def temps(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if ".tmp" in p.name]


# ----------------------------------------------------------------------------- check's verdict
def test_check_exits_1_when_not_ok_and_0_after_a_repair(capsys, built):
    assert run(capsys, "check", "-c", str(built))[0] == 0
    (built / "index.faiss").unlink()
    code, _, err = run(capsys, "check", "-c", str(built))
    assert code == 1 and "NOT ok" in err
    code, _, err = run(capsys, "check", "--repair", "-c", str(built))
    assert code == 0 and err.strip().endswith("ok")
    assert run(capsys, "check", "-c", str(built))[0] == 0


def test_check_repair_exits_1_when_problems_remain(capsys, built, monkeypatch):
    from bellm_search.collection.core import Collection

    report = {"ok": False, "problems": ["x is broken"], "repaired": True, "remaining": ["x is broken"]}
    monkeypatch.setattr(Collection, "check", lambda self, repair=False: report)
    code, _, err = run(capsys, "check", "--repair", "-c", str(built))
    assert code == 1 and "problems remain" in err and "NOT ok" in err


# ----------------------------------------------------------------------------- path mistakes
def test_writing_to_a_directory_is_one_line_and_leaves_no_temp(capsys, built, corpus, tiny_llama, tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    code, _, err = run(capsys, "dedup", "-c", str(built), "--threshold", "0.99", "-o", str(target))
    assert code == 1 and err.count("\n") == 1 and "is a directory" in err
    code, _, err = run(capsys, "embed", str(corpus), "-o", str(target), "--model", str(tiny_llama), "--adapter", "none")
    assert code == 1 and err.count("\n") == 1 and "is a directory" in err
    assert temps(tmp_path) == [] and list(target.iterdir()) == []


def test_collection_that_is_a_file_is_one_line(capsys, corpus, tiny_llama, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("not a collection\n")
    for target in (afile, afile / "sub"):
        code, _, err = run(capsys, "ingest", str(corpus), "-c", str(target), "--model", str(tiny_llama), "--adapter", "none")
        assert code == 1 and err.count("\n") == 1 and "cannot be a folder" in err
    assert afile.read_text() == "not a collection\n"


def test_ingest_checks_its_inputs_before_loading_the_model(capsys, tmp_path):
    # the model does not exist either: the missing corpus must be what is reported, and nothing created
    code, _, err = run(capsys, "ingest", str(tmp_path / "missing.jsonl"), "-c", str(tmp_path / "c"),
                       "--model", str(tmp_path / "no-model"), "--adapter", "none")
    assert code == 1 and "missing.jsonl does not exist" in err and err.count("\n") == 1
    assert not (tmp_path / "c").exists()


# ----------------------------------------------------------------------------- options
def test_options_read_right(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # rich shortens long option names on a narrow screen
    expected = {"ingest": ["--normalize-social", "--near-duplicate-threshold"], "reindex": ["--pq-m", "--nlist"],
                "query": ["--top-k"], "dedup": ["--neighbours", "--normalize-social"]}
    for command, names in expected.items():
        code, out, _ = run(capsys, command, "--help")
        assert code == 0 and all(name in out for name in names), (command, out)
    for command, old in (("ingest", "--normalize"), ("ingest", "--skip-near-duplicates"), ("reindex", "--m"),
                         ("dedup", "-k")):
        code, _, err = run(capsys, command, old, "1")
        assert code == 2 and "No such option" in err, (command, old)


def test_options_that_would_be_ignored_are_refused(capsys, corpus, tiny_llama, tmp_path):
    code, _, err = run(capsys, "embed", str(corpus), "-o", str(tmp_path / "v.npy"), "--id-field", "key",
                       "--model", str(tiny_llama), "--adapter", "none")
    assert code == 1 and "--id-field is not used by the local engine" in err
    assert not (tmp_path / "v.npy").exists()
    code, _, err = run(capsys, "embed", str(corpus), "--engine", "ray", "--output-dir", str(tmp_path / "s"),
                       "-o", str(tmp_path / "v.npy"))
    assert code == 1 and "--output is not used by --engine ray" in err
    shards = tmp_path / "shards"
    shards.mkdir()
    for extra in (["--text-field", "body"], ["--id-field", "key"], ["--skip-invalid"]):
        code, _, err = run(capsys, "ingest", "--from-embeddings", str(shards), "-c", str(tmp_path / "c"), *extra)
        assert code == 1 and f"{extra[0]} is not used with --from-embeddings" in err
    assert not (tmp_path / "c").exists()


# ----------------------------------------------------------------------------- what reaches stderr
LOG_PROBE = (
    "import logging, sys, warnings\n"
    "from bellm_search.cli.main import configure_output\n"
    "configure_output(int(sys.argv[1]), sys.argv[2] == 'q')\n"
    "logging.getLogger('bellm_search.collection.index_state').info('INFO-LINE')\n"
    "logging.getLogger('bellm_search.store').warning('OWN-WARNING')\n"
    "warnings.warn('LIBRARY-WARNING', UserWarning)\n"
    "warnings.warn('`is_gradient_checkpointing` is deprecated and will be removed in v6.', FutureWarning)\n"
)


@pytest.mark.parametrize("verbose, quiet, shown", [
    (0, False, {"OWN-WARNING", "LIBRARY-WARNING"}),
    (1, False, {"INFO-LINE", "OWN-WARNING", "LIBRARY-WARNING", "is_gradient_checkpointing"}),
    (0, True, set()),
])
def test_verbosity_decides_what_reaches_stderr(verbose, quiet, shown):
    res = subprocess.run([sys.executable, "-c", LOG_PROBE, str(verbose), "q" if quiet else "-"],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    probes = {"INFO-LINE", "OWN-WARNING", "LIBRARY-WARNING", "is_gradient_checkpointing"}
    assert {p for p in probes if p in res.stderr} == shown, res.stderr


# ----------------------------------------------------------------------------- the real thing
BAR = re.compile(r"\[\d+:\d\d")  # tqdm's elapsed-time field


def run_on_terminal(args: list[str], cwd: Path) -> tuple[int, str, str]:
    """The CLI with stderr on a pseudo-terminal, so progress bars render as a person sees them."""
    import fcntl
    import pty
    import struct
    import termios

    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a new pty is 0 columns wide
    proc = subprocess.Popen([sys.executable, "-m", "bellm_search.cli.main", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=secondary, stdin=subprocess.DEVNULL)
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(primary, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(primary)
    out = proc.stdout.read().decode()
    return proc.wait(timeout=600), out, b"".join(chunks).decode(errors="replace")


@pytest.mark.integration
def test_default_adapter_commands_print_no_warning_and_at_most_one_bar(tmp_path):
    texts = ["a man is playing guitar", "someone plays the guitar", "the stock market crashed today"] * 3
    (tmp_path / "t.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    for args in (["embed", "t.txt", "-o", "v.npy"], ["ingest", "t.txt", "-c", "./c"],
                 ["query", "guitar", "-c", "./c", "-k", "2"]):
        code, out, err = run_on_terminal(args, tmp_path)
        assert code == 0, err
        lines = err.replace("\r\n", "\n").split("\n")
        assert not [line for line in lines if re.search(r"warn|deprecat|INFO", line, re.IGNORECASE)], err
        assert sum(bool(BAR.search(line)) for line in lines) <= 1, err
    assert "guitar" in out


def test_keep_by_a_field_no_duplicate_has_says_so_once(tiny_llama, tmp_path):
    rows = [{"id": "a", "text": "same words"}, {"id": "b", "text": "same words"},
            {"id": "c", "text": "other words"}, {"id": "d", "text": "other words"}]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    base = [sys.executable, "-m", "bellm_search.cli.main"]
    args = ["dedup", str(corpus), "--model", str(tiny_llama), "--adapter", "none", "--score", "cosine",
            "--threshold", "0.999", "--keep", "field:likes"]
    res = subprocess.run(base + args, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("no duplicate has a field 'likes'") == 1
    res = subprocess.run(base + ["-q"] + args, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0 and "likes" not in res.stderr
    rows[1]["likes"] = 3
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    res = subprocess.run(base + args, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0 and "likes" not in res.stderr
