"""Text normalisation (plain and social-media), the exact-duplicate text hash, character
shingles and Jaccard. Pure stdlib."""
from __future__ import annotations

import hashlib
import html
import math
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from bellm_search.errors import ConfigError


# Social-media patterns (compiled constants, no state).
_RT_PREFIX = re.compile(r"^\s*RT\b\s*(?:@\w+)?\s*:?\s*")
_URL = re.compile(r"(?:https?://|www\.|pic\.twitter\.com/)\S+", re.IGNORECASE)
_VIA_TAIL = re.compile(r"[\s(\[-]*\bvia\s+@\w+[\s)\].]*$", re.IGNORECASE)
_MENTION = re.compile(r"(?<![\w@])@\w+:?")
_HASHTAG = re.compile(r"(?<![\w#])#(\w)")
_REPEATED_PUNCT = re.compile(r"([^\w\s])\1+")
_WHITESPACE = re.compile(r"\s+")


# --------------------------------------------------------------------------- normalisation

def normalize_text(text: str, social: bool = False) -> str:
    """Normalise text for exact-duplicate hashing and shingling.

    Always: Unicode NFKC, whitespace runs -> one space, strip.
    ``social=True`` also, in this order: HTML entities unescaped (``&amp;`` -> ``&``); leading
    retweet markers dropped (``RT``, ``RT:``, ``RT @user:``, repeated; upper-case ``RT`` only);
    URLs dropped (``http(s)://``, ``www.``, ``pic.twitter.com/``); a trailing ``via @user``
    (optionally in brackets) dropped; ``@mentions`` dropped (with a following ``:``; e-mail
    addresses kept); ``#`` removed from hashtags, their words kept; case-folded (a stronger
    lower-case); runs of one repeated punctuation or symbol character collapsed to one
    (``!!!`` -> ``!``, ``...`` -> ``.``, repeated emoji -> one); letters are never collapsed.
    """
    text = unicodedata.normalize("NFKC", text)
    if social:
        text = _social(text)
    return _WHITESPACE.sub(" ", text).strip()


def _social(text: str) -> str:
    text = unicodedata.normalize("NFKC", html.unescape(text))
    text = _strip_retweet(text)
    text = _URL.sub(" ", text)
    text = _VIA_TAIL.sub("", text)
    text = _MENTION.sub(" ", text)
    text = _HASHTAG.sub(r"\1", text)
    return _REPEATED_PUNCT.sub(r"\1", text.casefold())


def _strip_retweet(text: str) -> str:
    while True:
        stripped = _RT_PREFIX.sub("", text, count=1)
        if stripped == text:
            return text
        text = stripped


def text_hash(text: str, social: bool = False) -> bytes:
    """16-byte BLAKE2b digest of ``normalize_text(text, social)`` (UTF-8)."""
    data = normalize_text(text, social).encode("utf-8")
    return hashlib.blake2b(data, digest_size=16).digest()



def char_shingles(text: str, n: int = 5) -> set[str]:
    """Character n-grams of ``normalize_text(text, social=True)``. A text shorter than n is one
    shingle; a text that normalises to "" gives the empty set."""
    if n < 1:
        raise ValueError(f"shingle size must be >= 1, got {n}")
    norm = normalize_text(text, social=True)
    if len(norm) <= n:
        return {norm} if norm else set()
    return {norm[k:k + n] for k in range(len(norm) - n + 1)}

def jaccard(a: set, b: set) -> float:
    """|a & b| / |a | b|; two empty sets are identical (1.0)."""
    inter = len(a & b)
    union = len(a) + len(b) - inter
    return inter / union if union else 1.0

