"""``--where`` filters: parsed, typed, exact against a Python re-implementation of each row."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from compsearch.search.filters import FilterError, parse_filter, selected_ids, selected_positions

TABLE = pa.table({
    "id": pa.array([0, 1, 2, 3, 4, 5], pa.int64()),
    "camera_model": ["X100V", "X100V", "EOS R5", None, "EOS R5", "iPhone"],
    "iso": pa.array([200, 800, 1600, 100, None, 3200], pa.int32()),
    "taken": pa.array([dt.datetime(2019, 5, 1), dt.datetime(2020, 1, 1), dt.datetime(2021, 7, 3),
                       None, dt.datetime(2020, 6, 30, 12), dt.datetime(2022, 1, 1)], pa.timestamp("s")),
    "folder": ["trips/rome", "trips/oslo", "home", "home", "trips/rome", "work"],
    "favourite": [True, False, True, False, False, True],
    "focal length": [23.0, 23.0, 50.0, None, 85.0, 4.2],
})


@pytest.mark.parametrize(("where", "expected"), [
    ("camera_model == 'X100V'", [0, 1]),
    ("camera_model = \"EOS R5\" and iso >= 1000", [2]),
    ("taken >= '2020-01-01' and camera_model == 'X100V'", [1]),
    ("taken < '2020-06-30T12:00:01' or iso > 3000", [0, 1, 4, 5]),
    ("not (folder like 'trips/%')", [2, 3, 5]),
    ("folder like 'trips/%' and not favourite == true", [1, 4]),
    ("camera_model in ('iPhone', 'EOS R5')", [2, 4, 5]),
    ("camera_model not in ('iPhone', 'EOS R5')", [0, 1]),
    ("camera_model is null", [3]),
    ("iso is not null and iso != 200", [1, 2, 3, 5]),
    ("`focal length` <= 23", [0, 1, 5]),
    ("id == 4", [4]),
    ("id >= 0", [0, 1, 2, 3, 4, 5]),
    ("iso > 1e6", []),
])
def test_filters_select_exactly_the_rows_that_match(where: str, expected: list[int]) -> None:
    assert selected_ids(TABLE, where).tolist() == expected


@pytest.mark.parametrize(("where", "named"), [
    ("lens == 'x'", "no column 'lens'"),
    ("iso ~ 3", "cannot read the filter"),
    ("iso >= 'high'", "iso holds int32 values"),
    ("camera_model == 3", "camera_model holds text"),
    ("taken >= 'yesterday'", "'yesterday' is not a timestamp"),
    ("iso >= 100 and", "the end of the filter"),
    ("(iso >= 100", "expected ')'"),
    ("iso 100", "expected an operator after iso"),
    ("", "the filter is empty"),
    ("__import__('os').system('x')", "cannot read the filter"),
    ("__import__ == 'os'", "no column '__import__'"),
    ("iso like '1%'", "'like' needs a text column"),
])
def test_a_bad_filter_is_one_clear_error(where: str, named: str) -> None:
    with pytest.raises(FilterError) as raised:
        parse_filter(where, TABLE.schema)
    assert named in raised.value.problem
    assert raised.value.hint  # what to do instead


def test_random_filters_agree_with_row_by_row_evaluation() -> None:
    rng = np.random.default_rng(0)
    rows = 500
    table = pa.table({"id": pa.array(rng.permutation(rows) * 3, pa.int64()),
                      "iso": pa.array(rng.integers(0, 10, rows), pa.int64()),
                      "tag": pa.array(rng.choice(["a", "b", "c"], rows))})
    records = table.to_pylist()
    for _ in range(50):
        low, high = sorted(rng.integers(0, 10, 2).tolist())
        tag = str(rng.choice(["a", "b", "c"]))
        where = f"iso >= {low} and iso < {high} or tag == '{tag}'"
        expected = sorted(r["id"] for r in records if (low <= r["iso"] < high) or r["tag"] == tag)
        assert selected_ids(table, where).tolist() == expected


def test_positions_are_those_of_the_kept_rows_whatever_the_columns_are_named() -> None:
    table = TABLE.append_column("__position", pa.array([9, 9, 9, 9, 9, 9]))  # a carried column may take any name
    assert selected_positions(table, "camera_model == 'EOS R5' or __position != 9").tolist() == [2, 4]
    assert selected_positions(table.slice(0, 0), "iso > 0").tolist() == []
