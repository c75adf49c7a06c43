"""Training on a tiny random model: the cached top-layer path, resume after a crash, the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from bellm_search.cli.train import dev_scorer
from bellm_search.errors import ConfigError, CorpusError
from bellm_search.training import model as M
from bellm_search.training.data import micro_batch, negative_mask, plan_chunks, read_training_data
from bellm_search.training.loop import TrainConfig, train
from bellm_search.training.model import full_forward, lower_states, tokenize_texts, top_forward
from scripts_loader import load_script


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead
    yield
    torch.set_num_threads(old)


SENTENCES = [
    "the man is playing guitar", "a man plays the guitar", "the woman is riding a horse",
    "a dog is playing", "the cat is good", "the city news today", "the stock market crashed",
    "a child is riding a bike", "the sun and rain", "love is good", "hate is bad", "a man plays piano",
]


def write_triples(path: Path, n: int = 24) -> Path:
    rows = []
    for i in range(n):
        s = SENTENCES
        row = {"anchor": s[i % 12] + " " + s[(i * 5) % 12], "positive": s[i % 12]}
        if i % 3:
            row["negative"] = s[(i + 6) % 12]
        rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_dev(path: Path) -> Path:
    rows = [{"text1": SENTENCES[i], "text2": SENTENCES[(i * 7 + 1) % 12], "score": float(i % 5)} for i in range(12)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_cfg(tmp_path: Path, model: Path, **kw) -> TrainConfig:
    base = dict(data=str(write_triples(tmp_path / "data.jsonl")), output=str(tmp_path / "out"),
                model=str(model), bidirectional_layers=2, train_layers=3, max_steps=5, batch_size=6,
                dtype="float32", device="cpu", cache_root=str(tmp_path / "cache"), show_progress=False,
                lora_dropout=0.1, lr=1e-2)
    base.update(kw)
    return TrainConfig(**base)


def build_model(cfg: TrainConfig, device: torch.device, dtype: torch.dtype):
    from bellm_search.encoder.loading import resolve_model

    return M.build_model(resolve_model(cfg.model), dtype, device, bidirectional_layers=cfg.bidirectional_layers,
                         train_layers=cfg.train_layers, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                         lora_dropout=cfg.lora_dropout, lora_targets=cfg.lora_targets)


def randomise_lora(model: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


@pytest.mark.parametrize("pooling,k,n", [("last", 2, 3), ("mean", 2, 2), ("last", 0, 4), ("mean", 4, 4)])
def test_cached_top_layers_equal_the_full_model(tmp_path, tiny_llama, pooling, k, n):
    from bellm_search.encoder.loading import load_tokenizer

    cfg = tiny_cfg(tmp_path, tiny_llama, pooling=pooling, bidirectional_layers=k, train_layers=n)
    model, base, start = build_model(cfg, torch.device("cpu"), torch.float32)
    randomise_lora(model)
    model.eval()
    ids = tokenize_texts(load_tokenizer(str(tiny_llama), "right"), cfg.encoder_config(), SENTENCES)
    with torch.no_grad():
        full = full_forward(base, ids, 1, pooling)
        states = [s for i in range(0, 12, 5) for s in lower_states(base, start, ids[i:i + 5], 1)]
        cached = top_forward(base, start, states, pooling)
    assert start == 4 - n
    assert torch.allclose(cached, full, atol=1e-5), (cached - full).abs().max()


def test_k1_equals_causal_with_last_pooling(tmp_path, tiny_llama):
    from bellm_search.encoder.loading import load_tokenizer

    ids = tokenize_texts(load_tokenizer(str(tiny_llama), "right"), tiny_cfg(tmp_path, tiny_llama).encoder_config(), SENTENCES)
    out = {}
    for k in (0, 1, 2):
        torch.manual_seed(0)
        model, base, _ = build_model(tiny_cfg(tmp_path, tiny_llama, bidirectional_layers=k), torch.device("cpu"), torch.float32)
        randomise_lora(model)
        with torch.no_grad():
            out[k] = full_forward(base, ids, 1, "last")
    assert torch.allclose(out[0], out[1], atol=1e-5)
    assert not torch.allclose(out[0], out[2], atol=1e-3)  # k = 2 does change the pooled vector


def test_training_writes_an_adapter_the_encoder_loads(tmp_path, tiny_llama):
    from bellm_search.encoder import Encoder
    from bellm_search.eval.datasets import read_sts
    from bellm_search.eval.sts import sts_score

    dev = write_dev(tmp_path / "dev.jsonl")
    out = train(tiny_cfg(tmp_path, tiny_llama, dev=str(dev), lora_dropout=0.0), dev_scorer(dev, []))
    meta = json.loads((out / "bellm_adapter.json").read_text())
    assert meta["bidirectional_layers"] == 2 and meta["pooling"] == "last"
    assert meta["training"]["steps"] == 5 and meta["training"]["seed"] == 42
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors", "bellm_adapter.json"]
    enc = Encoder(model=str(tiny_llama), adapter=str(out), device="cpu", dtype="float32")
    assert enc.config.bidirectional_layers == 2
    # the cached training path and the merged inference encoder give the same dev score
    assert sts_score(read_sts(dev), enc) == pytest.approx(meta["training"]["dev_spearman"], abs=0.02)
    bare = Encoder(model=str(tiny_llama), adapter="none", bidirectional_layers=2, device="cpu", dtype="float32")
    assert not np.allclose(enc.encode(SENTENCES[:3]), bare.encode(SENTENCES[:3]), atol=1e-4)


def lora_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


@pytest.mark.parametrize("train_layers", [3, None])
def test_resume_after_crash_matches_an_uninterrupted_run(tmp_path, tiny_llama, train_layers):
    whole = train(tiny_cfg(tmp_path, tiny_llama, output=str(tmp_path / "whole"), train_layers=train_layers,
                           checkpoint_every=2, max_steps=6))
    cfg = tiny_cfg(tmp_path, tiny_llama, output=str(tmp_path / "broken"), train_layers=train_layers,
                   checkpoint_every=2, max_steps=6, crash_after_step=3)
    with pytest.raises(RuntimeError, match="injected crash after step 3"):
        train(cfg)
    ckpt = torch.load(tmp_path / "broken" / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 2 and not (tmp_path / "broken" / "adapter_config.json").exists()
    with pytest.raises(ConfigError, match="--resume"):
        train(tiny_cfg(tmp_path, tiny_llama, output=str(tmp_path / "broken"), train_layers=train_layers))
    cfg.crash_after_step, cfg.resume = None, True
    resumed = train(cfg)
    a, b = lora_weights(whole), lora_weights(resumed)
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        assert torch.equal(a[key], b[key]), key
    hist = json.loads((resumed / "bellm_adapter.json").read_text())["training"]
    assert hist["final_loss"] == json.loads((whole / "bellm_adapter.json").read_text())["training"]["final_loss"]


def test_a_run_over_a_subset_of_cached_texts_reuses_that_cache(tmp_path, tiny_llama):
    dev = write_dev(tmp_path / "dev.jsonl")
    shared = tmp_path / "shared-cache"
    train(tiny_cfg(tmp_path, tiny_llama, output=str(tmp_path / "big"), cache_root=str(shared), dev=str(dev)),
          dev_scorer(dev, []))  # caches the training texts and the dev texts
    assert len(list(shared.glob("lower-*.pt"))) == 1 and len(list(shared.glob("lower-*.index.npz"))) == 1
    reused = train(tiny_cfg(tmp_path, tiny_llama, output=str(tmp_path / "sub"), cache_root=str(shared)))
    assert len(list(shared.glob("lower-*.pt"))) == 1  # no second cache: a view of the first
    fresh = train(tiny_cfg(tmp_path, tiny_llama, output=str(tmp_path / "fresh"), cache_root=str(tmp_path / "own")))
    assert len(list((tmp_path / "own").glob("lower-*.pt"))) == 1
    a, b = lora_weights(reused), lora_weights(fresh)
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    other_layer = tiny_cfg(tmp_path, tiny_llama, output=str(tmp_path / "k4"), cache_root=str(shared), train_layers=2)
    train(other_layer)  # another first layer: the index must not match, a new cache is built
    assert len(list(shared.glob("lower-*.pt"))) == 2


def test_mine_negatives_script_adds_a_mined_copy_of_rows(tmp_path, tiny_llama, monkeypatch):
    monkeypatch.setenv("BELLM_CACHE", str(tmp_path / "cache"))  # the script's lower-layer cache

    out = train(tiny_cfg(tmp_path, tiny_llama, lora_dropout=0.0))
    mod = load_script("mine_negatives")
    data = tmp_path / "data.jsonl"
    mined = tmp_path / "mined.jsonl"
    mod.main(["--adapter", str(out), "--data", str(data), "--out", str(mined), "--model", str(tiny_llama),
              "--margin", "2.0"])  # margin 2: every nearest non-positive text qualifies
    rows_in = [json.loads(x) for x in data.read_text().splitlines()]
    rows = [json.loads(x) for x in mined.read_text().splitlines()]
    labelled = sum("negative" in r for r in rows_in)
    assert len(rows) == labelled + len(rows_in)  # each row once with its mined negative, labelled ones twice
    for r in rows:
        assert r["negative"] not in (r["anchor"], r["positive"])


def test_mining_with_the_dev_sets_leaves_a_cache_the_training_run_reuses(tmp_path, tiny_llama, monkeypatch):
    from bellm_search.cli.train import dev_scorer

    monkeypatch.setenv("BELLM_CACHE", str(tmp_path / "cache"))
    out = train(tiny_cfg(tmp_path, tiny_llama, lora_dropout=0.0, output=str(tmp_path / "first")))
    pairs = tmp_path / "dev_pairs.jsonl"  # texts the training data does not hold
    pairs.write_text("".join(json.dumps({"text1": f"dev text {i}", "text2": f"other dev text {i}", "label": i % 2})
                             + "\n" for i in range(6)))
    mod = load_script("mine_negatives")
    mined = tmp_path / "mined.jsonl"
    mod.main(["--adapter", str(out), "--data", str(tmp_path / "data.jsonl"), "--out", str(mined),
              "--model", str(tiny_llama), "--margin", "2.0", "--dev-pairs", str(pairs)])
    caches = sorted((tmp_path / "cache" / "train-cache").glob("lower-*.pt"))  # the script's cache
    assert len(caches) == 1
    train(tiny_cfg(tmp_path, tiny_llama, data=str(mined), cache_root=str(caches[0].parent), max_steps=1,
                   dtype="auto", device="auto", lora_dropout=0.0,  # as the script ran
                   output=str(tmp_path / "second")), dev=dev_scorer(None, [pairs]))
    assert sorted(caches[0].parent.glob("lower-*.pt")) == caches  # reused, none built


def test_resume_refuses_other_settings(tmp_path, tiny_llama):
    cfg = tiny_cfg(tmp_path, tiny_llama, checkpoint_every=1, crash_after_step=1)
    with pytest.raises(RuntimeError):
        train(cfg)
    with pytest.raises(ConfigError, match="lr"):
        train(tiny_cfg(tmp_path, tiny_llama, resume=True, lr=1e-3))


def test_lower_layers_are_frozen_and_not_lora(tmp_path, tiny_llama):
    model, _, start = build_model(tiny_cfg(tmp_path, tiny_llama, train_layers=2), torch.device("cpu"), torch.float32)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {int(n.split("layers.")[1].split(".")[0]) for n in trainable} == {2, 3}


def test_read_training_data_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"anchor": "a", "positive": "b"}\n{"anchor": "a"}\n')
    with pytest.raises(CorpusError, match="bad.jsonl:2"):
        read_training_data(bad)
    bad.write_text('{"anchor": "a", "positive": "b"}\n{"text1": "a", "text2": "b", "score": 1}\n')
    with pytest.raises(CorpusError, match=":2: a scored row"):
        read_training_data(bad)
    ok = tmp_path / "ok.jsonl"
    ok.write_text('{"anchor": "a", "positive": "b", "negative": "c"}\n{"anchor": "a", "positive": "d"}\n')
    d = read_training_data(ok)
    assert d.texts == ["a", "b", "c", "d"] and d.negative.tolist() == [2, -1] and d.gold is None


def test_negative_mask_by_hand():
    a, p, n = np.array([0, 0, 5]), np.array([1, 2, 6]), np.array([3, -1, 1])
    m = negative_mask(a, p, n).numpy()
    assert m[:, :3].tolist() == [[True, False, True], [False, True, True], [True, True, True]]
    # negatives: column 1 missing; row 0's positive (text 1) is row 2's negative -> masked for row 0
    assert m[:, 3:].tolist() == [[True, False, False], [True, False, True], [True, False, True]]


def test_micro_batches_are_deterministic_epochs():
    first = np.concatenate([micro_batch(10, 3, 7, m) for m in range(3)])
    assert len(set(first.tolist())) == 9  # one epoch: 3 batches, no repeats, the tail dropped
    assert np.array_equal(micro_batch(10, 3, 7, 4), micro_batch(10, 3, 7, 4))
    assert not np.array_equal(micro_batch(10, 3, 7, 0), micro_batch(10, 3, 7, 3))


def test_config_validation(tmp_path):
    with pytest.raises(ConfigError, match="train_layers"):
        TrainConfig(data="x", output="y", bidirectional_layers=4, train_layers=2)
    with pytest.raises(ConfigError, match="batch-size"):
        TrainConfig(data="x", output="y", batch_size=1)


def cli_app() -> typer.Typer:
    from bellm_search.cli.train import eval_sts_command, train_command

    app = typer.Typer()
    eval_app = typer.Typer()
    app.command("train")(train_command)
    app.add_typer(eval_app, name="eval")
    eval_app.command("sts")(eval_sts_command)
    return app


def test_cli_train_and_eval_sts(tmp_path, tiny_llama, monkeypatch):
    monkeypatch.setenv("BELLM_CACHE", str(tmp_path / "cache"))
    data, dev = write_triples(tmp_path / "d.jsonl"), write_dev(tmp_path / "dev.jsonl")
    out = tmp_path / "ad"
    runner = CliRunner()
    res = runner.invoke(cli_app(), ["train", "--data", str(data), "--output", str(out), "--model", str(tiny_llama),
                                    "--bidirectional-layers", "2", "--train-layers", "2", "--max-steps", "3",
                                    "--batch-size", "6", "--lora-r", "4", "--lora-targets", "q_proj,v_proj",
                                    "--dtype", "float32", "--dev", str(dev), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 3 and summary["dev_spearman"] is not None
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and sorted(cfg["target_modules"]) == ["q_proj", "v_proj"]
    res = runner.invoke(cli_app(), ["eval", "sts", str(dev), "--model", str(tiny_llama), "--adapter", str(out),
                                    "--dtype", "float32", "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert result["pairs"] == 12 and result["bidirectional_layers"] == 2
    assert result["spearman"] == pytest.approx(summary["dev_spearman"], abs=0.02)


def test_cli_errors_are_bellm_errors(tmp_path, tiny_llama):
    from bellm_search.errors import BellmError

    res = CliRunner().invoke(cli_app(), ["eval", "sts", str(tmp_path / "missing.tsv"), "--model", str(tiny_llama)])
    assert res.exit_code != 0 and isinstance(res.exception, BellmError)
    res = CliRunner().invoke(cli_app(), ["train", "--data", str(tmp_path / "none.jsonl"), "--output", str(tmp_path / "o"),
                                         "--model", str(tiny_llama)])
    assert isinstance(res.exception, ConfigError)


def test_resume_with_fewer_steps_exports_the_checkpoint(tmp_path, tiny_llama):
    cfg = tiny_cfg(tmp_path, tiny_llama, checkpoint_every=1, crash_after_step=3, max_steps=10)
    with pytest.raises(RuntimeError):
        train(cfg)
    out = train(tiny_cfg(tmp_path, tiny_llama, resume=True, max_steps=3))
    assert json.loads((out / "bellm_adapter.json").read_text())["training"]["steps"] == 3
    assert not (out / "checkpoint.pt").exists()


def test_dev_every_keeps_the_best_adapter(tmp_path, tiny_llama):
    from bellm_search.encoder import Encoder
    from bellm_search.eval.datasets import read_sts
    from bellm_search.eval.sts import sts_score

    dev = write_dev(tmp_path / "dev.jsonl")
    out = train(tiny_cfg(tmp_path, tiny_llama, dev=str(dev), dev_every=2, max_steps=6, lora_dropout=0.0),
                dev_scorer(dev, []))
    hist = json.loads((out / "bellm_adapter.json").read_text())["training"]["dev_history"]
    assert [s for s, _ in hist] == [2, 4, 6]  # steps 2 and 4 during training, 6 at the end
    best_meta = json.loads((out / "best" / "bellm_adapter.json").read_text())["training"]
    best_step, best_score = max(hist[:2], key=lambda x: x[1])
    assert best_meta["steps"] == best_step and best_meta["dev_spearman"] == best_score
    enc = Encoder(model=str(tiny_llama), adapter=str(out / "best"), device="cpu", dtype="float32")
    assert sts_score(read_sts(dev), enc) == pytest.approx(best_score, abs=0.02)
    with pytest.raises(ConfigError, match="--dev-every"):
        train(tiny_cfg(tmp_path, tiny_llama, dev_every=2, output=str(tmp_path / "o2")))


def write_device_data(root: Path) -> Path:
    """The layout scripts/prepare_data.py writes, with tiny made-up rows."""
    (root / "dev").mkdir(parents=True)
    for name in ("nli", "twitter_url", "twitter_url_strict"):
        write_triples(root / f"{name}.jsonl")
    write_dev(root / "dev" / "stsb.jsonl")
    for i, name in enumerate(("twitter_url_calibration", "pit2015", "mrpc_train")):
        rows = [{"text1": SENTENCES[j], "text2": SENTENCES[(j * (i + 2) + 1) % 12], "label": int(j % 3 == 0)}
                for j in range(12)]
        (root / "dev" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_device_train_dry_run_writes_rows_and_a_loadable_adapter(tmp_path):
    import subprocess
    import sys

    from bellm_search.encoder import Encoder
    from bellm_search.eval.datasets import read_sts
    from bellm_search.eval.sts import sts_score

    data, out = write_device_data(tmp_path / "data"), tmp_path / "out"
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, str(root / "scripts" / "device_train.py"), "--dry-run", "--data", str(data),
                          "--out", str(out), "--work", str(tmp_path / "work"), "--minutes", "3"],
                         capture_output=True, text=True, timeout=300)  # the budget drops rows on a loaded machine
    assert res.returncode == 0, res.stderr[-3000:]
    rows = {r["name"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert {"ref", "top16", "mined", "full-top8"} <= rows.keys() and any(n.startswith("final (") for n in rows)
    assert all(rows[n]["steps_done"] == 3 and "sts" in rows[n]["metrics"] for n in ("ref", "top16", "mined", "full-top8"))
    assert "final (full-top8)" not in rows  # no adapter to ship from a fully fine-tuned row
    assert rows["ref"]["mining"]["mined"] > 0 and "| top16 |" in (out / "results.md").read_text()
    final = next(r for n, r in rows.items() if n.startswith("final"))
    adapter = out / "adapter"
    meta = json.loads((adapter / "bellm_adapter.json").read_text())
    assert meta["base_model"] == str(tmp_path / "work" / "tiny-llama") and meta["training"]["dev_metrics"] == final["metrics"]
    enc = Encoder(model=meta["base_model"], adapter=str(adapter), device="cpu", dtype="float32")
    assert sts_score(read_sts(data / "dev" / "stsb.jsonl"), enc) == pytest.approx(final["metrics"]["sts"], abs=0.02)


def test_plan_chunks_buckets_by_length():
    lengths = np.array([10, 30, 12, 29, 11, 100])
    sets = lambda chunks: [sorted(lengths[c].tolist()) for c in chunks]  # noqa: E731
    assert sets(plan_chunks(lengths, 10_000, 1.3)) == [[100], [29, 30], [10, 11, 12]]
    assert sets(plan_chunks(lengths, 10_000, 1e9)) == [[10, 11, 12, 29, 30, 100]]
    assert sets(plan_chunks(lengths, 90, 1e9)) == [[100], [12, 29, 30], [10, 11]]  # rows x longest <= 90
    assert sorted(np.concatenate(plan_chunks(lengths, 50, 1.0)).tolist()) == list(range(6))


@pytest.mark.parametrize("train_layers", [3, None])
def test_bucketed_embeddings_equal_one_batch_in_input_order(tmp_path, tiny_llama, train_layers):
    from bellm_search.training.loop import prepare_run

    run = prepare_run(tiny_cfg(tmp_path, tiny_llama, train_layers=train_layers, pad_slack=1.0, lora_dropout=0.0))
    randomise_lora(run.model)
    run.model.eval()
    texts = np.arange(len(run.data.texts))
    with torch.no_grad():
        bucketed = run.embed(texts)
        if run.cache is not None:  # reference: one batch in input order, no chunking
            reference = top_forward(run.base, run.start, [run.cache[t] for t in texts], "last")
        else:
            reference = full_forward(run.base, [run.ids[t] for t in texts], run.pad_id, "last")
    assert len(plan_chunks(np.array([len(run.ids[t]) for t in texts]), run.cfg.max_batch_tokens, 1.0)) > 3
    assert torch.allclose(bucketed, reference, atol=1e-5), (bucketed - reference).abs().max()


def test_dev_pairs_ap_matches_the_eval_path_on_the_saved_adapter(tmp_path, tiny_llama):
    from bellm_search.encoder import Encoder
    from bellm_search.eval.datasets import read_pairs
    from bellm_search.eval.metrics import average_precision
    from bellm_search.eval.cosines import pair_cosines

    data = write_device_data(tmp_path / "data")
    dev, pairs = data / "dev" / "stsb.jsonl", data / "dev" / "pit2015.jsonl"
    out = train(tiny_cfg(tmp_path, tiny_llama, dev=str(dev), lora_dropout=0.0), dev_scorer(dev, [pairs]))
    meta = json.loads((out / "bellm_adapter.json").read_text())["training"]
    metrics = meta["dev_metrics"]
    assert meta["dev_key"] == "mean" and set(metrics) == {"sts", "ap:pit2015.jsonl", "ap_mean", "mean"}
    assert metrics["mean"] == pytest.approx((metrics["sts"] + metrics["ap_mean"]) / 2, abs=0.01)
    enc = Encoder(model=str(tiny_llama), adapter=str(out), device="cpu", dtype="float32")
    labelled = read_pairs(pairs)
    ap = 100 * average_precision(pair_cosines(labelled, enc), [p.label for p in labelled])
    assert metrics["ap:pit2015.jsonl"] == pytest.approx(ap, abs=0.02)


def test_full_layers_train_the_top_layers_themselves(tmp_path, tiny_llama):
    from bellm_search.encoder.loading import resolve_model

    cfg = tiny_cfg(tmp_path, tiny_llama, train_layers=2)
    model, base, start = M.build_model(resolve_model(cfg.model), torch.bfloat16, torch.device("cpu"),
                                       bidirectional_layers=2, train_layers=2, lora_r=4, lora_alpha=8,
                                       lora_dropout=0.0, lora_targets=("q_proj",), full=True)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert model is base and start == 2 and not any("lora_" in n for n in trainable)
    assert {int(n.split("layers.")[1].split(".")[0]) for n in trainable} == {2, 3}
    assert all(p.dtype == torch.float32 for p in trainable.values())
    assert base.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="no adapter"):
        train(tiny_cfg(tmp_path, tiny_llama, train_layers=2, full_layers=True))


def test_init_adapter_starts_from_its_lora_weights_and_refuses_another_layout(tmp_path, tiny_llama):
    from bellm_search.training.loop import prepare_run

    first = train(tiny_cfg(tmp_path, tiny_llama, output=str(tmp_path / "first"), max_steps=2))
    run = prepare_run(tiny_cfg(tmp_path, tiny_llama, output=str(tmp_path / "second"), init_adapter=str(first)))
    saved = lora_weights(first)
    params = {k: p for k, p in run.model.named_parameters() if "lora_" in k}
    assert len(params) == len(saved) > 0
    for name, p in params.items():  # peft names the saved tensors without the adapter name
        assert torch.equal(p.detach(), saved[name.replace(".default", "")]), name
    with pytest.raises(ConfigError, match="does not match"):
        prepare_run(tiny_cfg(tmp_path, tiny_llama, output=str(tmp_path / "third"), train_layers=2, init_adapter=str(first)))
    # LoRA on more layers than the adapter covers: its layers get its weights, the others start at B = 0
    wider = prepare_run(tiny_cfg(tmp_path, tiny_llama, output=str(tmp_path / "wide"), train_layers=4, init_adapter=str(first)))
    params = {k.replace(".default", ""): p for k, p in wider.model.named_parameters() if "lora_" in k}
    assert len(params) > len(saved)
    for name, p in params.items():
        if name in saved:
            assert torch.equal(p.detach(), saved[name]), name
        elif "lora_B" in name:
            assert not p.detach().any(), name
