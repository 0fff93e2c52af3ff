"""The index store's reading helpers: a table read part by part as pyarrow.dataset reads it,
and the id path's buffer-level conversions equal pyarrow's own."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from compsearch.indexer.store import SHARDS, IndexStore, ids_to_numpy, take_rows


def test_read_table_unifies_parts_as_a_dataset_does(tmp_path: Path) -> None:
    shards = tmp_path / SHARDS
    shards.mkdir()
    pq.write_table(pa.table({"id": [0, 1], "camera": pa.array([None, None], pa.null()), "vector.full": [1.0, 2.0]}),
                   shards / "part-000-000000.parquet")
    pq.write_table(pa.table({"id": [2], "camera": ["X100V"], "lens": [35.0], "vector.full": [3.0]}),
                   shards / "part-000-000001.parquet")
    store = IndexStore(tmp_path)
    table = store.read_table()
    assert table.column_names == ["id", "camera", "lens"]  # no vectors
    assert table.to_pylist() == [{"id": 0, "camera": None, "lens": None}, {"id": 1, "camera": None, "lens": None},
                                 {"id": 2, "camera": "X100V", "lens": 35.0}]
    assert table.schema == store.dataset().to_table(columns=table.column_names).schema
    assert store.read_table(columns=["lens", "id"]).column_names == ["lens", "id"]


def test_ids_and_rows_through_buffers_equal_pyarrows() -> None:
    ids = pa.chunked_array([pa.array(np.arange(5, dtype=np.int64)), pa.array(np.arange(10, 20, dtype=np.int64))])
    table = pa.table({"id": ids, "key": [str(i) for i in range(15)]}).slice(3, 9)  # an offset into the chunks
    np.testing.assert_array_equal(ids_to_numpy(table.column("id")), table.column("id").to_numpy())
    positions = np.array([8, 0, 3, 3], dtype=np.int64)
    assert take_rows(table, positions).to_pylist() == table.take(pa.array(positions)).to_pylist()
