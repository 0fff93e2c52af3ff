"""What an index directory holds, as one JSON-able report (``compsearch info``, ``/api/info``)."""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from compsearch.indexer.manifest import FileEntry
from compsearch.indexer.store import DUPLICATES, SHARDS, SKIPPED, STORE, VECTOR_PREFIX, VECTORS, IndexStore

SKIP_REASONS_SHOWN = 10


def _size_on_disk(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def _as_dict(entry: FileEntry | None) -> dict[str, str] | None:
    return asdict(entry) if entry is not None else None


def index_info(folder: str | Path) -> dict[str, Any]:
    """Counts, properties (k, components), indexes (type, size), models, skipped reasons."""
    store = IndexStore(folder)
    manifest = store.read_manifest()
    skipped = store.read_table(SKIPPED)
    reasons = Counter(skipped.column("reason").to_pylist()) if skipped.num_rows else Counter()
    encoder = manifest.encoder
    dataset = store.dataset(SHARDS)
    columns = {field.name: str(field.type) for field in dataset.schema if not field.name.startswith(VECTOR_PREFIX)} \
        if dataset is not None else {}
    return {
        "folder": str(store.folder),
        "images": manifest.counts.images,
        "skipped": manifest.counts.skipped,
        "skipped_reasons": dict(reasons.most_common(SKIP_REASONS_SHOWN)),
        "duplicates": manifest.counts.duplicates,
        "model": {"name": encoder.model_name, "weights_id": encoder.model_weights_id,
                  "weights_file": manifest.model_weights.path if manifest.model_weights else None,
                  "first_block": encoder.first_block},
        "space": encoder.space,
        "precision": encoder.precision,
        "aligner": _as_dict(manifest.aligner),
        "clip": {"name": encoder.clip_name, "weights_id": encoder.clip_weights_id} if encoder.clip_name else None,
        "ranking": _as_dict(manifest.ranking),
        "properties": {name: {"k": entry.k, "components": entry.components, "source": entry.source}
                       for name, entry in manifest.properties.items()},
        "indexes": {name: {"factory": entry.factory, "ntotal": entry.ntotal, "dim": entry.dim, "bytes": entry.bytes,
                           "search_parameters": entry.search_parameters,
                           "changed_since_build": entry.changed_since_build,
                           "exact_vectors": {"files": entry.exact_files, "dead": entry.exact_dead}}
                    for name, entry in manifest.indexes.items()},
        "columns": columns,  # what `search --where` can filter on, with its type
        "runs": [asdict(run) for run in manifest.runs],
        "store": ({"dtype": manifest.store.dtype, "bytes_per_image": (manifest.store.layout or {}).get("bytes_per_image")}
                  if manifest.store else None),
        "bytes_on_disk": {kind: _size_on_disk(store.folder / kind) for kind in (SHARDS, SKIPPED, DUPLICATES, STORE, VECTORS)
                          if (store.folder / kind).is_dir()},
        "created": manifest.created,
        "updated": manifest.updated,
        "compsearch_version": manifest.compsearch_version,
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
        f"space      {info['space']}" + (f" — CLIP {info['clip']['name']}" if info["clip"] else "")
        + f", computed in {info['precision']}",
    ]
    if info["aligner"]:
        lines.append(f"aligner    {info['aligner']['path']} (id {info['aligner']['id']})")
    if info["ranking"]:
        lines.append(f"ranking    {info['ranking']['path']} (id {info['ranking']['id']})")
    lines.append("indexes")
    for name, entry in info["indexes"].items():
        components = info["properties"].get(name, {}).get("components")
        summed = f"  k={len(components)}: {', '.join(components)}" if components else "  all components"
        updated = f" ({entry['changed_since_build']} ids updated since built)" if entry["changed_since_build"] else ""
        exact = entry["exact_vectors"]
        if exact["files"]:
            updated += f" (exact vectors: {len(exact['files'])} files, {exact['dead']} dead records)"
        lines.append(f"  {name:<12} {entry['factory']:<14} {entry['ntotal']:>9} × {entry['dim']:<5} "
                     f"{_mib(entry['bytes']):>10}{updated}{summed}")
    lines.append("store      " + (f"{info['store']['dtype']}, {info['store']['bytes_per_image']} B per image "
                                   "(add-property, reindex, rank --index need no image pass)" if info["store"]
                                   else "none (add-property and reindex need a rebuild with --store fp16)"))
    if info["skipped_reasons"]:
        lines.append("skipped (most common reasons)")
        lines += [f"  {count:>6}  {reason}" for reason, count in info["skipped_reasons"].items()]
    if info["columns"]:
        lines.append("columns    " + ", ".join(info["columns"]) + "  (filter with `search --where`)")
    lines.append("on disk    " + ", ".join(f"{kind} {_mib(size)}" for kind, size in info["bytes_on_disk"].items()))
    return "\n".join(lines)
