"""Tiny random-weight causal LMs built from configs, saved like real hub checkpoints."""
from __future__ import annotations

from pathlib import Path

import torch

WORDS = (
    "the a man woman child dog cat is are was playing plays guitar piano riding horse bike "
    "stock market crashed today sun rain city news post tweet retweet love hate good bad "
    "representative word for sentence representative: \" . , ! ? @user http www com"
).split()
FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "gemma3_text")


def make_tokenizer(folder: Path, vocab_size: int = 300) -> None:
    """A byte-level BPE trained on WORDS; vocab_size 300 splits words, ~1000 keeps each word whole."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))]
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(folder)


def make_config(family: str, layers: int = 4):
    from transformers import AutoConfig

    common = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  bos_token_id=0, eos_token_id=1, tie_word_embeddings=True)
    if family == "gemma3_text":
        common.update(head_dim=16, sliding_window=64, layer_types=None)
    if family in ("qwen3",):
        common.update(head_dim=16)
    return AutoConfig.for_model(family, **common)


def make_model_folder(root: Path, family: str, layers: int = 4, seed: int = 0) -> Path:
    """A folder with a random-weight ``*ForCausalLM`` checkpoint and a small BPE tokenizer."""
    from transformers import AutoModelForCausalLM

    folder = root / (f"tiny-{family}" if layers == 4 else f"tiny-{family}-{layers}l")
    if (folder / "config.json").is_file():
        return folder
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(make_config(family, layers))
    model.save_pretrained(folder)
    make_tokenizer(folder)
    return folder
