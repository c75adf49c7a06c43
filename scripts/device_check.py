"""One-shot GPU check of the encoder (issue 15): bf16 = fp32, out-of-memory back-off, throughput,
a training step, the batching gain. One CUDA GPU, <= 8 minutes; one markdown table.

    PYTHONUNBUFFERED=1 python3 scripts/device_check.py --minutes 7   # GPU machine, from the repo root
    python scripts/device_check.py --dry-run                          # CPU, tiny models, < 60 s (CI)

Needs torch, transformers, peft, tokenizers, numpy and tqdm only: nothing from the network, no real
weights, and not lmdb, faiss or gguf (the encoder package imports none of them; the last table row
checks it). The timing model is SmolLM2-135M's architecture (SMOLLM2_135M below, as in the embedded
model's config.json) with random weights; the correctness models are the tiny random models of every
family in tests/tiny_models.py; the tokenizer is the small BPE of tests/tiny_models.py, and the texts
are synthetic tweets of its words (about tweet length in tokens). Were lmdb, faiss-cpu or gguf ever
needed there, they travel as wheels (see docs/benchmarks.md, "Encoder throughput").

Sections: environment; CUDA bf16 vs CPU fp32 (cosine >= 0.999; left and right padding; sdpa, eager,
and flash attention when flash_attn imports); the out-of-memory back-off for real (memory capped with
torch.cuda.set_per_process_memory_fraction, a batch that cannot fit; the Encoder must halve and go
on); a LoRA training step (AnglE loss); the encoder's own batching gain (16 texts per call vs 16
calls: the ceiling of serve's micro-batching); sentences/s at several token budgets over 100k texts
(last: it uses the time left). Each section is guarded: a failure is a FAIL row with its reason and
the next section still runs. With --out DIR (default $OUT) the table is also written to
DIR/device_check.md. Exit status 1 when any row FAILs.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import random
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "tests"):  # run from a bare checkout: the package need not be installed
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import numpy as np  # noqa: E402
import torch  # noqa: E402

SMOLLM2_135M = dict(
    hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=8192,
    rms_norm_eps=1e-5, rope_theta=100000.0, bos_token_id=1, eos_token_id=2, pad_token_id=2,
)
MIN_COSINE = 0.999
BATCH_GAIN_TARGET = 3.0
FAST = "bfloat16"  # the device dtype under test
TEXTS = ["a man is playing guitar", "the dog", "", "a woman plays piano!", "cat",
         "stock market crashed today and the news is bad for the city @user http www com"]


@dataclasses.dataclass
class Row:
    section: str
    check: str
    result: str
    status: str  # PASS, FAIL, INFO, SKIP


@dataclasses.dataclass
class Check:
    args: argparse.Namespace
    device: torch.device
    root: Path
    deadline: float
    rows: list[Row] = dataclasses.field(default_factory=list)
    big: Path | None = None  # the timing model's folder

    @property
    def dry(self) -> bool:
        return bool(self.args.dry_run)

    def add(self, section: str, check: str, result: str, status: str = "INFO") -> None:
        self.rows.append(Row(section, check, result, status))
        print(f"  {status:<4} {section} | {check} | {result}", flush=True)

    def left(self) -> float:
        return self.deadline - time.perf_counter()


# ----------------------------------------------------------------------------- models and texts
def synthetic_texts(n: int, seed: int = 0) -> list[str]:
    """Tweet-length texts: 12-24 words, about 28 tokens each with the prompt for the timing tokenizer."""
    from tiny_models import WORDS

    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(12, 24))) for _ in range(n)]


def timing_model(ck: Check) -> Path:
    """SmolLM2-135M's architecture with random weights (bf16 on disk); the tiny llama in a dry run."""
    from tiny_models import make_model_folder, make_tokenizer

    if ck.dry:
        return make_model_folder(ck.root, "llama")
    folder = ck.root / "smollm2-135m-random"
    if not (folder / "config.json").is_file():
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M))
        model.to(torch.bfloat16).save_pretrained(folder)
        make_tokenizer(folder, vocab_size=1000)  # whole words: real tweets' token counts
    return folder


def top_k(ck: Check) -> int:
    return 2 if ck.dry else 8  # the shipped adapter's k for the 135M model


def encoder(path: Path, device: str, dtype: str, **kw: Any):
    from bellm_search.encoder.encode import Encoder

    kw.setdefault("adapter", "none")
    return Encoder(model=str(path), device=device, dtype=dtype, **kw)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum(1).min())  # rows are L2-normalised


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- sections
def section_environment(ck: Check) -> None:
    import transformers

    ck.add("environment", "torch / transformers", f"{torch.__version__} / {transformers.__version__}")
    if ck.device.type == "cuda":
        props = torch.cuda.get_device_properties(ck.device)
        ck.add("environment", "device", f"{props.name}, {props.total_memory / 2**30:.0f} GiB, sm_{props.major}{props.minor}")
    else:
        ck.add("environment", "device", f"CPU ({torch.get_num_threads()} threads){', dry run' if ck.dry else ''}")
    flash = importlib.util.find_spec("flash_attn") is not None
    ck.add("environment", "flash_attn importable", "yes" if flash else "no (flash attention rows skipped)")


def attn_impls(ck: Check) -> list[str]:
    impls = ["sdpa"] if ck.dry else ["sdpa", "eager"]
    if ck.device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        impls.append("flash_attention_2")
    return impls


def section_bf16_equals_fp32(ck: Check) -> None:
    """Tiny models of every family: device bf16 vs CPU fp32, left/right padding, each attention."""
    from tiny_models import FAMILIES, make_model_folder

    families = FAMILIES[:2] if ck.dry else FAMILIES
    for family in families:
        path = make_model_folder(ck.root, family)
        worst, cases, reused = 1.0, [], 0
        for side in ("left", "right"):
            ref = encoder(path, "cpu", "float32", bidirectional_layers=2, padding_side=side,
                          reuse_prefix=False).encode(TEXTS)
            for impl in attn_impls(ck):
                enc = encoder(path, str(ck.device), FAST, bidirectional_layers=2, padding_side=side,
                              attn_implementation=impl)
                worst = min(worst, min_cosine(ref, enc.encode(TEXTS)))
                cases.append(f"{side}/{impl}")
                reused += _reuses_prefix(enc)
        ck.add("bf16 = fp32", f"tiny {family}, k=2: {', '.join(cases)} vs CPU fp32 full path",
               f"min cosine {worst:.5f}; prefix reuse on in {reused}/{len(cases)}",
               "PASS" if worst >= MIN_COSINE else "FAIL")
    _big_bf16_equals_fp32(ck)


def _big_bf16_equals_fp32(ck: Check) -> None:
    """The timing model (random weights): device bf16 vs CPU fp32, and a batch vs one text at a time."""
    k = top_k(ck)
    texts = synthetic_texts(48, seed=1) + TEXTS
    fast = encoder(ck.big, str(ck.device), FAST, bidirectional_layers=k)
    got = fast.encode(texts)
    ref = encoder(ck.big, "cpu", "float32", bidirectional_layers=k, reuse_prefix=False).encode(texts)
    ck.add("bf16 = fp32", "prompt-prefix reuse active on the device (passed its self-check)",
           "yes" if _reuses_prefix(fast) else "no: switched off (see the log)", "PASS" if _reuses_prefix(fast) else "FAIL")
    name = "tiny llama" if ck.dry else "SmolLM2-135M arch"
    cos = min_cosine(ref, got)
    ck.add("bf16 = fp32", f"{name} (random), k={k}, right padding", f"min cosine {cos:.5f}",
           "PASS" if cos >= MIN_COSINE else "FAIL")
    alone = np.stack([fast.encode([t])[0] for t in texts[:12]])
    cos = min_cosine(alone, got[:12])
    ck.add("bf16 = fp32", f"{name}: padded batch vs one text per call (bf16)", f"min cosine {cos:.5f}",
           "PASS" if cos >= MIN_COSINE else "FAIL")


def section_oom(ck: Check) -> None:
    """A batch that cannot fit: the Encoder must halve it and still return the same vectors."""
    texts = [" ".join(synthetic_texts(12, seed=i)) for i in range(128 if ck.dry else 1024)]  # ~220 tokens
    enc = encoder(ck.big, str(ck.device), FAST, bidirectional_layers=top_k(ck),
                  batch_size=len(texts), max_batch_tokens=10**9)
    ref = enc.encode(texts[:8])
    if ck.device.type == "cuda":
        got, note = _encode_capped(enc, texts, ck.device)
    else:
        got, note = _encode_simulated_oom(enc, texts)
    cos = min_cosine(ref, got[:8])
    ok = enc.max_batch < len(texts) and cos >= MIN_COSINE and got.shape[0] == len(texts)
    ck.add("OOM back-off", f"batch of {len(texts)} x ~{_mean_tokens(enc, texts):.0f} tokens {note}",
           f"finished; batch cap now {enc.max_batch}; min cosine vs uncapped {cos:.5f}", "PASS" if ok else "FAIL")


def _reuses_prefix(enc) -> bool:
    return bool(getattr(enc, "runners", None)) and enc.runners[0] is not None


def _mean_tokens(enc, texts: list[str]) -> float:
    return float(np.mean([len(x) for x in enc.tokenize(texts[:32])]))


def _encode_capped(enc, texts: list[str], device: torch.device) -> tuple[np.ndarray, str]:
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(device).total_memory
    cap = torch.cuda.memory_allocated(device) + 2**28  # the weights + 256 MiB
    torch.cuda.set_per_process_memory_fraction(cap / total, device)
    try:
        got = enc.encode(texts)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        torch.cuda.empty_cache()
    return got, f"(memory capped at {cap / 2**30:.2f} GiB)"


def _encode_simulated_oom(enc, texts: list[str]) -> tuple[np.ndarray, str]:
    """CPU memory cannot be capped: raise CUDA's OOM error for batches over 16 rows instead."""
    real = enc._embed

    def flaky(replica: int, batch: list[list[int]]) -> np.ndarray:
        if len(batch) > 16:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(replica, batch)

    enc._embed = flaky
    try:
        return enc.encode(texts), "(OOM simulated on CPU)"
    finally:
        del enc._embed


def section_training_step(ck: Check) -> None:
    """LoRA (r 16, every linear of the top 16 layers) fwd + AnglE loss + bwd + AdamW, batch of triples."""
    model, base, tok_ids, pad_id = _lora_model(ck)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batch = 8 if ck.dry else 32
    times = []
    for step in range(3 if ck.dry else 13):
        sync(ck.device)
        t = time.perf_counter()
        loss = _triple_loss(base, tok_ids, pad_id, batch, step, ck.device)
        loss.backward()
        loss = loss.detach()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(ck.device)
        times.append(time.perf_counter() - t)
    ms = 1000 * statistics.median(times[1:])
    ok = bool(torch.isfinite(loss))
    ck.add("training step", f"LoRA r16, top 16 layers trained, k={top_k(ck)}, {batch} triples (bf16 autocast)",
           f"{ms:.1f} ms/step (median of {len(times) - 1}), {batch / ms * 1000:.0f} triples/s, loss {loss.item():.3f}",
           "PASS" if ok else "FAIL")


def _lora_model(ck: Check):
    from peft import LoraConfig, get_peft_model

    from bellm_search.encoder.bidirectional import decoder_layers, make_bidirectional

    enc = encoder(ck.big, "cpu", "float32", bidirectional_layers=0)
    from bellm_search.encoder.loading import load_base_model

    base = load_base_model(str(ck.big), torch.float32, None)
    n = len(decoder_layers(base))
    trained = list(range(max(0, n - 16), n))
    lora = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                           "up_proj", "down_proj"],
                      layers_to_transform=trained, layers_pattern="layers")
    model = get_peft_model(base, lora)
    make_bidirectional(model.get_base_model(), top_k(ck))
    model.to(ck.device).train()
    tok_ids = enc.tokenize(synthetic_texts(3 * 64, seed=2))
    return model, model.get_base_model(), tok_ids, enc.pad_id


def _triple_loss(base, tok_ids: list[list[int]], pad_id: int, batch: int, step: int, device: torch.device):
    from bellm_search.encoder.encode import pad_batch
    from bellm_search.encoder.pooling import pool
    from bellm_search.training.loss import LossWeights, angle_objective

    start = (step * 3 * batch) % (len(tok_ids) - 3 * batch + 1)
    ids, mask = pad_batch(tok_ids[start:start + 3 * batch], pad_id, "right")
    ids, mask = ids.to(device), mask.to(device)
    dtype = torch.bfloat16
    with torch.autocast(device.type, dtype=dtype):
        hidden = base(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
        vecs = pool(hidden.last_hidden_state, mask, "last").float()
    a, p, n = vecs[:batch], vecs[batch:2 * batch], vecs[2 * batch:]
    loss, _ = angle_objective(a, p, n, None, LossWeights())
    return loss


def section_batching_gain(ck: Check) -> None:
    """16 texts in one call vs 16 calls of one text: the ceiling of serve's micro-batching."""
    enc = encoder(ck.big, str(ck.device), FAST, bidirectional_layers=top_k(ck))
    texts = synthetic_texts(16, seed=3)
    enc.encode(texts), enc.encode(texts[:1])  # warm-up
    rounds = 5 if ck.dry else 30
    t_batch, t_single = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        enc.encode(texts)
        t_batch.append(time.perf_counter() - t)
        t = time.perf_counter()
        for text in texts:
            enc.encode([text])
        t_single.append(time.perf_counter() - t)
    batch_s, single_s = statistics.median(t_batch), statistics.median(t_single)
    gain = single_s / batch_s
    status = "INFO" if ck.device.type != "cuda" else ("PASS" if gain >= BATCH_GAIN_TARGET else "FAIL")  # a GPU target
    ck.add("batching gain", f"16 texts/call vs 16 calls, k={top_k(ck)} (median of {rounds})",
           f"{16 / batch_s:.0f} vs {16 / single_s:.0f} sentences/s: {gain:.2f}x (target >= {BATCH_GAIN_TARGET:.0f}x)",
           status)


def section_throughput(ck: Check) -> None:
    """Sentences/s over n synthetic tweets at several token budgets, while time is left."""
    n = 1000 if ck.dry else ck.args.texts
    budgets = [1024, 4096] if ck.dry else [8192, 32768, 131072, 524288]
    texts = synthetic_texts(n, seed=4)
    enc = encoder(ck.big, str(ck.device), FAST, bidirectional_layers=top_k(ck), batch_size=n)
    t = time.perf_counter()
    tokens = sum(len(x) for x in enc.tokenize(texts))
    tok_s = time.perf_counter() - t
    ck.add("throughput", f"{n} synthetic tweets, k={top_k(ck)}, {enc.dtype}".replace("torch.", ""),
           f"{tokens / n:.1f} tokens/text; tokenising alone {n / tok_s:.0f} texts/s")
    enc.encode(texts[:256])  # warm-up
    flops = 2.0 * _linear_params(enc.replicas[0]) * tokens
    peak = _gemm_peak(ck.device)
    last, best = 0.0, (float("inf"), budgets[0])
    for budget in budgets:
        last = _timed_encode(ck, enc, texts, budget, last, tokens, flops, peak, "")
        best = min(best, (last, budget))
    if _reuses_prefix(enc):  # the full path (no prefix reuse) at the best budget, for the ratio
        enc.reuse_prefix = False
        full = _timed_encode(ck, enc, texts, best[1], best[0], tokens, flops, peak, " (full path, no prefix reuse)")
        if full:
            ck.add("throughput", f"prefix reuse speed-up at budget {best[1]}", f"{full / best[0]:.2f}x")


def _timed_encode(ck: Check, enc, texts: list[str], budget: int, last: float, tokens: int, flops: float,
                  peak: float, label: str) -> float:
    """One timed encode of every text at ``budget``; 0.0 (and a SKIP row) when time is short."""
    if ck.left() < 2 * last + 20:
        ck.add("throughput", f"token budget {budget}{label}", f"skipped: {ck.left():.0f} s left", "SKIP")
        return 0.0
    enc.max_tokens, enc.max_batch = budget, len(texts)
    sync(ck.device)
    t = time.perf_counter()
    enc.encode(texts)
    sync(ck.device)
    sec = time.perf_counter() - t
    ck.add("throughput", f"token budget {budget}{label}",
           f"{len(texts) / sec:.0f} sentences/s, {tokens / sec:.0f} tokens/s, linear layers at "
           f"{100 * flops / sec / peak:.1f} % of the {peak / 1e12:.1f} TFLOP/s GEMM peak measured here")
    return sec


def _linear_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()


def _gemm_peak(device: torch.device) -> float:
    size = 1024 if device.type == "cpu" else 8192
    a = torch.randn(size, size, dtype=torch.bfloat16, device=device)
    torch.mm(a, a)
    sync(device)
    reps = 3 if device.type == "cpu" else 10
    t = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, a)
    sync(device)
    return 2 * size**3 * reps / (time.perf_counter() - t)


def section_imports(ck: Check) -> None:
    loaded = [m for m in ("lmdb", "faiss", "gguf") if m in sys.modules]
    ck.add("environment", "lmdb / faiss / gguf imported", ", ".join(loaded) or "none (not needed)",
           "FAIL" if loaded else "PASS")


SECTIONS: list[tuple[str, Callable[[Check], None]]] = [
    ("environment", section_environment),
    ("bf16 = fp32", section_bf16_equals_fp32),
    ("OOM back-off", section_oom),
    ("training step", section_training_step),
    ("batching gain", section_batching_gain),
    ("throughput", section_throughput),
    ("environment", section_imports),
]


# ----------------------------------------------------------------------------- driver
def run_sections(ck: Check, sections=None) -> None:
    for name, fn in sections or SECTIONS:
        t = time.perf_counter()
        print(f"[{name}] {fn.__name__}", flush=True)
        try:
            if ck.big is None and fn is not section_environment:
                ck.big = timing_model(ck)
            fn(ck)
        except Exception as exc:  # one failure must not stop the other sections
            traceback.print_exc()
            ck.add(name, fn.__name__, f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}", "FAIL")
        print(f"[{name}] {time.perf_counter() - t:.1f} s", flush=True)


def table(rows: list[Row], header: str) -> str:
    lines = [header, "", "| section | check | result | status |", "|---|---|---|---|"]
    lines += [f"| {r.section} | {r.check} | {r.result.replace('|', '/')} | {r.status} |" for r in rows]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny models, < 60 s")
    ap.add_argument("--minutes", type=float, default=7.0, help="time budget; throughput uses what is left")
    ap.add_argument("--texts", type=int, default=100_000, help="texts for the throughput section")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="folder for device_check.md (default $OUT)")
    ap.add_argument("--device", default=None, help="default: cuda, or cpu with --dry-run")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None, sections=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    device = torch.device(args.device or ("cpu" if args.dry_run else "cuda"))
    threads = torch.get_num_threads()
    if args.dry_run:
        torch.set_num_threads(1)  # a correctness run: one thread stays fast on a loaded CI machine
    try:
        with tempfile.TemporaryDirectory(prefix="device-check-") as tmp:
            ck = Check(args, device, Path(tmp), start + 60 * args.minutes - 15)
            if device.type == "cuda" and not torch.cuda.is_available():
                ck.add("environment", "CUDA", "not available (use --dry-run on CPU)", "FAIL")
            else:
                run_sections(ck, sections)
    finally:
        torch.set_num_threads(threads)
    mode = "dry run (CPU, tiny models)" if args.dry_run else f"{device}"
    text = table(ck.rows, f"device_check: {mode}, {time.perf_counter() - start:.0f} s")
    print("\n" + text, flush=True)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "device_check.md").write_text(text, encoding="utf-8")
    return 1 if any(r.status == "FAIL" for r in ck.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
