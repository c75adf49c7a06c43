"""Keep policies: which member of a duplicate cluster survives."""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from bellm_search.errors import ConfigError
from bellm_search.corpus import SEEN

KEEP_POLICIES = ("first", "longest", "shortest")  # plus "field:NAME", see parse_keep


# --------------------------------------------------------------------------- keep policies

def parse_keep(policy: str) -> tuple[str, str | None]:
    """Validate a keep policy: ``first``, ``longest``, ``shortest`` or ``field:NAME``."""
    text = policy.strip() if isinstance(policy, str) else ""
    if text in KEEP_POLICIES:
        return text, None
    if text.startswith("field:") and text[len("field:"):].strip():
        return "field", text[len("field:"):].strip()
    raise ConfigError(
        f"unknown keep policy {policy!r}: use 'first' (smallest id), 'longest' or 'shortest' "
        "(by text length), or 'field:NAME' to keep the largest record[NAME], e.g. field:likes")


def choose_keep(members: Any, policy: str,
                records: Mapping[int, dict] | Callable[[int], dict] | None = None) -> int:
    """The id to keep in one cluster.

    first: first seen: the smallest id, or a promoted copy's arrival id (``record["_seen"]``)
    when ``records`` are given. longest / shortest: by ``len(record["text"])`` (missing
    text counts as ""). field:NAME: largest ``record[NAME]``; a missing, None or NaN value ranks
    below every present value. Every tie goes to the smallest id. ``records`` maps an id to its
    record, or is a function returning it; it is not needed for ``first``.
    """
    kind, field = parse_keep(policy)
    ids = sorted(int(m) for m in np.asarray(members).ravel())
    if not ids:
        raise ValueError("choose_keep needs at least one member")
    if kind == "first" and records is None:
        return ids[0]
    if records is None:
        raise ValueError(f"keep policy {policy!r} needs the members' records")
    get = records.__getitem__ if isinstance(records, Mapping) else records
    if kind == "first":
        return min(ids, key=lambda i: (int((get(i) or {}).get(SEEN, i)), i))
    if kind == "longest":
        return max(ids, key=lambda i: _text_len(get(i)))
    if kind == "shortest":
        return min(ids, key=lambda i: _text_len(get(i)))
    assert field is not None
    return _max_by_field(ids, field, get)


def _text_len(record: dict) -> int:
    return len(record.get("text") or "")


def _max_by_field(ids: list[int], field: str, get: Callable[[int], dict]) -> int:
    present = [(i, v) for i in ids if _present(v := get(i).get(field))]
    if not present:
        return ids[0]
    try:
        return max(present, key=lambda iv: iv[1])[0]  # max keeps the first (smallest id) tie
    except TypeError as exc:
        kinds = sorted({type(v).__name__ for _, v in present})
        raise ConfigError(f"keep policy field:{field}: values cannot be compared "
                          f"({', '.join(kinds)}); use a numeric field") from exc


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))
