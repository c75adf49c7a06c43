"""The command line: lazy imports, exit codes, error messages, and every command end to end."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from bellm_search.cli.main import main
from bellm_search.cli.options import collection_path
from bellm_search.errors import CollectionError


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_imports_no_heavy_library():
    code = (
        "import sys\n"
        "from bellm_search.cli.main import main\n"
        "for args in (['--help'], ['ingest', '--help'], ['query', '--help'], ['dedup', '--help'], ['eval', 'sts', '--help']):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('torch', 'faiss', 'transformers', 'lmdb', 'peft', 'numpy') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_usage_error_exits_2(capsys):
    code, _, err = run(capsys, "embed", "--no-such-option")
    assert code == 2 and "No such option" in err


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "a", "text": "a man is playing guitar", "lang": "en"}\n'
                    '{"id": "b", "text": 5}\n'
                    '{"id": "c", "text": "the dog", "lang": "fr"}\n'
                    '{"id": "d", "text": ""}\n', encoding="utf-8")
    return path


def test_embed_bad_line_names_file_and_line(capsys, corpus, tiny_llama, tmp_path):
    code, _, err = run(capsys, "embed", str(corpus), "-o", str(tmp_path / "v.npy"), "--model", str(tiny_llama), "--adapter", "none")
    assert code == 1 and f"{corpus}:2: field 'text' must be a string" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "v.npy").exists()


def test_embed_skip_invalid_and_order(capsys, corpus, tiny_llama, tmp_path):
    out = tmp_path / "v.npy"
    code, stdout, _ = run(capsys, "embed", str(corpus), "-o", str(out), "--model", str(tiny_llama),
                          "--adapter", "none", "--skip-invalid", "--dtype", "float32", "--json")
    assert code == 0
    summary = json.loads(stdout)
    assert (summary["rows"], summary["invalid_lines"]) == (3, 1)
    vecs = np.load(out)
    assert vecs.shape == (3, 64) and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
    from bellm_search.encoder.encode import Encoder

    enc = Encoder(model=str(tiny_llama), adapter="none", dtype="float32")
    assert np.abs(enc.encode(["the dog"])[0] - vecs[1]).max() < 1e-4


def test_embed_txt_and_invalid_utf8(capsys, tiny_llama, tmp_path):
    txt = tmp_path / "t.txt"
    txt.write_bytes(b"hello\n\xff\xfe bad\nworld\n")
    code, _, err = run(capsys, "embed", str(txt), "-o", str(tmp_path / "v.npy"), "--model", str(tiny_llama), "--adapter", "none")
    assert code == 1 and f"{txt}:2: invalid UTF-8" in err


def test_unknown_model_is_one_line(capsys, tmp_path):
    (tmp_path / "x.txt").write_text("hi\n")
    code, _, err = run(capsys, "embed", str(tmp_path / "x.txt"), "-o", str(tmp_path / "v.npy"),
                       "--model", str(tmp_path / "no-model"), "--adapter", "none")
    assert code == 1 and "--model" in err and len(err.strip().splitlines()) == 1


def test_collection_commands_end_to_end(capsys, corpus, tiny_llama, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = ["--model", str(tiny_llama), "--adapter", "none", "--dtype", "float32"]
    code, _, err = run(capsys, "ingest", str(corpus), *base)
    assert code == 1 and ":2:" in err and "the 1 records before this line are stored" in err
    code, out, _ = run(capsys, "ingest", str(corpus), "--skip-invalid", "--json", *base)
    stats = json.loads(out)  # a: stored by the first run; b: not text; d: empty
    assert code == 0 and (stats["added"], stats["skipped_known"], stats["invalid"], stats["documents"]) == (1, 1, 2, 2)
    code, out, _ = run(capsys, "ingest", str(corpus), "--skip-invalid", "--json")  # encoder from the manifest
    assert json.loads(out)["skipped_known"] == 2
    code, out, _ = run(capsys, "query", "a man is playing guitar", "-k", "2", "--json")
    hits = [json.loads(x) for x in out.splitlines()]
    assert code == 0 and hits[0]["id"] == "a" and hits[0]["metadata"] == {"lang": "en"}
    code, out, _ = run(capsys, "query", "guitar", "--where", "lang=fr", "--json")
    assert [json.loads(x)["id"] for x in out.splitlines()] == ["c"]
    code, out, _ = run(capsys, "info", "--json")
    assert json.loads(out)["documents"] == 2
    code, out, _ = run(capsys, "delete", "a", "zz", "--json")
    assert json.loads(out) == {"deleted": 1, "unknown": ["zz"]}
    code, out, _ = run(capsys, "query", "a man is playing guitar", "--json")
    assert "a" not in [json.loads(x)["id"] for x in out.splitlines()]
    code, out, _ = run(capsys, "reindex", "--factory", "Flat", "--json")
    assert code == 0 and json.loads(out)["ntotal"] == 1
    code, out, _ = run(capsys, "dedup", "--threshold", "0.999", "-o", "rm.txt", "--emit", "remove", "--json")
    assert code == 0 and json.loads(out)["documents"] == 1
    code, _, err = run(capsys, "ingest", str(corpus), "--skip-invalid", "--bidirectional-layers", "2", *base)
    assert code == 1 and "different encoder" in err


def test_dedup_one_shot_on_a_corpus(capsys, tiny_llama, tmp_path):
    corpus = tmp_path / "posts.jsonl"
    corpus.write_text("\n".join(json.dumps({"id": i, "text": t}) for i, t in enumerate(
        ["Big sale today http://t.co/1", "RT @shop: big sale today http://t.co/2", "something else"])) + "\n")
    out = tmp_path / "clusters.jsonl"
    code, stdout, _ = run(capsys, "dedup", str(corpus), "--normalize-social", "--threshold", "0.9999", "-o", str(out),
                          "--model", str(tiny_llama), "--adapter", "none", "--json")
    assert code == 0
    clusters = [json.loads(x) for x in out.read_text().splitlines()]
    assert clusters == [{"cluster": 0, "keep": "0", "members": ["0", "1"], "size": 2, "max_score": 1.0, "min_score": 1.0,
                         "weakest_link": {"id1": "0", "id2": "1", "score": 1.0}}]
    assert json.loads(stdout)["removed_exact"] == 1
    # no calibration fits the tiny model: the threshold is a cosine; without one it fails before ingesting
    assert json.loads(stdout)["score"] == "cosine"
    code, _, err = run(capsys, "dedup", str(corpus), "-c", str(tmp_path / "never"),
                       "--model", str(tiny_llama), "--adapter", "none")
    assert code == 1 and "--threshold" in err and "bellm-search calibrate" in err
    assert not (tmp_path / "never").exists()
    code, stdout, _ = run(capsys, "dedup", str(corpus), "--normalize-social", "--score", "cosine", "--threshold", "0.9999",
                          "--model", str(tiny_llama), "--adapter", "none", "--json")
    assert code == 0 and json.loads(stdout)["score"] == "cosine" and json.loads(stdout)["removed"] == 1


def test_collection_names_cannot_escape(tmp_path):
    assert str(collection_path("news")) == "indexes/news"
    assert collection_path(None).name == "default"
    for bad in ("..", "a b", "x;y"):
        with pytest.raises(CollectionError):
            collection_path(bad)
    assert collection_path(str(tmp_path / "c")) == tmp_path / "c"
