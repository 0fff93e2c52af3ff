"""What an index directory stores per image, looked up by id: its row (path, metadata) and
its vectors exactly as indexed (normalised), for query-by-id and for exact rescoring."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.compute as pc

from compsearch.indexer.faiss_choice import normalised
from compsearch.indexer.store import (IDENTITY_COLUMNS, IndexStore, arrow_to_vectors, table_ids, take_rows,
                                     vector_column)
from compsearch.search.errors import QueryError, UnknownImageError

if TYPE_CHECKING:
    import pyarrow.dataset as ds


class StoredRows:
    """The Parquet shards of one index directory, addressed by image id."""

    def __init__(self, store: IndexStore) -> None:
        self.store = store
        self._datasets: dict[str, ds.Dataset] = {}  # opened on first use (pyarrow.dataset imports pandas)
        self.table = store.read_table()  # every column but the vectors
        ids = table_ids(self.table)
        self._order = np.argsort(ids, kind="stable")
        self._sorted_ids = ids[self._order]
        self._orders: dict[tuple[tuple[str, str], ...], np.ndarray] = {}

    def positions(self, ids: np.ndarray | list[int]) -> np.ndarray:
        """Row positions of ``ids``; raises UnknownImageError for an id not indexed (QueryError
        for one beyond int64, which no index holds)."""
        try:
            ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        except OverflowError:
            raise QueryError("an image id is out of range", "ids are 64-bit integers: give a result's `id`") from None
        found = np.searchsorted(self._sorted_ids, ids)
        found = np.minimum(found, max(len(self._sorted_ids) - 1, 0))
        missing = ids[(len(self._sorted_ids) == 0) | (self._sorted_ids[found] != ids)] if len(ids) else ids[:0]
        if len(missing):
            lowest, highest = (int(self._sorted_ids[0]), int(self._sorted_ids[-1])) if len(self._sorted_ids) else (0, -1)
            raise UnknownImageError(f"no image with id {int(missing[0])} in this index",
                                    f"ids run from {lowest} to {highest} (see a result's `id`)")
        return self._order[found]

    def ordered_positions(self, keys: tuple[tuple[str, str], ...]) -> np.ndarray:
        """Every row's position, sorted by ``keys`` (pyarrow sort keys, nulls last); kept, since
        sorting a million paths takes a second and a browsing page asks again for each page."""
        if keys not in self._orders:
            self._orders[keys] = pc.sort_indices(self.table, sort_keys=list(keys)).to_numpy()
        return self._orders[keys]

    def records(self, ids: np.ndarray | list[int]) -> list[dict[str, Any]]:
        """The stored rows of ``ids``, in that order."""
        return take_rows(self.table, self.positions(ids)).to_pylist()

    def ids_with_sha256(self, sha256: str) -> list[int]:
        """The ids of the indexed files whose bytes hash to ``sha256`` (byte-identical files)."""
        if not self.table.num_rows or "sha256" not in self.table.column_names:
            return []
        return sorted(self.table.filter(pc.field("sha256") == sha256).column("id").to_pylist())

    def vectors(self, name: str, ids: np.ndarray | list[int]) -> np.ndarray:
        """``(len(ids), dim)`` normalised vectors of ``name`` as stored in the shards."""
        kind = self.store.vectors_kind(name)  # a property added from the store has its own parts, in shard order
        if kind not in self._datasets:
            self._datasets[kind] = self.store.dataset(kind)
        dataset = self._datasets[kind]
        column = dataset.take(self.positions(ids), columns=[vector_column(name)]).column(0)
        return normalised(arrow_to_vectors(column))


def split_record(record: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(identity, metadata)`` of a stored row: id/key/path/sha256 apart from the carried rest."""
    identity = {key: record.get(key) for key in IDENTITY_COLUMNS}
    return identity, {key: value for key, value in record.items() if key not in IDENTITY_COLUMNS}
