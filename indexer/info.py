"""What an index directory holds, as one JSON-able report (``compsearch info``, ``/api/info``)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from compsearch.indexer.store import DUPLICATES, SHARDS, SKIPPED, IndexStore

SKIP_REASONS_SHOWN = 10


def _size_on_disk(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def index_info(folder: str | Path) -> dict[str, Any]:
    """Counts, properties (k, components), indexes (type, size), models, skipped reasons."""
    store = IndexStore(folder)
    manifest = store.read_manifest()
    skipped = store.read_table(SKIPPED)
    reasons = Counter(skipped.column("reason").to_pylist()) if skipped.num_rows else Counter()
    encoder = manifest["encoder"]
    return {
        "folder": str(store.folder),
        "images": manifest["counts"].get("images", 0),
        "skipped": manifest["counts"].get("skipped", 0),
        "skipped_reasons": dict(reasons.most_common(SKIP_REASONS_SHOWN)),
        "duplicates": manifest["counts"].get("duplicates", 0),
        "model": {"name": encoder["model_name"], "weights_id": encoder["model_weights_id"],
                  "weights_file": (manifest.get("model_weights") or {}).get("path"),
                  "first_block": encoder["first_block"]},
        "space": encoder["space"],
        "aligner": manifest.get("aligner"),
        "clip": {"name": encoder["clip_name"], "weights_id": encoder["clip_weights_id"]} if encoder["clip_name"] else None,
        "ranking": manifest.get("ranking"),
        "properties": {name: {"k": entry["k"], "components": entry["components"], "source": entry["source"]}
                       for name, entry in (manifest.get("properties") or {}).items()},
        "indexes": {name: {key: entry[key] for key in ("factory", "ntotal", "dim", "bytes", "search_parameters")}
                    for name, entry in manifest["indexes"].items()},
        "runs": manifest["runs"],
        "bytes_on_disk": {kind: _size_on_disk(store.folder / kind) for kind in (SHARDS, SKIPPED, DUPLICATES)
                          if (store.folder / kind).is_dir()},
        "created": manifest.get("created"),
        "updated": manifest.get("updated"),
        "compsearch_version": manifest.get("compsearch_version"),
    }


def _mib(count: int) -> str:
    return f"{count / (1 << 20):.1f} MiB"


def format_info(info: dict[str, Any]) -> str:
    """The readable form ``compsearch info`` prints."""
    model = info["model"]
    lines = [
        f"{info['folder']}: {info['images']} images, {info['skipped']} skipped, {info['duplicates']} duplicates",
        f"model      {model['name']} (weights {model['weights_id']}"
        + (f", {model['weights_file']}" if model["weights_file"] else "") + f"), decomposed from {model['first_block']}",
        f"space      {info['space']}" + (f" — CLIP {info['clip']['name']}" if info["clip"] else ""),
    ]
    if info["aligner"]:
        lines.append(f"aligner    {info['aligner']['path']} (id {info['aligner']['id']})")
    if info["ranking"]:
        lines.append(f"ranking    {info['ranking']['path']} (id {info['ranking']['id']})")
    lines.append("indexes")
    for name, entry in info["indexes"].items():
        components = info["properties"].get(name, {}).get("components")
        summed = f"  k={len(components)}: {', '.join(components)}" if components else "  all components"
        lines.append(f"  {name:<12} {entry['factory']:<14} {entry['ntotal']:>9} × {entry['dim']:<5} "
                     f"{_mib(entry['bytes']):>10}{summed}")
    if info["skipped_reasons"]:
        lines.append("skipped (most common reasons)")
        lines += [f"  {count:>6}  {reason}" for reason, count in info["skipped_reasons"].items()]
    lines.append("on disk    " + ", ".join(f"{kind} {_mib(size)}" for kind, size in info["bytes_on_disk"].items()))
    return "\n".join(lines)
