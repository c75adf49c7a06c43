"""Security: nothing is ever unpickled, collection names cannot escape indexes/, and the JSON files
a collection or an adapter carries (manifest.json, bellm_adapter.json, adapter_config.json) are
validated before use: a corrupt or hostile one gives a clear error, never a crash.
(Server auth and limits: tests/test_server.py.)
"""
from __future__ import annotations

import ast
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bellm_search.cli.main import main
from bellm_search.cli.options import collection_path
from bellm_search.collection.core import MANIFEST, Collection
from bellm_search.errors import BellmError, CollectionError
from fakes import FakeEncoder

ROOT = Path(__file__).parent.parent
PACKAGE = ROOT / "bellm_search"
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def run_cli(capsys, *args: str) -> tuple[int, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    return code, capsys.readouterr().err


# ----------------------------------------------------------------------------- no unpickling
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal", "jsonpickle"}


def is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_calls(source: str, name: str = "<source>") -> list[str]:
    """Every place in ``source`` that could unpickle (or run) data: imports of pickle-like modules,
    torch.load without weights_only=True, np.load with allow_pickle=True, yaml.load, pandas.read_pickle,
    eval/exec, trust_remote_code=True."""
    found = []
    for node in ast.walk(ast.parse(source)):
        where = f"{name}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            found.append(f"{where}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            func = ast.unparse(node.func)
            kw = {k.arg: k.value for k in node.keywords}
            if func.endswith("torch.load") or func == "torch_load":
                if not is_true(kw.get("weights_only")):
                    found.append(f"{where}: {func} without weights_only=True")
            elif func in ("np.load", "numpy.load") and "allow_pickle" in kw and not (
                    isinstance(kw["allow_pickle"], ast.Constant) and kw["allow_pickle"].value is False):
                found.append(f"{where}: {func} with allow_pickle")
            elif func in ("yaml.load", "yaml.unsafe_load", "pd.read_pickle", "pandas.read_pickle", "eval", "exec"):
                found.append(f"{where}: {func}(...)")
            if "trust_remote_code" in kw and not (isinstance(kw["trust_remote_code"], ast.Constant)
                                                  and kw["trust_remote_code"].value is False):
                found.append(f"{where}: {func} with trust_remote_code")
    return found


def test_the_checker_finds_every_unsafe_pattern():
    bad = ("import pickle\nfrom joblib import load\nimport numpy as np, torch, yaml\n"
           "torch.load(p)\ntorch.load(p, weights_only=False)\nnp.load(p, allow_pickle=True)\nnp.load(p, allow_pickle=flag)\n"
           "yaml.load(s)\neval(s)\nAutoModel.from_pretrained(p, trust_remote_code=True)\n")
    assert len(unsafe_calls(bad)) == 9
    good = "import numpy as np, torch\ntorch.load(p, map_location='cpu', weights_only=True)\nnp.load(p)\nnp.load(p, allow_pickle=False)\n"
    assert unsafe_calls(good) == []


def test_the_package_and_scripts_never_unpickle():
    files = sorted(PACKAGE.rglob("*.py")) + sorted((ROOT / "scripts").glob("*.py"))
    assert len(files) > 20
    found = [hit for f in files for hit in unsafe_calls(f.read_text(encoding="utf-8"), str(f.relative_to(ROOT)))]
    assert found == []


class Boom:
    """Unpickling this creates ``marker``: proof that a file was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickled_embedding_shard_is_refused_without_unpickling(tmp_path, capsys):
    pytest.importorskip("pyarrow")
    from bellm_search.distributed import shards
    from bellm_search.collection.manifest import encoder_record

    texts = ["one", "two"]
    root = tmp_path / "shards"
    emb, _ = shards.write_shard(root, 0, shards.ShardRows(FakeEncoder().encode(texts), ["a", "b"], texts, ["{}", "{}"],
                                                          ["c.jsonl"] * 2, np.array([1, 2])))
    shards.write_config(root, {"encoder": encoder_record(FakeEncoder().config), "dim": 16, "rows": 2, "shards": 1})
    marker = tmp_path / "unpickled"
    with open(emb, "wb") as fh:  # a hostile shard: an object array whose unpickling creates the marker
        np.save(fh, np.array([Boom(marker), Boom(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(BellmError, match="0000.npy"):
        shards.read_vectors(emb)
    code, err = run_cli(capsys, "ingest", "--from-embeddings", str(root), "-c", str(tmp_path / "coll"))
    assert not marker.exists()
    assert code == 1 and "Traceback" not in err and err.startswith("error: ") and "0000.npy" in err, err


def test_a_pickled_torch_file_is_refused_without_unpickling(tmp_path):
    torch = pytest.importorskip("torch")
    from bellm_search.training.loop import StateCache

    marker = tmp_path / "unpickled"
    path = tmp_path / "evil.pt"
    torch.save({"flat": Boom(marker), "lengths": torch.zeros(1)}, path)  # a torch file whose loading would run open()
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        StateCache.load(path)
    assert not marker.exists()


# ----------------------------------------------------------------------------- collection names
@settings(FUZZ, max_examples=300)
@given(name=(st.sampled_from(["..", ".", "...", "a..b", "..\\x", "x\x00", "indexes", "-", "~user"])
             | st.text(st.sampled_from("./\\~-_aZ09é \x00"), min_size=1, max_size=8) | st.text(min_size=1, max_size=20))
       .filter(lambda s: "/" not in s and not s.startswith("~")))
def test_a_bare_collection_name_stays_one_folder_under_indexes(name):
    try:
        path = collection_path(name)
    except CollectionError:
        return
    assert path.parent == Path("indexes") and path.name == name and name not in (".", "..")
    assert (Path.cwd() / path).resolve().parent == (Path.cwd() / "indexes").resolve()


@pytest.mark.parametrize("name", ["..", ".", "a\\..\\b", "x\x00y", "new\nline", " lead", "é"])
def test_names_that_could_escape_or_confuse_are_refused(name):
    with pytest.raises(CollectionError, match="collection name"):
        collection_path(name)


def test_slash_means_a_path_used_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert collection_path("../elsewhere") == Path("../elsewhere")
    assert collection_path(str(tmp_path / "abs")) == tmp_path / "abs"
    assert collection_path("~/c") == Path.home() / "c"
    assert collection_path("sub/dir") == Path("sub/dir")


def test_a_name_that_is_a_symlink_is_refused_by_the_cli_and_the_env_var(tmp_path, monkeypatch, capsys):
    outside = tmp_path / "outside"
    Collection.create(outside, encoder=FakeEncoder()).close()
    work = tmp_path / "work"
    (work / "indexes").mkdir(parents=True)
    (work / "indexes" / "evil").symlink_to(outside, target_is_directory=True)
    monkeypatch.chdir(work)
    code, err = run_cli(capsys, "info", "-c", "evil")
    assert code == 1 and "symbolic link" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setenv("BELLM_COLLECTION", "evil")
    code, err = run_cli(capsys, "info")
    assert code == 1 and "symbolic link" in err
    monkeypatch.setenv("BELLM_COLLECTION", "..")
    code, err = run_cli(capsys, "info")
    assert code == 1 and "collection name '..'" in err
    code, err = run_cli(capsys, "info", "-c", str(outside), "--json")  # as a path: the user means it
    assert code == 0, err


# ----------------------------------------------------------------------------- manifest.json
@pytest.fixture(scope="module")
def collection_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("manifest") / "coll"
    with Collection.create(path, encoder=FakeEncoder()) as coll:
        coll.ingest([{"id": f"d{i}", "text": f"post {i}"} for i in range(30)])
    return path


ANY = st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12),
                   lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=8)
TRICKY = st.sampled_from([-1, 0, 1, 2**64, 1.5, True, "", "none", "default", "IVF4,Flat", "garbage,,", "../../etc",
                          "/dev/zero", [], {}, None, "𝔘"])


@st.composite
def mutated_manifests(draw, original: dict) -> bytes:
    data = json.loads(json.dumps(original))
    kind = draw(st.sampled_from(["top", "nested", "nested", "drop", "whole", "bytes"]))
    if kind == "whole":
        return json.dumps(draw(ANY)).encode()
    if kind == "bytes":
        raw = json.dumps(original).encode()
        return raw[:draw(st.integers(0, len(raw)))] + draw(st.binary(max_size=8))
    if kind == "top":
        data[draw(st.sampled_from(sorted(data)))] = draw(ANY | TRICKY)
    elif kind == "drop":
        section = draw(st.sampled_from(["encoder", "index_config", "index", None]))
        target = data if section is None else data[section]
        if target:
            del target[draw(st.sampled_from(sorted(target)))]
    else:
        section = draw(st.sampled_from(["encoder", "index_config", "index"]))
        keys = sorted(data[section]) + ["unexpected"]
        for key in draw(st.lists(st.sampled_from(keys), min_size=1, max_size=3, unique=True)):
            data[section][key] = draw(TRICKY | ANY)
    return json.dumps(data).encode()


@settings(FUZZ, max_examples=150)
@given(data=st.data())
def test_a_corrupt_or_hostile_manifest_gives_a_clear_error(collection_dir, tmp_path, data):
    original = json.loads((collection_dir / MANIFEST).read_text())
    work = tmp_path / "c"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(collection_dir, work)
    (work / MANIFEST).write_bytes(data.draw(mutated_manifests(original)))
    try:
        with Collection.open(work, readonly=True) as coll:
            coll.info()
            coll.check()
            coll.query_vectors(FakeEncoder().encode(["post 3"]), k=3)
    except BellmError:
        pass  # a clear, one-line error (what the CLI prints)


def test_cli_reports_a_broken_manifest_on_one_line(collection_dir, tmp_path, capsys):
    work = tmp_path / "c"
    shutil.copytree(collection_dir, work)
    for broken in (b"[1, 2]", b'{"format_version": 1, "encoder": 5, "index_config": {}, "dim": 16, "index": {}}',
                   b"\xff\xfe", json.dumps({**json.loads((collection_dir / MANIFEST).read_text()), "dim": 17}).encode()):
        (work / MANIFEST).write_bytes(broken)
        code, err = run_cli(capsys, "info", "-c", str(work))
        assert code == 1 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, (broken, err)
        assert str(work) in err


# ----------------------------------------------------------------------------- adapter JSON files
PEFT_CONFIG = {"peft_type": "LORA", "base_model_name_or_path": "some/model", "r": 4, "lora_alpha": 8,
               "target_modules": ["q_proj"]}
BELLM_JSON = {"format": 1, "base_model": "smollm2-135m-instruct", "bidirectional_layers": 4, "pooling": "last",
              "prompt": 'The representative word for sentence {text} is:"', "max_length": 512, "padding_side": "right"}


@st.composite
def mutated_adapters(draw) -> tuple[bytes, bytes]:
    def mutate(original: dict) -> bytes:
        data = dict(original)
        kind = draw(st.sampled_from(["keep", "field", "field", "whole", "bytes"]))
        if kind == "whole":
            return json.dumps(draw(ANY)).encode()
        if kind == "bytes":
            raw = json.dumps(original).encode()
            return raw[:draw(st.integers(0, len(raw)))] + draw(st.binary(max_size=8))
        if kind == "field":
            for key in draw(st.lists(st.sampled_from(sorted(data) + ["extra"]), min_size=1, max_size=3, unique=True)):
                data[key] = draw(TRICKY | ANY)
        return json.dumps(data).encode()

    return mutate(PEFT_CONFIG), mutate(BELLM_JSON)


@settings(FUZZ, max_examples=200)
@given(files=mutated_adapters())
def test_a_corrupt_or_hostile_adapter_json_gives_a_clear_error(tmp_path, files):
    from bellm_search.config import EncoderConfig
    from bellm_search.encoder.resolve import resolve_config

    folder = tmp_path / "adapter"
    folder.mkdir(exist_ok=True)
    (folder / "adapter_config.json").write_bytes(files[0])
    (folder / "bellm_adapter.json").write_bytes(files[1])
    try:
        config = resolve_config(adapter=str(folder))
    except BellmError:
        return
    assert isinstance(config, EncoderConfig)
    assert config.model is None or isinstance(config.model, str)
    assert isinstance(config.bidirectional_layers, int) and isinstance(config.max_length, int)
    assert isinstance(config.resolved_prompt, str) and "{text}" in config.resolved_prompt
    config.identity()


def test_cli_reports_a_broken_adapter_on_one_line(tmp_path, capsys):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps(PEFT_CONFIG))
    (folder / "bellm_adapter.json").write_text(json.dumps({**BELLM_JSON, "bidirectional_layers": "four"}))
    (tmp_path / "x.txt").write_text("a post\n")
    code, err = run_cli(capsys, "embed", str(tmp_path / "x.txt"), "-o", str(tmp_path / "v.npy"), "--adapter", str(folder))
    assert code == 1 and err.startswith("error: ") and "bidirectional_layers" in err and len(err.strip().splitlines()) == 1, err
