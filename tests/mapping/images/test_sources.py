"""Where a source's files live: the root an index's server confines files to."""
from __future__ import annotations

from pathlib import Path

import pytest

from compsearch.mapping.images import FolderSource, ListFileSource, MemorySource, TableSource, collection_root


def test_collection_root_of_each_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "photos").mkdir()
    monkeypatch.chdir(tmp_path)
    assert collection_root(FolderSource("photos").description) == tmp_path / "photos"  # recorded absolute
    listing, table = tmp_path / "list.txt", tmp_path / "rows.csv"
    listing.write_text("photos/a.jpg\n")
    table.write_text("path,label\nphotos/a.jpg,x\n")
    for source, root in ((FolderSource(tmp_path / "photos"), tmp_path / "photos"), (ListFileSource(listing), tmp_path),
                         (TableSource(table), tmp_path)):
        assert collection_root(source.description) == root
    assert collection_root(MemorySource([]).description) is None
    assert collection_root("folder photos") is None  # relative: where it was is unknown
