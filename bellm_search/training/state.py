"""Checkpoints: trainable weights, optimizer, scheduler and every RNG state, written atomically and
loaded with ``weights_only=True``; resuming with other settings is refused (except RESUME_IGNORED)."""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bellm_search._fs import atomic_path
from bellm_search.errors import ConfigError

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
# settings a resumed run may change; a new --max-steps/--epochs re-plans the rest of the decay
# (a --max-steps at or below the checkpoint's step just writes the adapter from the checkpoint);
# cache_lower, pad_slack and packed change how a step is computed, not what it computes
RESUME_IGNORED = {"resume", "crash_after_step", "show_progress", "checkpoint_every", "device", "cache_root",
                  "dev", "dev_every", "max_steps", "epochs", "cache_lower", "pad_slack", "packed"}


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.detach().cpu().clone() for k, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(path: Path, model: nn.Module, opt: Any, sched: Any, step: int, elapsed: float,
                    history: list, dev_history: list, config: dict[str, Any]) -> None:
    state = {
        "step": step, "elapsed": elapsed, "history": history, "dev_history": dev_history, "config": config,
        "trainable": trainable_state(model), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": _numpy_state_tensors()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, cfg: Any, model: nn.Module, opt: Any, sched: Any) -> tuple[int, float, list, list]:
    """Restore weights, optimizer, scheduler and RNGs; (step, elapsed, loss history, dev history)."""
    import dataclasses

    state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle arbitrary objects
    saved, now = state["config"], dataclasses.asdict(cfg)
    diff = sorted(k for k in now if k not in RESUME_IGNORED and saved.get(k, now[k]) != now[k])
    if diff:
        raise ConfigError(f"--resume: {path} was written with different settings ({', '.join(diff)}); "
                          "use the same options or a fresh --output")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in state["trainable"].items():
            params[k].copy_(v)
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    _set_numpy_state(state["rng"]["numpy"])
    log.info("resumed from %s at step %d", path, state["step"])
    return state["step"], state["elapsed"], state["history"], [list(x) for x in state.get("dev_history", [])]


def _numpy_state_tensors() -> dict[str, Any]:
    """numpy's global RNG state as tensors and numbers (loadable with weights_only=True)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def _set_numpy_state(state: dict[str, Any]) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state((state["name"], keys, state["pos"], state["has_gauss"], state["gauss"]))
