"""An index directory's ``manifest.json`` as one typed, versioned object: one reader, one writer.

The file stays plain JSON a user can read (the keys are the field names below). The reader is
the only place that reads it by key: it checks every field's presence and type and migrates
older format versions, so a damaged manifest is one :class:`IndexDirectoryError` naming the
file, the field and what to do — never a ``KeyError`` in whatever reads it later.

Format versions:

- 1: the first.
- 2: the encoder identity records ``precision``, the arithmetic the vectors were computed in
  (``bf16`` under autocast on CUDA, else ``fp32``), so queries are encoded the same way.
  Version 1 recorded no device; its queries ran in fp32, so it migrates to ``fp32`` (an index
  built on CUDA in version 1 keeps being queried as before).
- 3: ``store``, the component store written beside the shards (:class:`StoreEntry`); older
  indexes have none.
- 4: ``files`` records each file of the index (shard parts, FAISS files) with its size,
  sha256 and row or vector count, so opening an index can check it and ``compsearch verify``
  can find damage (:mod:`indexer.integrity`). Older versions recorded none: ``None``
  ("unknown"), until a finish or ``--repair`` records them.
- 5: an index follows its collection (:mod:`indexer.sync`): each run records ``ids``, how many
  ids its plan reserved (the next run's ids start after every id any run reserved, so none is
  reused), and what it changed (``removed``, ``moved``, ``changed``, ``unchanged``); a run left
  unfinished and re-planned by a later one is ``stopped``. Version 4 ids were listing positions:
  a run reserved one per listed file, which its counts add up to (``added``, ``skipped``,
  ``duplicates``, ``already_indexed``); a run left running reserved an unknown number (0: the
  next run starts after the shards' largest id as well).
- 6: each index records ``changed_since_build``, the ids an update after a sync removed or
  added since the index was built (:mod:`indexer.faiss_update`: past a share of the index, the
  next sync rebuilds it). Version 5 rebuilt every index on every sync: 0. Each file record
  also holds the ``inode`` and ``mtime_ns`` the file had when hashed, so a finish hashes only
  the files written since (every file is written under a temporary name and renamed into
  place: a new inode). Version 5 records: 0 (hashed again once). A compressed index (PQ, SQ)
  records ``exact_file``, the exact vectors beside it that its results are rescored with;
  version 5 had none (results as the compressed codes rank them, until a rebuild).
- 7: the exact vectors are ``exact_files`` (segments: an update adds the new ids' vectors as a
  file of their own) and ``exact_dead`` (their records of ids removed since); version 6 had one
  file, ``exact_file``, and no dead records.
"""
from __future__ import annotations

import json
import os
import types
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Union, get_args, get_origin, get_type_hints

from compsearch.mapping.identity import EncoderIdentity
from compsearch.mapping.chunk_store import read_json
from compsearch.mapping.errors import CompsearchError

MANIFEST = "manifest.json"
FORMAT_VERSION = 7
REBUILD = "rebuild the index (`compsearch index … --overwrite`)"


class IndexDirectoryError(CompsearchError):
    """An index directory that is missing, damaged, or built with other settings."""


@dataclass
class FileEntry:
    """An artifact an index was built with: its content id, and where it was (absolute, and
    relative to the index, so an index moved together with it still finds it)."""

    path: str
    relative_path: str
    id: str


@dataclass
class PropertyEntry:
    """One property as the ranking defined it: its k top components and how they were found."""

    k: int
    components: list[str]
    source: str  # "text" or "examples"
    values: list[str]
    templates: list[str]  # prompt templates for text queries


@dataclass
class Provenance:
    """The files an index's encoder was made from (:func:`indexer.artifacts.encoder_for_build`)."""

    aligner: FileEntry | None = None
    ranking: FileEntry | None = None
    model_weights: FileEntry | None = None  # so image queries find the weights without --weights
    properties: dict[str, PropertyEntry] = field(default_factory=dict)


@dataclass
class RunEntry:
    """One pass over a source: the first build is run 0, each rerun one more."""

    run: int
    id_offset: int
    ids: int  # ids reserved by its plan: id_offset … id_offset + ids - 1
    source: str
    chunk_size: int
    status: Literal["running", "complete", "stopped"]
    started: str
    shards: int = 1  # processes splitting the run (``--shard I/N``)
    finished: str | None = None
    seconds: float | None = None
    added: int = 0
    skipped: int = 0
    duplicates: int = 0
    already_indexed: int = 0
    removed: int = 0
    moved: int = 0
    changed: int = 0
    unchanged: int = 0

    def complete(self, finished: str, seconds: float, counts: Mapping[str, int]) -> None:
        """Mark the run finished with its counts (``RUN_COUNTS``)."""
        self.status, self.finished, self.seconds = "complete", finished, round(seconds, 3)
        for name in RUN_COUNTS:
            setattr(self, name, counts[name])


WRITE_COUNTS = ("added", "skipped", "duplicates", "already_indexed")  # what the write stage counts per unit
SYNC_COUNTS = ("removed", "moved", "changed", "unchanged")  # what a run's plan found (indexer.sync)
RUN_COUNTS = WRITE_COUNTS + SYNC_COUNTS


@dataclass
class IndexEntry:
    """One FAISS index file: what it is and how to search it."""

    file: str
    factory: str  # faiss index_factory string
    ntotal: int
    dim: int
    metric: Literal["inner_product"]
    normalised: bool
    space: str
    search_parameters: dict[str, int]  # e.g. nprobe
    train_seconds: float
    add_seconds: float
    bytes: int
    changed_since_build: int = 0  # ids removed or added by updates since (indexer.faiss_update)
    # beside a compressed index: its exact vectors by id, for rescoring (indexer.exact_vectors), and
    # how many of their records are of ids removed since
    exact_files: list[str] = field(default_factory=list)
    exact_dead: int = 0


@dataclass
class StoreEntry:
    """The component store (``DIR/store``, :mod:`indexer.component_store`): its arrays' dtype
    and, once a part is written, the layout of its rows (:meth:`StoredComponents.layout`)."""

    dtype: str  # "fp16" or "fp32" (scalars always fp32)
    model_weights_id: str  # the weights whose decomposition it holds: expand needs the same
    layout: dict[str, object] | None = None


@dataclass
class FileRecord:
    """One file of the index as the finish stage left it (its key in ``Manifest.files`` is its
    path relative to the index directory)."""

    bytes: int
    sha256: str
    count: int  # a Parquet part's rows, a FAISS file's vectors (ntotal)
    # the file as it was hashed (0: unknown): while both hold, the next finish keeps the record
    inode: int = 0
    mtime_ns: int = 0


@dataclass
class Counts:
    images: int = 0
    skipped: int = 0
    duplicates: int = 0


@dataclass
class Manifest:
    """What an index directory holds, how it was made, and with what."""

    compsearch_version: str
    created: str
    updated: str | None
    encoder: EncoderIdentity
    aligner: FileEntry | None
    ranking: FileEntry | None
    model_weights: FileEntry | None
    properties: dict[str, PropertyEntry]
    runs: list[RunEntry]
    indexes: dict[str, IndexEntry]
    counts: Counts
    store: StoreEntry | None = None
    files: dict[str, FileRecord] | None = None  # None: not recorded (format 3 and older, or not finished yet)

    @classmethod
    def new(cls, encoder: EncoderIdentity, provenance: Provenance, compsearch_version: str, created: str) -> Manifest:
        """The manifest of an index about to be built (no runs, no indexes yet)."""
        return cls(compsearch_version=compsearch_version, created=created, updated=None, encoder=encoder,
                   aligner=provenance.aligner, ranking=provenance.ranking, model_weights=provenance.model_weights,
                   properties=provenance.properties, runs=[], indexes={}, counts=Counts())


# -- reading ------------------------------------------------------------------------------------
class _InvalidField(Exception):
    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where or 'the top level'} {problem}")
        self.where = where


def _type_name(kind: Any) -> str:
    return getattr(kind, "__name__", None) or str(kind).replace("typing.", "")


def _parse(kind: Any, value: Any, where: str) -> Any:
    """``value`` (parsed JSON) checked against the type ``kind`` and built into it."""
    origin = get_origin(kind)
    if origin in (Union, types.UnionType):
        options = [option for option in get_args(kind) if option is not type(None)]
        if value is None and len(options) < len(get_args(kind)):
            return None
        (kind,) = options  # only ``X | None`` is used
        return _parse(kind, value, where)
    if origin is Literal:
        if value not in get_args(kind):
            raise _InvalidField(where, f"is {value!r}, expected one of {', '.join(map(repr, get_args(kind)))}")
        return value
    if origin is list:
        _expect(value, list, "a list", where)
        return [_parse(get_args(kind)[0], item, f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        _expect(value, dict, "an object", where)
        return {key: _parse(get_args(kind)[1], item, f"{where}.{key}") for key, item in value.items()}
    if is_dataclass(kind):
        _expect(value, dict, "an object", where)
        hints = get_type_hints(kind)
        parsed = {}
        for entry in fields(kind):
            name = f"{where}.{entry.name}" if where else entry.name
            if entry.name not in value:
                raise _InvalidField(name, "is missing")
            parsed[entry.name] = _parse(hints[entry.name], value[entry.name], name)
        return kind(**parsed)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _InvalidField(where, f"is {type(value).__name__} {value!r:.40}, expected {_type_name(kind)}")
    return value


def _expect(value: Any, kind: type, description: str, where: str) -> None:
    if not isinstance(value, kind):
        raise _InvalidField(where, f"is {type(value).__name__} {value!r:.40}, expected {description}")


def _from_version_1(data: dict[str, Any]) -> dict[str, Any]:
    """Version 1 left out what a run had not reached yet, and had no precision (see the module)."""
    if isinstance(data.get("encoder"), dict):
        data["encoder"].setdefault("precision", "fp32")
    for key in ("aligner", "ranking", "model_weights", "updated"):  # absent when built without artifacts
        data.setdefault(key, None)
    data.setdefault("properties", {})
    if isinstance(data.get("counts"), dict):  # {} until the first run finished
        data["counts"] = {**asdict(Counts()), **data["counts"]}
    for run in data.get("runs") if isinstance(data.get("runs"), list) else []:
        if isinstance(run, dict):
            for key, default in (("shards", 1), ("finished", None), ("seconds", None)):
                run.setdefault(key, default)
            for key in ("added", "skipped", "duplicates", "already_indexed"):
                run.setdefault(key, 0)
    return data


def _from_version_2(data: dict[str, Any]) -> dict[str, Any]:
    """Version 2 wrote no component store."""
    data.setdefault("store", None)
    return data


def _from_version_3(data: dict[str, Any]) -> dict[str, Any]:
    """Version 3 recorded no files: unknown until a finish or a repair records them."""
    data.setdefault("files", None)
    return data


def _from_version_4(data: dict[str, Any]) -> dict[str, Any]:
    """Version 4 runs reserved listing positions and counted no sync (see the module)."""
    for run in data.get("runs") if isinstance(data.get("runs"), list) else []:
        if isinstance(run, dict):
            listed = sum(run.get(key, 0) for key in ("added", "skipped", "duplicates", "already_indexed")
                         if isinstance(run.get(key), int))
            run.setdefault("ids", listed if run.get("status") == "complete" else 0)
            for key in SYNC_COUNTS:
                run.setdefault(key, 0)
    return data


def _from_version_5(data: dict[str, Any]) -> dict[str, Any]:
    """Version 5 rebuilt every index on every sync (none has changed since its build) and
    recorded no file's inode or mtime (unknown: 0)."""
    for key, defaults in (("indexes", {"changed_since_build": 0, "exact_file": None}),
                          ("files", {"inode": 0, "mtime_ns": 0})):
        for entry in data[key].values() if isinstance(data.get(key), dict) else []:
            if isinstance(entry, dict):
                for name, value in defaults.items():
                    entry.setdefault(name, value)
    return data


def _from_version_6(data: dict[str, Any]) -> dict[str, Any]:
    """Version 6 kept a compressed index's exact vectors in one file, rewritten by each update."""
    for entry in data["indexes"].values() if isinstance(data.get("indexes"), dict) else []:
        if isinstance(entry, dict):
            exact = entry.pop("exact_file", None)
            entry.setdefault("exact_files", [exact] if exact else [])
            entry.setdefault("exact_dead", 0)
    return data


MIGRATIONS = {1: _from_version_1, 2: _from_version_2, 3: _from_version_3, 4: _from_version_4,
              5: _from_version_5, 6: _from_version_6}  # version → next version's shape


def parse_manifest(data: Any, path: Path) -> Manifest:
    """A manifest from the JSON read from ``path``: migrated to this version, then checked."""
    if not isinstance(data, dict):
        raise IndexDirectoryError(f"{path} is not a JSON object", REBUILD)
    version = data.pop("format_version", None)
    while version in MIGRATIONS:
        data, version = MIGRATIONS[version](data), version + 1
    if version != FORMAT_VERSION:
        raise IndexDirectoryError(
            f"{path} has index format {version}, this compsearch reads {FORMAT_VERSION} and older",
            f"open it with the compsearch that built it, or {REBUILD}",
        )
    try:
        return _parse(Manifest, data, "")
    except _InvalidField as error:
        raise IndexDirectoryError(f"{path}: field {error}",
                                  f"restore the field, or {REBUILD}") from None


def read_manifest(folder: Path) -> Manifest:
    """The manifest of the index directory ``folder``; any problem is an IndexDirectoryError."""
    path = folder / MANIFEST
    if not path.is_file():
        raise IndexDirectoryError(f"{folder} is not a compsearch index (no {MANIFEST})",
                                  "build one with `compsearch index IMAGES --out DIR --model …`")
    return parse_manifest(read_json(path, REBUILD), path)  # unparsable: the chunk store's DamagedFileError


# -- writing ------------------------------------------------------------------------------------
def write_manifest(folder: Path, manifest: Manifest) -> None:
    """Write ``manifest`` into ``folder`` atomically, in this format version."""
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{MANIFEST}.{os.getpid()}.tmp"  # shards of one run may write at once
    temporary.write_text(json.dumps({"format_version": FORMAT_VERSION, **asdict(manifest)}, indent=1) + "\n")
    os.replace(temporary, folder / MANIFEST)
