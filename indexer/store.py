"""An index directory on disk, in open formats a user can read without compsearch.

```
DIR/manifest.json            what was indexed, how, and with what (indexer/manifest.py)
DIR/shards/part-RRR-CCCCCC.parquet
                             one file per chunk of the listing (run R, chunk C): id, key,
                             path, sha256, width, height, folder, file_size, mtime, EXIF
                             columns (mapping/images/file_facts.py), carried metadata, and one vector
                             column per property (``vector.full``, ``vector.colour``, …;
                             float16, not normalised) — all row-aligned by construction;
                             read one with pyarrow.dataset.dataset(DIR / "shards")
DIR/skipped/part-RRR-CCCCCC.parquet     files that could not be read, and why
DIR/duplicates/part-RRR-CCCCCC.parquet  byte-identical files, with the id they duplicate
DIR/full.faiss, DIR/<property>.faiss    inner product on L2-normalised vectors, ids = ``id``
DIR/store/part-RRR-CCCCCC.parquet       the chunk's component store, written before its shard
DIR/vectors/<name>/part-RRR-CCCCCC.parquet
                             a property's vectors built later from the store (they stand
                             in for the shards' column of that name; indexer/component_store.py)
DIR/text-tower.onnx, DIR/image-tower.onnx
                             the query side's encoders without torch (mapping/onnx), written
                             by the first text and image query
```

Each folder of parts is a :class:`~mapping.chunk_store.ChunkStore`: a chunk's shard is
written to a temporary name and renamed, after its skipped and duplicates files, so a shard
on disk is a finished chunk, whatever moment a run was killed at.
Ids are stable int64, one per file, never reused: a run's ``id_offset`` (the next id no run has
used) plus the file's position in the run's plan (:mod:`indexer.sync`); a moved file keeps its id.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from compsearch.mapping.images.file_facts import FACT_TYPES
from compsearch.indexer.manifest import MANIFEST, Manifest, read_manifest, write_manifest
from compsearch.mapping.chunk_store import ChunkStore, parse_part_name, read_file, write_atomically

if TYPE_CHECKING:  # pyarrow.dataset imports pandas (~0.2 s): only what scans the shards pays for it
    import pyarrow.dataset as ds

SHARDS, SKIPPED, DUPLICATES, STORE, VECTORS = "shards", "skipped", "duplicates", "store", "vectors"
VECTOR_PREFIX = "vector."
IDENTITY_COLUMNS = ("id", "key", "path", "sha256")  # which file a row is: apart from its metadata in results
# The indexer's own columns, with their types: a listing's column of one of these names is kept
# as metadata.NAME. ``folder`` is the key's folder (relative to the collection's root).
BUILTIN_TYPES = {"id": pa.int64(), "width": pa.int32(), "height": pa.int32(), "folder": pa.string(), **FACT_TYPES}
RESERVED_COLUMNS = (*IDENTITY_COLUMNS, *(name for name in BUILTIN_TYPES if name not in IDENTITY_COLUMNS))
REBUILD = "rebuild the index with `compsearch index … --overwrite`"
PARQUET = ".parquet"


def write_table(table: pa.Table, path: Path) -> None:
    write_atomically(path, lambda temporary: pq.write_table(table, temporary))


def vector_column(name: str) -> str:
    return f"{VECTOR_PREFIX}{name}"


def vectors_to_arrow(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """(rows, dim) float array → a fixed-size-list column of float16."""
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float16).reshape(-1), type=pa.float16())
    return pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])


# On pyarrow 26, converting between NumPy and Arrow (``pa.array(ndarray)``, ``Array.to_numpy``)
# imports pandas, ~0.2 s: the two conversions a query by id needs go through buffers instead.
def take_rows(table: pa.Table, positions: np.ndarray) -> pa.Table:
    """``table.take(positions)``, the indices handed over as an Arrow buffer."""
    positions = np.ascontiguousarray(positions, dtype=np.int64)
    return table.take(pa.Array.from_buffers(pa.int64(), len(positions), [None, pa.py_buffer(positions)]))


def ids_to_numpy(column: pa.ChunkedArray) -> np.ndarray:
    """An int64 column without nulls (ids) as a NumPy array, read from its data buffer."""
    array = column.combine_chunks()
    if array.type != pa.int64() or array.null_count:
        raise ValueError(f"ids must be int64 without nulls, not {array.type} with {array.null_count} nulls")
    return np.frombuffer(array.buffers()[1], dtype=np.int64, count=len(array), offset=array.offset * 8)


def table_ids(table: pa.Table) -> np.ndarray:
    """A table's ``id`` column as int64 (empty when it has no rows: no part written yet)."""
    return ids_to_numpy(table.column("id")) if table.num_rows else np.zeros(0, np.int64)


def arrow_to_vectors(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A fixed-size-list column → (rows, dim) float32."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    dim = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)


@dataclass
class ChunkRows:
    """What one chunk of the listing produced, ready to be written."""

    run: int
    chunk: int
    rows: list[dict[str, Any]]  # id, key, path, sha256, width, height, metadata…
    vectors: dict[str, np.ndarray]  # name → (rows, dim)
    skipped: list[dict[str, Any]]  # key, path, reason
    duplicates: list[dict[str, Any]]  # key, path, sha256, duplicate_of
    already_indexed: int = 0  # files found in the index already (same path and bytes): no row
    store: pa.Table | None = None  # the component store part (indexer.component_store), if kept

    def counts(self) -> dict[str, int]:
        """What the chunk did, in an :class:`~indexer.build.IndexSummary`'s terms."""
        return {"added": len(self.rows), "skipped": len(self.skipped), "duplicates": len(self.duplicates),
                "already_indexed": self.already_indexed}


class IndexStore:
    """Reads and writes the files of one index directory (see the module docstring)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).expanduser()

    # -- manifest ---------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def read_manifest(self) -> Manifest:
        return read_manifest(self.folder)

    def write_manifest(self, manifest: Manifest) -> None:
        write_manifest(self.folder, manifest)

    # -- chunks -----------------------------------------------------------------------------
    def parts(self, kind: str) -> ChunkStore:
        """The chunk store of ``kind`` (shards, skipped, duplicates)."""
        return ChunkStore(self.folder / kind, PARQUET)

    def shard_paths(self) -> list[Path]:
        return self.parts(SHARDS).parts()

    def done_chunks(self, run: int) -> set[int]:
        """Chunks of ``run`` whose shard is on disk (finished)."""
        return self.parts(SHARDS).done(run)

    def move_to_duplicates(self, repeats: dict[int, int]) -> None:
        """Take the rows of ``repeats``' ids (id → the id it repeats) out of the shards and list
        them in ``duplicates``, chunk by chunk; the duplicates file is written first, so a kill
        in between leaves the row in place, and a rerun finds it again (listed once by key)."""
        for path in self.shard_paths():
            drop = np.isin(pq.read_table(path, columns=["id"]).column("id").to_numpy(), list(repeats))
            if not drop.any():
                continue
            table = pq.read_table(path)
            listed = self.folder / DUPLICATES / path.name
            entries = pq.read_table(listed).to_pylist() if listed.exists() else []
            known = {entry["key"] for entry in entries}
            entries += [{"key": row["key"], "path": row["path"], "sha256": row["sha256"], "duplicate_of": repeats[row["id"]]}
                        for row in table.filter(pa.array(drop)).select(["key", "path", "sha256", "id"]).to_pylist()
                        if row["key"] not in known]
            write_table(pa.Table.from_pylist(entries), listed)
            self.rewrite_shard(path, table.filter(pa.array(~drop)))

    def beside(self, shard: Path) -> list[Path]:
        """The parts made with a shard part and named as it (its component store part, its
        vectors parts of properties added from the store)."""
        vectors = self.folder / VECTORS
        folders = [self.folder / STORE, *(sorted(vectors.iterdir()) if vectors.is_dir() else [])]
        return [folder / shard.name for folder in folders if (folder / shard.name).is_file()]

    def rewrite_shard(self, shard: Path, rows: pa.Table) -> None:
        """Replace a shard part by ``rows`` (some of its rows, maybe re-pathed), the parts beside
        it keeping only those rows' ids (in their order: a vectors part stays row-aligned with
        the shard). Each file is written atomically, those beside first, and filtered by id, so
        a kill in between leaves parts that a rerun filters the same way."""
        kept = rows.column("id")
        for path in self.beside(shard):
            table = pq.read_table(path)
            write_table(table.filter(pc.is_in(table.column("id"), kept)), path)
        write_table(rows, shard)

    def written(self, run: int) -> int:
        """Files the parts of ``run`` account for: rows, skipped and duplicates entries."""
        return sum(pq.read_metadata(path).num_rows for kind in (SHARDS, SKIPPED, DUPLICATES)
                   for path in self.parts(kind).parts() if parse_part_name(path.name, PARQUET)[0] == run)

    def write_chunk(self, rows: ChunkRows) -> None:
        """The write stage: one chunk's rows → its parts, the shard last (it marks the chunk
        finished, so a kill before it leaves the chunk to redo)."""
        for kind, entries in ((SKIPPED, rows.skipped), (DUPLICATES, rows.duplicates)):
            path = self.parts(kind).path(rows.run, rows.chunk)
            if entries:
                write_table(pa.Table.from_pylist(entries), path)
            elif path.exists():  # left by an interrupted earlier attempt at this chunk
                path.unlink()
        table = self._row_table(rows.rows) if rows.rows else None
        columns = {} if table is None else {name: table.column(name) for name in table.column_names}
        count = len(rows.rows)
        for vector_name, vectors in rows.vectors.items():
            columns[vector_column(vector_name)] = vectors_to_arrow(vectors.reshape(count, -1))
        shard = pa.table(columns) if columns else pa.table({"id": pa.array([], pa.int64())})
        if rows.store is not None:  # before the shard: a finished shard has its store part
            self.parts(STORE).write(rows.run, rows.chunk, lambda temporary: pq.write_table(rows.store, temporary))
        self.parts(SHARDS).write(rows.run, rows.chunk, lambda temporary: pq.write_table(shard, temporary))

    @staticmethod
    def _row_table(rows: list[dict[str, Any]]) -> pa.Table:
        """The rows with the built-in columns' types pinned (metadata columns as inferred), so
        every shard agrees on them even where one chunk holds only nulls."""
        inferred = pa.Table.from_pylist(rows)
        return inferred.cast(pa.schema([pa.field(f.name, BUILTIN_TYPES.get(f.name, f.type)) for f in inferred.schema]))

    # -- reading ----------------------------------------------------------------------------
    def _schema(self, path: Path) -> pa.Schema:
        """A part's schema: reading its footer is where a damaged part shows."""
        return read_file(path, pq.read_schema, REBUILD)

    def _schemas(self, kind: str, except_run: int | None = None) -> dict[Path, pa.Schema]:
        return {path: self._schema(path) for path in self.parts(kind).parts()
                if parse_part_name(path.name, PARQUET)[0] != except_run}

    @staticmethod
    def _unified(schemas: dict[Path, pa.Schema]) -> pa.Schema:
        """Shards may differ in schema (a metadata column all null in one of them): unify."""
        return pa.unify_schemas(list(schemas.values()), promote_options="permissive")

    def dataset(self, kind: str = SHARDS, except_run: int | None = None) -> ds.Dataset | None:
        """The parts of ``kind`` as one dataset (those of ``except_run`` left out), None for none."""
        import pyarrow.dataset as ds

        schemas = self._schemas(kind, except_run)
        if not schemas:
            return None
        return ds.dataset([str(p) for p in schemas], format="parquet", schema=self._unified(schemas))

    def read_table(self, kind: str = SHARDS, columns: list[str] | None = None) -> pa.Table:
        """A whole table (images without vectors by default for shards; skipped; duplicates),
        read part by part without pyarrow.dataset, which imports pandas: a query by id from the
        shell stays quick."""
        schemas = self._schemas(kind)
        if not schemas:
            return pa.schema([]).empty_table()
        schema = self._unified(schemas)
        if columns is None:
            columns = [name for name in schema.names if not (kind == SHARDS and name.startswith(VECTOR_PREFIX))]
        tables = []
        for path, part_schema in schemas.items():
            present = [name for name in columns if name in part_schema.names]
            tables.append(read_file(path, lambda part: pq.ParquetFile(part).read(columns=present), REBUILD))
        table = pa.concat_tables(tables, promote_options="permissive")  # a column a part lacks: nulls
        table, unified = table.select(columns), pa.schema([schema.field(name) for name in columns])
        return table if table.schema == unified else table.cast(unified)  # cast imports pyarrow.compute

    def vectors_kind(self, name: str) -> str:
        """Where ``name``'s vectors are: its own parts when built from the store, else the shards."""
        added = f"{VECTORS}/{name}"
        return added if self.parts(added).parts() else SHARDS

    def iter_vectors(self, name: str, only: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(ids, vectors)`` shard by shard for one vector name (float32, as stored); with
        ``only``, just those ids' rows, and a part without any is read no further than its ids."""
        column = vector_column(name)
        for path in self.parts(self.vectors_kind(name)).parts():
            if column not in self._schema(path).names:
                continue
            if only is None:
                table = pq.read_table(path, columns=["id", column])
            else:
                wanted = np.isin(pq.read_table(path, columns=["id"]).column("id").to_numpy(), only)
                if not wanted.any():
                    continue
                table = pq.read_table(path, columns=["id", column]).filter(pa.array(wanted))
            if table.num_rows:
                yield table.column("id").to_numpy(), arrow_to_vectors(table.column(column))

    def faiss_path(self, name: str) -> Path:
        return self.folder / f"{name}.faiss"
