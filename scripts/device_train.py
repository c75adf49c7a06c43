"""One time-boxed GPU session: an ablation grid of BeLLM training settings, then the best one longer.

Every row trains from the same seed for the same number of steps and is scored on the dev sets
(STS-B dev Spearman x 100; AP x 100 of cosine on the Twitter-URL calibration slice, PIT-2015 dev
and MRPC train, and their mean); models are chosen on the mean of STS-B dev and the AP mean. The
table is rewritten after every row, so a run cut short still leaves its rows. The best row's
setting is then trained longer with dev scoring along the way and its best adapter is saved
(peft files + bellm_adapter.json, the package's adapter format).

Time: ``--minutes`` bounds the whole run. A speed probe of the reference row sets the steps per
row so that the grid fits ~60 % of the time left after set-up; rows that would not fit are
skipped; the final run gets what is left and stops at its deadline (keeping the best adapter).

    python scripts/device_train.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf --data runs/device/pack.tar.xz \
        --out "$OUT" --minutes 7
    python scripts/device_train.py --dry-run --data DIR --out /tmp/dry     # CPU, tiny model, < 60 s

``--data``: a folder laid out as scripts/prepare_data.py writes it (nli.jsonl, twitter_url.jsonl,
twitter_url_strict.jsonl, dev/*.jsonl) or a .tar.xz of one (scripts/pack_device_data.sh).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
import tarfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

log = logging.getLogger("device_train")
DEV_PAIRS = ("dev/twitter_url_calibration.jsonl", "dev/pit2015.jsonl", "dev/mrpc_train.jsonl")
DEV_STS = "dev/stsb.jsonl"
DATA_FILES = {"nli": "nli.jsonl", "tw": "twitter_url.jsonl", "tw_strict": "twitter_url_strict.jsonl"}
SLACKS = (1e9, 2.0)  # one padded chunk per step, or length buckets: probed on the GPU
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "bellm_adapter.json")


@dataclass
class Row:
    """One grid row: overrides of the reference setting (LoRA on all layers, k = 8, NLI + Twitter-URL)."""

    name: str
    data: str = "nli,tw"  # keys of DATA_FILES, or "mined" (nli,tw with negatives mined by the reference model)
    train_layers: int | None = None  # None = LoRA on every layer
    k: int = 8
    batch: int = 64
    seed: int = 42
    full: bool = False  # train the top train_layers layers themselves (no adapter: never the final run)
    lr: float | None = None  # None = --lr
    note: str = ""


DRY_ROWS = ["ref", "top16", "mined", "full-top8"]
DEFAULT_ROWS = ["ref", "nli-only", "top16", "mined", "k4", "k0", "tw-strict", "ref-seed2", "full-top8"]  # + batch128, k12
GRID = [  # priority order: rows that do not fit the time are dropped from the end
    Row("ref", note="reference: LoRA all layers, k 8, NLI + Twitter-URL"),
    Row("nli-only", data="nli", note="data: NLI only"),
    Row("top16", train_layers=16, note="LoRA on the top 16 layers only (the shipped scheme)"),
    Row("mined", data="mined", note="+ hard negatives mined by the ref model"),
    Row("k4", k=4, note="k = 4 bidirectional layers"),
    Row("k0", k=0, note="causal (k = 0)"),
    Row("tw-strict", data="nli,tw_strict", note="Twitter-URL without calibration texts (leak check)"),
    Row("batch128", batch=128, note="128 rows per step (more in-batch negatives)"),
    Row("ref-seed2", seed=2, note="reference, second seed"),
    Row("k12", k=12, note="k = 12 bidirectional layers"),
    Row("full-top8", train_layers=8, full=True, lr=2e-5, note="full fine-tuning of the top 8 layers, lr 2e-5 (no adapter)"),
]


# ----------------------------------------------------------------------------- time
@dataclass
class Clock:
    deadline: float  # time.time() by which everything must be written

    def left(self) -> float:
        return self.deadline - time.time()


# ----------------------------------------------------------------------------- set-up
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", type=Path, help="the embedded model's GGUF file (converted as encoder.loading does)")
    ap.add_argument("--model", help="the embedded model already converted (a save_pretrained folder) instead of --gguf")
    ap.add_argument("--data", type=Path, required=True, help="prepared data folder or its .tar.xz")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs/device/out")))
    ap.add_argument("--work", type=Path, default=Path("/tmp/bellm-device"), help="scratch folder (models, rows)")
    ap.add_argument("--minutes", type=float, default=7.0, help="wall-clock limit of the whole run")
    ap.add_argument("--grid-share", type=float, default=0.6, help="share of the time after set-up for the grid")
    ap.add_argument("--rows", default="", help="comma-separated row names, run in GRID order (default: DEFAULT_ROWS)")
    ap.add_argument("--max-row-steps", type=int, default=1200)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--dry-run", action="store_true",
                    help="CPU, 3 steps per row on the first 40 rows of each file; a tiny random model unless --gguf/--model")
    return ap.parse_args(argv)


def setup_logging(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(name)s %(message)s", "%H:%M:%S")
    for handler in (logging.StreamHandler(sys.stderr), logging.FileHandler(out / "log.txt", mode="w")):
        handler.setFormatter(fmt)
        logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)


def prepare_model(args: argparse.Namespace) -> str | None:
    """The TrainConfig.model value: None = the embedded model, converted from --gguf exactly as
    encoder.loading.prepare_embedded does (into --work/cache); else a model folder."""
    if args.dry_run and not args.model and not args.gguf:
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny_models import make_model_folder

        return str(make_model_folder(args.work, "llama", layers=4))
    from bellm_search.encoder import loading

    os.environ["BELLM_CACHE"] = str(args.work / "cache")
    if args.model:  # an already converted embedded model: put it where the package looks
        dest = loading.embedded_model_dir()
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            dest.symlink_to(Path(args.model).resolve())
        return None
    if not args.gguf or not args.gguf.is_file():
        raise SystemExit(f"--gguf {args.gguf}: no such file (or pass --model FOLDER)")
    loading.embedded_gguf = lambda: args.gguf.resolve()  # the file the package would have found
    t0 = time.time()
    folder = loading.prepare_embedded()
    log.info("converted %s -> %s in %.0f s", args.gguf, folder, time.time() - t0)
    return None


def unpack_data(path: Path, work: Path) -> Path:
    if path.is_dir():
        return path
    dest = work / "data"
    shutil.rmtree(dest, ignore_errors=True)
    with tarfile.open(path, "r:*") as tar:
        try:
            tar.extractall(dest, filter="data")
        except TypeError:  # a Python without extraction filters: the pack is our own file
            tar.extractall(dest)
    return dest


def trim_data(data: Path, work: Path, rows: int) -> Path:
    """Dry run: the first ``rows`` lines of every file (same layout)."""
    dest = work / "data-trimmed"
    for src in sorted(data.rglob("*.jsonl")):
        target = dest / src.relative_to(data)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("".join(src.read_text(encoding="utf-8").splitlines(keepends=True)[:rows]), encoding="utf-8")
    return dest


def memoize_tokenizer() -> None:
    """Every row re-tokenises the same texts: keep the ids (keyed by prompt and length limit)."""
    from bellm_search.training import loop

    original, memo = loop.tokenize_texts, {}

    def cached(tokenizer: Any, config: Any, texts: list[str]) -> list[list[int]]:
        table = memo.setdefault((config.resolved_prompt, config.max_length, id(tokenizer.__class__)), {})
        missing = [t for t in dict.fromkeys(texts) if t not in table]
        if missing:
            table.update(zip(missing, original(tokenizer, config, missing)))
        return [table[t] for t in texts]

    loop.tokenize_texts = cached


# ----------------------------------------------------------------------------- context and rows
@dataclass
class Ctx:
    args: argparse.Namespace
    model: str | None
    data: Path
    n_layers: int
    device: str
    dtype: str
    dev: Any  # training.loop.DevScorer
    clock: Clock
    results: "Results"
    slack: float = 2.0  # pad_slack of every row (probe_speed picks the faster on a GPU)
    mined: Path | None = None
    probe: dict[str, float] = field(default_factory=dict)


def scaled(row: Row, n_layers: int) -> tuple[int, int | None]:
    """(k, train_layers) for a model of ``n_layers`` (the rows are written for 30 layers)."""
    if n_layers == 30:
        return row.k, row.train_layers
    k = round(row.k * n_layers / 30)
    return k, None if row.train_layers is None else max(k, 1, round(row.train_layers * n_layers / 30))


def row_config(ctx: Ctx, row: Row, steps: int, output: Path, dev_every: int | None = None) -> Any:
    from bellm_search.training.loop import TrainConfig

    if row.data == "mined":
        if ctx.mined is None:
            raise RuntimeError("no mined data: the ref row did not finish")
        data = str(ctx.mined)
    else:
        data = ",".join(str(ctx.data / DATA_FILES[key]) for key in row.data.split(","))
    k, train_layers = scaled(row, ctx.n_layers)
    gpu = ctx.device.startswith("cuda")
    batch = row.batch if not ctx.args.dry_run else row.batch // 8
    return TrainConfig(data=data, output=str(output), model=ctx.model, bidirectional_layers=k,
                       train_layers=train_layers, cache_lower=False, full_layers=row.full, batch_size=batch,
                       max_steps=steps, lr=row.lr or ctx.args.lr, seed=row.seed, dev=",".join([DEV_STS, *DEV_PAIRS]),
                       dev_every=dev_every, device=ctx.device, dtype=ctx.dtype,
                       max_batch_tokens=32768 if gpu else 4096, pad_slack=ctx.slack, show_progress=False,
                       checkpoint_every=10**9)


def sync(ctx: Ctx) -> None:
    if ctx.device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def train_steps(ctx: Ctx, run: Any, steps: int, deadline: float, dev_every: int | None = None) -> dict[str, Any]:
    """Up to ``steps`` optimizer steps, stopping at ``deadline``; with ``dev_every``, dev is scored
    along the way and the best adapter kept under <output>/best."""
    from bellm_search.training.loop import make_optimizer, one_step, periodic_dev

    opt, sched = make_optimizer(run, steps)
    times, history, elapsed = [], [], 0.0
    for step in range(steps):
        if time.time() > deadline:
            break
        t = time.time()
        history.append(one_step(run, opt, sched, step))  # float(loss): a device sync
        times.append(time.time() - t)
        elapsed += times[-1]
        if dev_every and (step + 1) % dev_every == 0 and step + 1 < steps:
            periodic_dev(run, step + 1, elapsed, history)
    sync(ctx)
    timed = times[2:] or times
    return {"steps_done": len(times), "s_per_step": float(np.median(timed)) if timed else None,
            "train_s": round(elapsed, 1), "final_loss": float(np.mean(history[-20:])) if history else None,
            "history": history, "elapsed": elapsed}


def train_row(ctx: Ctx, row: Row, steps: int, deadline: float) -> tuple[dict[str, Any], Any]:
    from bellm_search.training.loop import prepare_run

    t0 = time.time()
    run = prepare_run(row_config(ctx, row, steps, ctx.args.work / "rows" / row.name), ctx.dev)
    prep = time.time() - t0
    stats = train_steps(ctx, run, steps, deadline)
    t1 = time.time()
    metrics = run.dev_metrics()
    record = {**dataclasses.asdict(row), "batch": run.cfg.batch_size, "steps": steps, "steps_done": stats["steps_done"],
              "truncated": stats["steps_done"] < steps, "s_per_step": stats["s_per_step"],
              "train_s": stats["train_s"], "prepare_s": round(prep, 1), "eval_s": round(time.time() - t1, 1),
              "final_loss": stats["final_loss"], "rows": len(run.data), "metrics": metrics}
    return record, run


# ----------------------------------------------------------------------------- results
COLUMNS = ("sts", "ap:twitter_url_calibration.jsonl", "ap:pit2015.jsonl", "ap:mrpc_train.jsonl", "ap_mean", "mean")


class Results:
    """Rows so far, rewritten as results.json and results.md after every row."""

    def __init__(self, out: Path, meta: dict[str, Any]) -> None:
        self.out, self.meta, self.rows = out, meta, []

    def add(self, record: dict[str, Any]) -> None:
        self.rows.append(record)
        self.write()

    def write(self) -> None:
        data = {"meta": self.meta, "rows": self.rows}
        (self.out / "results.json").write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
        (self.out / "results.md").write_text(self.markdown(), encoding="utf-8")

    def markdown(self) -> str:
        head = ("| row | data | LoRA layers | k | batch | seed | steps | s/step | STS-B dev | AP cal | AP PIT | "
                "AP MRPC | AP mean | mean | note |")
        lines = [head, "|" + "---|" * (head.count("|") - 1)]
        for r in self.rows:
            m = r.get("metrics") or {}
            scores = " | ".join(f"{m[c]:.2f}" if c in m else "-" for c in COLUMNS)
            steps = f"{r.get('steps_done', '-')}" + ("" if not r.get("truncated") else f" of {r['steps']} (time)")
            sps = f"{r['s_per_step']:.3f}" if r.get("s_per_step") else "-"
            layers = "all" if r.get("train_layers") is None else f"top {r['train_layers']}"
            lines.append(f"| {r['name']} | {r.get('data', '-')} | {layers} | {r.get('k', '-')} | {r.get('batch', '-')} | "
                         f"{r.get('seed', '-')} | {steps} | {sps} | {scores} | {r.get('note', '')}{r.get('error', '')} |")
        return "\n".join(lines) + "\n\n" + "\n".join(f"- {k}: {v}" for k, v in self.meta.items()) + "\n"


# ----------------------------------------------------------------------------- probe, baseline, final
def probe_speed(ctx: Ctx) -> dict[str, float]:
    """Seconds per step of the reference row for each candidate pad_slack (2 warm-up steps, then
    timed ones; the faster slack is kept for every row: the slack changes how a step is cut into
    forward chunks, not what it computes), and the per-row overhead (set-up + one dev scoring)."""
    from bellm_search.training.loop import prepare_run

    t0 = time.time()
    run = prepare_run(row_config(ctx, GRID[0], 1000, ctx.args.work / "rows" / "probe"), ctx.dev)
    prep = time.time() - t0
    speeds = {}
    for slack in SLACKS if ctx.device.startswith("cuda") else (ctx.slack,):
        run.cfg.pad_slack = slack
        speeds[slack] = train_steps(ctx, run, 3 if ctx.args.dry_run else 8, time.time() + 60)["s_per_step"]
    ctx.slack = min(speeds, key=speeds.get)
    t1 = time.time()
    run.dev_metrics()
    probe = {"s_per_step": speeds[ctx.slack], "prepare_s": prep, "eval_s": time.time() - t1, "pad_slack": ctx.slack}
    free(run)
    log.info("probe: %s (s/step by pad_slack: %s)", {k: round(v, 3) for k, v in probe.items()}, speeds)
    return probe


def free(run: Any) -> None:
    import gc

    import torch

    del run
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def shipped_baseline(ctx: Ctx) -> dict[str, Any]:
    """The shipped default adapter on the same dev sets (inference path)."""
    from bellm_search.encoder import Encoder
    from bellm_search.encoder.resolve import default_adapter_dir

    t0 = time.time()
    enc = Encoder(adapter=str(default_adapter_dir()), device=ctx.device, dtype=ctx.dtype)
    metrics = ctx.dev.score(enc.encode(ctx.dev.texts))
    meta = json.loads((default_adapter_dir() / "bellm_adapter.json").read_text(encoding="utf-8"))
    del enc
    return {"name": "shipped", "data": "nli", "train_layers": 16, "k": meta["bidirectional_layers"], "batch": 32,
            "seed": 42, "steps_done": meta.get("training", {}).get("steps"), "metrics": metrics,
            "eval_s": round(time.time() - t0, 1), "note": "the shipped default adapter (inference path)"}


def final_run(ctx: Ctx, best: dict[str, Any], row_steps: int) -> dict[str, Any]:
    """The best row's setting, as many steps as the time left allows (at least the row's), dev
    scored ~6 times; the best adapter goes to OUT/adapter."""
    from bellm_search.training.loop import prepare_run, save_adapter

    row = next(r for r in GRID if r.name == best["name"])
    reserve = 20 + 2 * ctx.probe["eval_s"]
    budget = ctx.clock.left() - reserve - ctx.probe["prepare_s"] - 6 * ctx.probe["eval_s"]
    steps = row_steps if ctx.args.dry_run else max(row_steps, int(budget * 0.85 / best["s_per_step"]))
    dev_every = max(1, steps // 6)
    out = ctx.args.work / "final"
    shutil.rmtree(out, ignore_errors=True)
    run = prepare_run(row_config(ctx, row, steps, out, dev_every), ctx.dev)
    stats = train_steps(ctx, run, steps, ctx.clock.deadline - reserve, dev_every)
    metrics = run.dev_metrics()
    key = ctx.dev.key
    if metrics[key] > max((s for _, s in run.dev_history), default=float("-inf")):
        run.dev_history.append([stats["steps_done"], round(metrics[key], 2)])
        save_adapter(run, stats["steps_done"], stats["elapsed"], 0.0, metrics, stats["history"], out / "best")
    chosen = json.loads((out / "best" / "bellm_adapter.json").read_text(encoding="utf-8"))["training"]
    dest = ctx.args.out / "adapter"
    dest.mkdir(parents=True, exist_ok=True)
    for name in ADAPTER_FILES:
        shutil.copy2(out / "best" / name, dest / name)
    return {**dataclasses.asdict(row), "name": f"final ({row.name})", "steps": steps,
            "steps_done": chosen["steps"], "truncated": False, "s_per_step": stats["s_per_step"],
            "train_s": stats["train_s"], "metrics": chosen["dev_metrics"], "dev_history": run.dev_history,
            "note": f"best of {len(run.dev_history)} dev scorings over {stats['steps_done']} of {steps} planned steps"}


# ----------------------------------------------------------------------------- main
def plan_rows(ctx: Ctx, rows: list[Row]) -> tuple[int, float, float]:
    """(steps per row, time per row, grid deadline) from the probe and the time left."""
    grid_budget = ctx.clock.left() * ctx.args.grid_share
    per_row = grid_budget / max(1, len(rows) + 1)  # + 1: the shipped-adapter row and mining
    overhead = ctx.probe["prepare_s"] + ctx.probe["eval_s"]
    steps = int((per_row - overhead) / ctx.probe["s_per_step"])
    steps = 3 if ctx.args.dry_run else min(ctx.args.max_row_steps, max(20, steps))
    return steps, per_row, time.time() + grid_budget


def run_grid(ctx: Ctx, rows: list[Row]) -> int:
    ctx.probe = probe_speed(ctx)
    steps, per_row, grid_deadline = plan_rows(ctx, rows)
    ctx.results.meta.update(steps_per_row=steps, probe={k: round(v, 3) for k, v in ctx.probe.items()})
    log.info("grid: %d rows x %d steps, %.0f s per row", len(rows), steps, per_row)
    if ctx.n_layers == 30:  # the embedded model: the shipped adapter fits it
        guarded(ctx, "shipped", lambda: ctx.results.add(shipped_baseline(ctx)))
    for row in rows:
        est = ctx.probe["prepare_s"] + ctx.probe["eval_s"] + steps * ctx.probe["s_per_step"] * row.batch / 64
        if time.time() + est > grid_deadline + 0.25 * per_row:
            ctx.results.add({**dataclasses.asdict(row), "steps": steps, "note": row.note + " (skipped: no time left)"})
            continue
        guarded(ctx, row.name, lambda: one_row(ctx, row, steps, min(time.time() + 2 * est, grid_deadline + per_row)))
    return steps


def one_row(ctx: Ctx, row: Row, steps: int, deadline: float) -> None:
    record, run = train_row(ctx, row, steps, deadline)
    if row.name == "ref":
        ctx.mined = ctx.args.work / "mined.jsonl"
        from bellm_search.training.mining import mine_negatives

        record["mining"] = mine_negatives(run, ctx.mined)
    free(run)
    log.info("row %s: %s", row.name, record["metrics"])
    ctx.results.add(record)


def guarded(ctx: Ctx, name: str, fn: Any) -> None:
    """Run one piece; a failure is logged and recorded as a row, and the run goes on."""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - one row must not end the session
        log.error("%s failed:\n%s", name, traceback.format_exc())
        ctx.results.add({"name": name, "error": f" ERROR {type(exc).__name__}: {str(exc)[:200]}"})


def best_row(ctx: Ctx) -> dict[str, Any] | None:
    names = {r.name for r in GRID if not r.full}  # a fully fine-tuned row has no adapter to ship
    done = [r for r in ctx.results.rows if r.get("name") in names and r.get("metrics") and r.get("s_per_step")
            and not r.get("truncated")]
    return max(done, key=lambda r: r["metrics"][ctx.dev.key], default=None)


def make_ctx(args: argparse.Namespace, clock: Clock) -> Ctx:
    import torch

    from bellm_search.cli.train import dev_scorer
    from bellm_search.encoder.loading import resolve_model

    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    if args.dry_run:
        torch.set_num_threads(1)
    torch.backends.cuda.matmul.allow_tf32 = True
    model = prepare_model(args)
    data = unpack_data(args.data, args.work)
    if args.dry_run:
        data = trim_data(data, args.work, 40)
    config = json.loads((Path(resolve_model(model)) / "config.json").read_text(encoding="utf-8"))
    dev = dev_scorer(data / DEV_STS, [data / p for p in DEV_PAIRS])
    meta = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "minutes": args.minutes, "device": device,
            "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None, "torch": torch.__version__,
            "model": model or f"embedded ({'--model ' + args.model if args.model else 'converted from --gguf'})",
            "layers": config["num_hidden_layers"], "pad_slack_candidates": SLACKS if device == "cuda" else None,
            "lr": args.lr, "dev_key": dev.key, "dev_texts": len(dev.texts)}
    return Ctx(args, model, data, config["num_hidden_layers"], device, "float32" if args.dry_run else "auto",
               dev, clock, Results(args.out, meta))


def watchdog(ctx: Ctx, seconds: float) -> None:
    """Whatever hangs, the process ends ``seconds`` from now with the rows written so far."""
    import signal

    def stop(signum: int, frame: Any) -> None:
        ctx.results.meta["stopped"] = "watchdog: past --minutes"
        ctx.results.write()
        log.error("watchdog: past --minutes, exiting")
        os._exit(3)

    signal.signal(signal.SIGALRM, stop)
    signal.alarm(int(seconds))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    clock = Clock(time.time() + args.minutes * 60 - 10)
    args.work.mkdir(parents=True, exist_ok=True)
    setup_logging(args.out)
    memoize_tokenizer()
    ctx = make_ctx(args, clock)
    ctx.results.write()
    watchdog(ctx, clock.left() + 40)
    wanted = [x for x in args.rows.split(",") if x] or (DRY_ROWS if args.dry_run else DEFAULT_ROWS)
    rows = [r for r in GRID if not wanted or r.name in wanted]
    steps = run_grid(ctx, rows)
    best = best_row(ctx)
    if best is None:
        log.error("no row finished: no final run")
        return 1
    guarded(ctx, "final", lambda: ctx.results.add(final_run(ctx, best, steps)))
    ctx.results.meta["wall_s"] = round(time.time() - (clock.deadline + 10 - args.minutes * 60), 1)
    ctx.results.write()
    log.info("done in %.0f s; results in %s", ctx.results.meta["wall_s"], args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
