"""The collection itself, page by page: the stored rows the filter keeps, in a stable order
(a column, then id), as results of the one schema without scores (:mod:`search.results`)."""
from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from compsearch.search.errors import QueryError
from compsearch.search.filters import selected_positions
from compsearch.search.query import check_k, check_offset
from compsearch.search.results import Result, SearchResults
from compsearch.search.stored import StoredRows, split_record

DEFAULT_ORDER = "path"  # the folders, in order: what a file browser shows


def _sort_keys(schema: pa.Schema, order: str) -> tuple[tuple[str, str], ...]:
    """``column`` (ascending) or ``-column`` (descending), then id: a stable order."""
    name = order.removeprefix("-")
    if name not in schema.names:
        raise QueryError(f"cannot order by {name!r}: the index has no such column",
                         f"order by one of {', '.join(schema.names)} (prefix - for descending)")
    key = (name, "descending" if order.startswith("-") else "ascending")
    return (key,) if name == "id" else (key, ("id", "ascending"))


def browse(rows: StoredRows, limit: int = 60, offset: int = 0, where: str | None = None,
           order: str = DEFAULT_ORDER) -> SearchResults:
    """The page ``offset … offset + limit`` of the rows ``where`` keeps, ordered by ``order``;
    ``query["total"]`` says how many rows it keeps in all."""
    started = time.perf_counter()
    check_k(limit)
    check_offset(offset, limit)
    table = rows.table
    order_of_rows = rows.ordered_positions(_sort_keys(table.schema, order))
    if where is not None:
        kept = np.zeros(table.num_rows, dtype=bool)
        kept[selected_positions(table, where)] = True
        order_of_rows = order_of_rows[kept[order_of_rows]]
    page = table.take(order_of_rows[offset:offset + limit])
    results = []
    for rank, record in enumerate(page.to_pylist(), start=offset + 1):
        identity, metadata = split_record(record)
        results.append(Result(rank=rank, id=int(identity["id"]), key=identity["key"], path=identity["path"],
                              score=None, scores={}, metadata=metadata))
    query = {"browse": True, "k": limit, "offset": offset, "where": where, "order": order,
             "total": len(order_of_rows)}
    return SearchResults(query=query, results=results, seconds={"total": time.perf_counter() - started})
