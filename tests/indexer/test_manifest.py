"""The manifest: one typed object, read by one reader that checks every field (a missing or
mistyped one is one error naming the file and the field) and opens older format versions."""
from __future__ import annotations

import json
import re
import sys
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import pytest

from compsearch.indexer.info import index_info
from compsearch.indexer.manifest import (
    FORMAT_VERSION,
    MANIFEST,
    Counts,
    FileEntry,
    FileRecord,
    IndexDirectoryError,
    IndexEntry,
    Manifest,
    PropertyEntry,
    Provenance,
    RunEntry,
    StoreEntry,
    read_manifest,
    write_manifest,
)
from compsearch.mapping.errors import CompsearchError
from compsearch.mapping.identity import EncoderIdentity
from compsearch.search.launch import main
from compsearch.search.server.app import create_app


def _file(name: str) -> FileEntry:
    return FileEntry(path=f"/data/{name}", relative_path=f"../{name}", id=f"{name}-id")


def sample() -> Manifest:
    """A manifest with every optional part filled in, so each field is there to take away."""
    identity = EncoderIdentity(model_name="vit", model_weights_id="w1", first_block="blocks.4", space="clip",
                               aligner_id="a1", clip_name="clip", clip_weights_id="c1", precision="bf16",
                               properties={"colour": ["blocks.9.mlp", "init"]})
    colour = PropertyEntry(k=2, components=["blocks.9.mlp", "init"], source="text", values=["red", "blue"],
                           templates=["a {} thing."])
    provenance = Provenance(aligner=_file("aligner.safetensors"), ranking=_file("ranking.json"),
                            model_weights=_file("vit.safetensors"), properties={"colour": colour})
    manifest = Manifest.new(identity, provenance, "0.1", "2026-01-01T00:00:00+00:00")
    run = RunEntry(run=0, id_offset=0, ids=10, source="folder /data/photos", chunk_size=1000, status="running",
                   started="2026-01-01T00:00:01+00:00")
    run.complete("2026-01-01T00:01:00+00:00", 59.0004, {"added": 9, "skipped": 1, "duplicates": 0, "already_indexed": 0,
                                                       "removed": 2, "moved": 1, "changed": 1, "unchanged": 3})
    manifest.runs.append(run)
    manifest.indexes["full"] = IndexEntry(file="full.faiss", factory="Flat", ntotal=9, dim=512, metric="inner_product",
                                          normalised=True, space="clip", search_parameters={}, train_seconds=0.0,
                                          add_seconds=0.01, bytes=18477)
    manifest.counts = Counts(images=9, skipped=1, duplicates=0)
    manifest.files = {"full.faiss": FileRecord(bytes=18477, sha256="ab" * 32, count=9)}
    manifest.updated = "2026-01-01T00:01:00+00:00"
    manifest.store = StoreEntry(dtype="fp16", model_weights_id="w1")  # layout: free JSON, see below
    return manifest


def field_paths(value: Any, where: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Every field of a manifest, as the keys that lead to it in its JSON."""
    paths = []
    if is_dataclass(value):
        for entry in fields(value):
            paths.append((*where, entry.name))
            paths += field_paths(getattr(value, entry.name), (*where, entry.name))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            paths += field_paths(item, (*where, i))
    elif isinstance(value, dict):
        for key, item in value.items():
            paths += field_paths(item, (*where, key))
    return paths


FIELDS = [("format_version",), *field_paths(sample())]


def shown(path: tuple[str | int, ...]) -> str:
    """The field as the error names it: ``runs[0].status``."""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path).lstrip(".")


def written(folder: Path) -> dict[str, Any]:
    write_manifest(folder, sample())
    return json.loads((folder / MANIFEST).read_text())


def edit(folder: Path, path: tuple[str | int, ...], value: Any = ...) -> None:
    """Take the field at ``path`` out of the manifest in ``folder`` (or set it to ``value``)."""
    data = written(folder)
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    if value is ...:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    (folder / MANIFEST).write_text(json.dumps(data))


def test_a_manifest_reads_back_as_written(tmp_path: Path) -> None:
    write_manifest(tmp_path, sample())
    read = read_manifest(tmp_path)
    assert read == sample() and read.encoder.precision == "bf16"
    assert json.loads((tmp_path / MANIFEST).read_text())["format_version"] == FORMAT_VERSION == 7
    assert not list(tmp_path.glob(".*.tmp"))  # written to a temporary name, then renamed


@pytest.mark.parametrize("path", FIELDS, ids=shown)
def test_a_missing_field_is_one_error_naming_the_file_and_the_field(tmp_path: Path, path: tuple) -> None:
    edit(tmp_path, path)
    with pytest.raises(IndexDirectoryError) as raised:
        read_manifest(tmp_path)
    message = str(raised.value)
    assert str(tmp_path / MANIFEST) in message and "\n" not in message
    assert (f"field {shown(path)} is missing" in message if path != ("format_version",) else "format None" in message)
    assert "--overwrite" in message  # what to do


def _wrong(value: Any) -> Any:
    """A value of the wrong type for a field holding ``value``."""
    return "text" if isinstance(value, (list, dict, int, float)) and not isinstance(value, str) else 7


@pytest.mark.parametrize("path", [path for path in FIELDS if path != ("format_version",)], ids=shown)
def test_a_field_of_the_wrong_type_is_one_error_naming_it(tmp_path: Path, path: tuple) -> None:
    data = written(tmp_path)
    value = data
    for part in path:
        value = value[part]
    edit(tmp_path, path, _wrong(value))
    with pytest.raises(IndexDirectoryError, match=rf"^{re.escape(str(tmp_path / MANIFEST))}: field {re.escape(shown(path))} is "):
        read_manifest(tmp_path)


def test_a_literal_field_takes_only_its_values(tmp_path: Path) -> None:
    edit(tmp_path, ("encoder", "precision"), "fp8")
    with pytest.raises(IndexDirectoryError, match=r"field encoder\.precision is 'fp8', expected one of 'fp32', 'bf16'"):
        read_manifest(tmp_path)


def test_a_version_1_manifest_opens_as_computed_in_fp32(tmp_path: Path) -> None:
    """Version 1 had no precision, and left out what a run or a build without artifacts had not set."""
    data = written(tmp_path)
    data["format_version"] = 1
    del data["encoder"]["precision"], data["updated"], data["aligner"], data["ranking"], data["model_weights"]
    del data["properties"], data["files"]
    data["counts"] = {}
    data["runs"][0] = {key: data["runs"][0][key] for key in ("run", "id_offset", "source", "chunk_size", "status", "started")}
    data["runs"][0]["status"] = "running"  # killed before it finished
    (tmp_path / MANIFEST).write_text(json.dumps(data))
    read = read_manifest(tmp_path)
    assert read.encoder.precision == "fp32" and read.counts == Counts() and read.properties == {}
    assert read.runs[0].status == "running" and read.runs[0].shards == 1 and read.aligner is None
    assert read.files is None  # no files recorded before version 3: unknown


def test_a_version_2_manifest_has_no_store_and_a_layout_reads_back(tmp_path: Path) -> None:
    data = written(tmp_path)
    data["format_version"] = 2
    del data["store"]
    (tmp_path / MANIFEST).write_text(json.dumps(data))
    assert read_manifest(tmp_path).store is None
    manifest = sample()
    manifest.store.layout = {"format": "compsearch.component-store/1", "arrays": [{"name": "init", "shape": [192]}]}
    write_manifest(tmp_path, manifest)
    assert read_manifest(tmp_path).store == manifest.store


def test_a_version_4_manifest_opens_with_the_ids_its_runs_reserved_and_nothing_synced(tmp_path: Path) -> None:
    """Version 4 ids were listing positions: a complete run reserved one per file it listed (what
    its counts add up to); a run left running, an unknown number (0: the shards' largest id
    bounds it); no sync counts."""
    data = written(tmp_path)
    data["format_version"] = 4
    data["runs"].append({**data["runs"][0], "run": 1, "id_offset": 10, "status": "running"})
    for run in data["runs"]:
        for key in ("ids", "removed", "moved", "changed", "unchanged"):
            del run[key]
    (tmp_path / MANIFEST).write_text(json.dumps(data))
    complete, running = read_manifest(tmp_path).runs
    assert (complete.ids, complete.removed, complete.moved, complete.changed, complete.unchanged) == (10, 0, 0, 0, 0)
    assert complete.added == 9 and running.ids == 0
    data["runs"][0]["status"] = "stopped"  # a status version 4 did not know
    data["format_version"] = 5
    data["runs"][0].update(ids=10, removed=0, moved=0, changed=0, unchanged=0)
    data["runs"][1].update(ids=0, removed=0, moved=0, changed=0, unchanged=0)
    (tmp_path / MANIFEST).write_text(json.dumps(data))
    assert read_manifest(tmp_path).runs[0].status == "stopped"


def test_a_version_5_manifest_opens_with_no_index_changed_since_its_build_and_no_file_stamps(tmp_path: Path) -> None:
    data = written(tmp_path)
    data["format_version"] = 5
    del data["indexes"]["full"]["changed_since_build"], data["files"]["full.faiss"]["inode"]
    del data["files"]["full.faiss"]["mtime_ns"]
    (tmp_path / MANIFEST).write_text(json.dumps(data))
    read = read_manifest(tmp_path)
    assert read.indexes["full"].changed_since_build == 0 and read.files["full.faiss"].mtime_ns == 0


def test_a_version_6_manifests_one_exact_file_becomes_its_first_segment(tmp_path: Path) -> None:
    data = written(tmp_path)
    data["format_version"] = 6
    entry = {key: value for key, value in data["indexes"]["full"].items() if key not in ("exact_files", "exact_dead")}
    for name, exact in (("full", "full.exact.npy"), ("colour", None)):
        data["indexes"][name] = {**entry, "file": f"{name}.faiss", "exact_file": exact}
    (tmp_path / MANIFEST).write_text(json.dumps(data))
    read = read_manifest(tmp_path).indexes
    assert (read["full"].exact_files, read["full"].exact_dead, read["colour"].exact_files) == (["full.exact.npy"], 0, [])


@pytest.mark.parametrize(("content", "message"), [
    ('{"format_version": 99}', "has index format 99, this compsearch reads 7 and older"),
    ("[1, 2]", "is not a JSON object"),
    ("{not json", "cannot read"),
])
def test_an_unreadable_manifest_is_one_error(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / MANIFEST).write_text(content)
    with pytest.raises(CompsearchError, match=re.escape(message)):  # IndexDirectoryError, or DamagedFileError
        read_manifest(tmp_path)


@pytest.fixture
def damaged(tmp_path: Path) -> Path:
    """An index directory whose manifest lacks ``indexes``."""
    edit(tmp_path, ("indexes",))
    return tmp_path


@pytest.mark.parametrize("arguments", [["info"], ["search", "--text", "red"], ["serve", "--port", "0"]],
                         ids=lambda arguments: arguments[0])
def test_info_search_and_serve_say_what_is_missing_in_one_line(damaged: Path, arguments: list[str],
                                                               monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["compsearch", arguments[0], str(damaged), *arguments[1:]])
    with pytest.raises(SystemExit) as exited:
        main()
    err = capsys.readouterr().err
    assert exited.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ") and "field indexes is missing" in err and str(damaged / MANIFEST) in err


def test_the_app_factory_and_index_info_refuse_a_damaged_manifest(damaged: Path) -> None:
    for call in (lambda: create_app(damaged), lambda: index_info(damaged)):
        with pytest.raises(IndexDirectoryError, match="field indexes is missing"):
            call()
