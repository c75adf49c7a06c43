"""Embed the TweetEval tweets once and cache the vectors for the index and dedup benchmarks.

    python scripts/embed_tweets.py real  [--limit N]   # the default encoder, resumable, chunk by chunk
    python scripts/embed_tweets.py proxy               # all 155k: mean of the model's input embeddings

`real` writes .cache/tweets_real/chunk_*.npy (2,000 tweets each; a re-run continues where it
stopped) and assembles .cache/tweets_vecs.npy from the chunks done. On this 2-core CPU the
encoder does roughly 10-20 tweets/s, so all 155k tweets take hours: `proxy` gives 576-dim
vectors of every tweet in seconds (bag of input-token embeddings of the same model, so copies
and light edits of a tweet stay close) for timing the dedup at full scale, clearly labelled.
"""
from __future__ import annotations

import argparse
import glob
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "tweeteval"
CACHE = ROOT / ".cache"
CHUNK = 2000


def tweets() -> list[str]:
    """All TweetEval tweets (every task and split), in a fixed order, copies kept."""
    texts: list[str] = []
    for path in sorted(glob.glob(str(DATA / "**" / "*_text.txt"), recursive=True)):
        texts += [line.rstrip("\n") for line in open(path, encoding="utf-8") if line.strip()]
    return texts


def real(limit: int | None) -> None:
    from bellm_search.encoder.encode import Encoder

    texts = tweets()[:limit]
    out = CACHE / "tweets_real"
    out.mkdir(parents=True, exist_ok=True)
    encoder = None
    for start in range(0, len(texts), CHUNK):
        file = out / f"chunk_{start // CHUNK:05d}.npy"
        if file.exists():
            continue
        encoder = encoder or Encoder()
        np.save(out / "tmp.npy", encoder.encode(texts[start:start + CHUNK]))
        (out / "tmp.npy").replace(file)
        print(f"{start + CHUNK} / {len(texts)}", flush=True)
    assemble()


def assemble() -> None:
    chunks = sorted((CACHE / "tweets_real").glob("chunk_*.npy"))
    done = []
    for i, f in enumerate(chunks):  # only a contiguous prefix counts
        if f.name != f"chunk_{i:05d}.npy":
            break
        done.append(np.load(f))
    if done:
        vecs = np.concatenate(done)
        np.save(CACHE / "tweets_vecs.npy", vecs)
        print(f"{CACHE / 'tweets_vecs.npy'}: {vecs.shape[0]} real tweet vectors")


def proxy() -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    from bellm_search.encoder.loading import prepare_embedded

    path = prepare_embedded()
    tok = AutoTokenizer.from_pretrained(path)
    emb = AutoModel.from_pretrained(path, dtype=torch.float32).get_input_embeddings().weight.detach().numpy()
    texts = tweets()
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    vecs = np.stack([emb[x].mean(0) if x else emb[0] for x in ids]).astype(np.float32)
    vecs -= vecs.mean(0)  # centre: raw token-embedding means all point one way
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    CACHE.mkdir(exist_ok=True)
    np.save(CACHE / "tweets_proxy_vecs.npy", vecs)
    print(f"{CACHE / 'tweets_proxy_vecs.npy'}: {vecs.shape}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["real", "proxy", "assemble"])
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    {"real": lambda: real(args.limit), "proxy": proxy, "assemble": assemble}[args.mode]()


if __name__ == "__main__":
    main()
