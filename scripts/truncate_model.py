"""Write a model folder that keeps only the first N decoder layers of another (issue 15's speed row).

    python scripts/truncate_model.py --layers 20 --out runs/models/smollm2-L20   # from the embedded model

The folder holds a copy of the config with ``num_hidden_layers = N`` and symlinks to the source's
weights and tokenizer files; transformers loads the first N layers and ignores the rest (it lists
them as unexpected keys). Train an adapter on it with ``bellm-search train --model OUT`` and
encode with ``--model OUT --adapter ADAPTER``; the top layers it drops are never computed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def truncate(source: Path, layers: int, out: Path) -> Path:
    if not (source / "config.json").is_file():
        raise SystemExit(f"error: {source} is not a model folder (no config.json)")
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    total = int(config["num_hidden_layers"])
    if not 1 <= layers <= total:
        raise SystemExit(f"error: --layers must be between 1 and {total} (the source's layers)")
    out.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        if f.name != "config.json" and f.is_file():
            link = out / f.name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(f.resolve())
    config["num_hidden_layers"] = layers
    if isinstance(config.get("layer_types"), list):  # a per-layer list some configs carry
        config["layer_types"] = config["layer_types"][:layers]
    (out / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default=None, help="source model folder (default: the embedded one)")
    args = ap.parse_args(argv)
    from bellm_search.encoder.loading import resolve_model

    source = Path(resolve_model(args.model))  # None: the embedded model
    print(truncate(source, args.layers, args.out))


if __name__ == "__main__":
    main()
