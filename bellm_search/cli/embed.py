"""``bellm-search embed`` and ``prepare-model``."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from bellm_search.cli.options import (
    AdapterOpt, AddressOpt, BatchOpt, BidirOpt, DeviceOpt, DTypeOpt, EngineOpt, GpusOpt, IdFieldOpt, JsonOpt,
    MaxLenOpt, ModelOpt, NumEncodersOpt, PoolingOpt, PromptOpt, SkipInvalidOpt, TextFieldOpt, encoder_options,
    refuse_unused,
)
from bellm_search.cli.output import emit, note, output_file, progress_bar


def embed(
    input: Annotated[list[str], typer.Argument(help="Corpus: .jsonl, .txt (one text per line) or - for stdin (ray: several files or globs).")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Where to write the float32 .npy (n, dim).")] = None,
    text_field: TextFieldOpt = None,
    id_field: IdFieldOpt = None,
    skip_invalid: SkipInvalidOpt = False,
    engine: EngineOpt = "local",
    output_dir: Annotated[Optional[Path], typer.Option("--output-dir", help="ray: shards folder (emb/*.npy + meta/*.parquet).")] = None,
    address: AddressOpt = None, num_encoders: NumEncodersOpt = 1, gpus_per_encoder: GpusOpt = 0.0,
    model: ModelOpt = None, adapter: AdapterOpt = None, bidirectional_layers: BidirOpt = None,
    pooling: PoolingOpt = None, prompt: PromptOpt = None, max_length: MaxLenOpt = None,
    batch_size: BatchOpt = None, device: DeviceOpt = None, dtype: DTypeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Embed every text of INPUT into OUTPUT.npy (one row per valid line, in input order), or into
    embedding shards with --engine ray."""
    from bellm_search.errors import ConfigError

    opts = encoder_options(model, adapter, bidirectional_layers, pooling, prompt, max_length, None, device, dtype)
    if engine == "ray":
        if output_dir is None:
            raise ConfigError("--engine ray writes shards: give --output-dir DIR")
        refuse_unused("by --engine ray (it writes shards into --output-dir)", output=output)
        from bellm_search.distributed.ray_embed import embed_with_ray

        summary = embed_with_ray(list(input), output_dir, opts, address=address, num_encoders=num_encoders,
                                 gpus_per_encoder=gpus_per_encoder, text_field=text_field or "text", id_field=id_field or "id",
                                 batch_size=batch_size or 256, skip_invalid=skip_invalid)
        note(f"embedded {summary['rows']} texts -> {output_dir} ({summary['shards']} shards, {summary['seconds']:.1f}s)")
        emit(summary, as_json)
        return
    if engine != "local":
        raise ConfigError(f"--engine {engine!r}: use local or ray")
    if output is None or len(input) != 1:
        raise ConfigError("the local engine embeds one INPUT into --output FILE.npy")
    output_file(output)
    refuse_unused("by the local engine (one row per text, in input order; ids only go into --engine ray shards)",
                  id_field=id_field, output_dir=output_dir, address=address)
    _embed_local(input[0], output, text_field or "text", skip_invalid, {**opts, **({"batch_size": batch_size} if batch_size else {})}, as_json)


def _embed_local(input: str, output: Path, text_field: str, skip_invalid: bool, opts: dict[str, Any], as_json: bool) -> None:
    from bellm_search.corpus import CorpusOptions, ReadStats, read_texts
    from bellm_search.encoder.to_npy import encode_to_npy

    stats = ReadStats()
    texts = read_texts(input, CorpusOptions(text_field=text_field, skip_invalid=skip_invalid), stats)
    start = time.perf_counter()
    with progress_bar("embed", "text", total=len(texts)) as bar:
        shape, truncated = encode_to_npy(texts, output, opts, progress=bar.update)
    seconds = time.perf_counter() - start
    summary = {"output": str(output), "rows": shape[0], "dim": shape[1], "invalid_lines": stats.invalid,
               "truncated": truncated, "seconds": round(seconds, 3)}
    for problem in stats.problems:
        note(f"skipped {problem}")
    note(f"embedded {shape[0]} texts -> {output} ({shape[1]} dims, {seconds:.1f}s, "
         f"{stats.invalid} invalid lines skipped, {truncated} truncated)")
    emit(summary, as_json)


def prepare_model(as_json: JsonOpt = False) -> None:
    """Convert the embedded SmolLM2-135M-Instruct GGUF into a cached bf16 folder (once), and cache
    it with the shipped adapter merged, in this machine's compute dtype."""
    from bellm_search.encoder.loading import prepare_embedded

    path = prepare_embedded()
    merged = _merge_default_adapter(path)
    emit({"path": str(path), "merged": merged}, as_json,
         f"embedded model ready: {path}" + (f" (merged with the shipped adapter: {merged})" if merged else ""))


def _merge_default_adapter(path: Path) -> str | None:
    """The merged-model cache entry for the embedded model + shipped adapter (None when off/absent)."""
    from bellm_search.encoder import model_cache
    from bellm_search.encoder.loading import load_merged_model, resolve_device, resolve_dtype
    from bellm_search.encoder.resolve import default_adapter_dir, has_default_adapter

    if not has_default_adapter() or not model_cache.enabled():
        return None
    dtype = resolve_dtype("auto", resolve_device("auto"))
    load_merged_model(str(path), default_adapter_dir(), dtype, None)
    key = model_cache.cache_key(path, default_adapter_dir(), str(dtype).removeprefix("torch."))
    hit = model_cache.lookup(key) if key is not None else None
    return str(hit) if hit else None
