"""The component store beside an index's shards, and reading it back into components.

```
DIR/store/part-RRR-CCCCCC.parquet   one per shard, written before it: id, values (fixed-size
                                    list, fp16 or fp32), scalars (fixed-size list, fp32); the
                                    rows' layout (StoredComponents.layout) as JSON in the
                                    schema metadata under ``compsearch.store.layout``
DIR/vectors/<name>/part-….parquet   vectors of a property added later from the store
                                    (``compsearch add-property``, ``reindex``): id and
                                    ``vector.<name>``, one part per shard, rows in its order
```

Rows that leave a shard (removed files, copies the cross-shard de-duplication moves to
``duplicates``) leave its store and vectors parts with it (:meth:`IndexStore.rewrite_shard`);
a store part is read back by id anyway (:func:`iter_components`), in the shard's order, so
whatever is built from the store lines up with the shards row for row. A later run's new
shards get their vectors parts from their own columns (:func:`complete_vectors`).
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from compsearch.indexer.manifest import Manifest, StoreEntry
from compsearch.indexer.store import REBUILD, STORE, VECTORS, IndexStore, arrow_to_vectors, vector_column, vectors_to_arrow
from compsearch.mapping.chunk_store import read_file, write_atomically
from compsearch.mapping.decompose import StoredComponents, expand
from compsearch.mapping.errors import CompsearchError
from compsearch.mapping.models import LoadedModel

LAYOUT_KEY = b"compsearch.store.layout"


def _rows_to_arrow(rows: np.ndarray) -> pa.FixedSizeListArray:
    """(rows, n) → a fixed-size-list column in ``rows``' own dtype."""
    flat = pa.array(np.ascontiguousarray(rows).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, rows.shape[1])


def store_table(ids: list[int], stored: StoredComponents) -> pa.Table:
    """One chunk's store part: its images' rows, the layout in the schema metadata."""
    values, scalars = stored.flat()
    table = pa.table({"id": pa.array(ids, pa.int64()), "values": _rows_to_arrow(values.numpy()),
                      "scalars": _rows_to_arrow(scalars.numpy())})
    return table.replace_schema_metadata({LAYOUT_KEY: json.dumps(stored.layout()).encode()})


def join_stored(pieces: list[StoredComponents]) -> StoredComponents:
    """A unit's batches' stores as one (same layout, rows concatenated)."""
    first = pieces[0]
    values, scalars = (torch.cat(rows) for rows in zip(*(piece.flat() for piece in pieces)))
    return StoredComponents.from_flat(first.layout(), values, scalars)


def written_layout(store: IndexStore) -> dict[str, Any] | None:
    """The rows' layout as the first store part records it (None: no part)."""
    parts = store.parts(STORE).parts()
    if not parts:
        return None
    schema = read_file(parts[0], pq.read_schema, REBUILD)
    return json.loads(schema.metadata[LAYOUT_KEY])


def require_store(manifest: Manifest, folder: Path, model: LoadedModel) -> StoreEntry:
    """The index's store entry, if it has a complete store of ``model``'s decomposition."""
    entry = manifest.store
    if entry is None or entry.layout is None:
        raise CompsearchError(f"{folder} has no component store (built with --store none, or before stores)",
                              "rebuild it with `compsearch index … --overwrite --store fp16`")
    if entry.model_weights_id != model.weights_id or entry.layout["model"] != model.name:
        raise CompsearchError(
            f"{folder}'s component store holds {entry.layout['model']} (weights {entry.model_weights_id}), "
            f"not {model.name} (weights {model.weights_id})",
            "load the model the index was built with (its manifest's model_weights)",
        )
    return entry


def iter_components(store: IndexStore, layout: dict[str, Any], model: LoadedModel,
                    batch_size: int = 512) -> Iterator[tuple[Path, np.ndarray, torch.Tensor, list[str]]]:
    """``(shard, ids, components, names)`` batch by batch, shard by shard in the shards' order:
    model-space components (batch, components, dim) expanded from the store with ``model``'s
    weights (no forward pass). Every shard's rows must be in its store part."""
    parts = store.parts(STORE)
    for shard in store.shard_paths():
        ids = pq.read_table(shard, columns=["id"]).column("id").to_numpy()
        if not len(ids):
            continue
        part = parts.folder / shard.name
        if not part.is_file():
            raise CompsearchError(f"the component store has no part for {shard.name} ({part} is missing)",
                                  "rebuild the index with `compsearch index … --overwrite`")
        table = read_file(part, pq.read_table, REBUILD)
        stored_ids = table.column("id").to_numpy()
        order = np.argsort(stored_ids)
        where = order[np.searchsorted(stored_ids, ids, sorter=order).clip(max=len(stored_ids) - 1)]
        if not np.array_equal(stored_ids[where], ids):
            raise CompsearchError(f"the component store part {part} lacks rows of {shard.name}",
                                  "rebuild the index with `compsearch index … --overwrite`")
        values, scalars = (torch.from_numpy(arrow_to_vectors(table.column(name).take(where)))
                           for name in ("values", "scalars"))
        for start in range(0, len(ids), batch_size):
            rows = slice(start, start + batch_size)
            stored = StoredComponents.from_flat(layout, values[rows], scalars[rows])
            with torch.inference_mode():
                components = expand(stored, model.model)
            yield shard, ids[rows], components, stored.names


def write_vectors(store: IndexStore, name: str, shard: Path, ids: np.ndarray, vectors: np.ndarray) -> None:
    """One shard's vectors of ``name`` as a vectors part (rows in the shard's order)."""
    table = pa.table({"id": pa.array(ids, pa.int64()), vector_column(name): vectors_to_arrow(vectors)})
    target = store.parts(f"{VECTORS}/{name}").folder / shard.name
    write_atomically(target, lambda temporary: pq.write_table(table, temporary))


def complete_vectors(store: IndexStore) -> None:
    """Give every shard without one its vectors part of each property added from the store,
    from the shard's own column (a later run's encoder computes every property the index has;
    its identity is checked): the parts stay one per shard, row-aligned with it."""
    folder = store.folder / VECTORS
    for name in sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []:
        column = vector_column(name)
        for shard in store.shard_paths():
            if (folder / name / shard.name).is_file():
                continue
            if column not in read_file(shard, pq.read_schema, REBUILD).names:
                raise CompsearchError(f"{shard} has no {column} for the property {name} added from the store",
                                      "rebuild the index with `compsearch index … --overwrite`")
            table = pq.read_table(shard, columns=["id", column])
            write_vectors(store, name, shard, table.column("id").to_numpy(), arrow_to_vectors(table.column(column)))
