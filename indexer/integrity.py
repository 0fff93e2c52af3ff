"""An index checks itself: each file's size, count and checksum, recorded and compared.

The finish stage records every file of the directory in ``Manifest.files`` (:func:`record_files`):
its size, sha256 and its row count (a Parquet part) or vector count (a FAISS file). Recording
there, not as each part is written, is race-free (the processes of a ``--shard I/N`` run each
rewrite the manifest; only the final plain run finishes) and holds for parts that a later stage
rewrites (de-duplication, removals): whatever finish saw last is what is recorded.

Two checks compare the directory with the record:

- :func:`cheap_check` (every :class:`~search.index.SearchIndex` open): sizes from the file
  system, row counts from the Parquet footers, no checksum (a FAISS file's vector count is
  checked when the search side reads it: :func:`check_count`) — a deleted, truncated or swapped
  file is refused before a query gives a wrong answer or a traceback;
- :func:`full_check` (``compsearch verify``): every checksum too, so flipped bytes show.

sha256 it is: measured on this project's machine (``hashlib``, 256 MiB) it ran at about 560 MB/s
against 260 MB/s for blake2b (SHA extensions in the CPU); xxhash is not a dependency.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from compsearch.indexer.exact_vectors import EXACT_SUFFIX, count_exact_vectors
from compsearch.indexer.manifest import FileRecord, IndexDirectoryError, Manifest
from compsearch.mapping.errors import reason
from compsearch.indexer.store import DUPLICATES, SHARDS, SKIPPED, IndexStore

BLOCK = 1 << 22
PART_KINDS = (SHARDS, SKIPPED, DUPLICATES)


class DamagedIndexError(IndexDirectoryError):
    """A file of an index that differs from what its manifest records (missing, resized, altered)."""


@dataclass
class Damage:
    """One damaged file: which, what is wrong, and what repairs it."""

    file: str  # relative to the index directory
    problem: str

    @property
    def is_faiss(self) -> bool:
        """A FAISS file or the exact vectors beside one: made again from the shards."""
        return self.file.endswith((".faiss", EXACT_SUFFIX))

    def repair(self, folder: Path) -> str:
        """What brings the file back: a FAISS file is rebuilt from the shards; a part holds
        encoded images, so repair drops it and an ``--append`` run encodes its files again."""
        if self.is_faiss:
            return f"`compsearch index IMAGES --out {folder} --repair` rebuilds it from the shards"
        return (f"`compsearch index IMAGES --out {folder} --repair` removes it, then "
                f"`compsearch index IMAGES --out {folder} --append` encodes its images again")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _count(path: Path) -> int:
    """Rows of a Parquet part (its footer), vectors of a FAISS file (ntotal) or of an
    exact-vectors file (its header)."""
    from compsearch.indexer.faiss_ondisk import read_faiss  # faiss loads only where a FAISS file is read

    if path.name.endswith(EXACT_SUFFIX):
        return count_exact_vectors(path)
    return int(read_faiss(path).ntotal) if path.suffix == ".faiss" else pq.read_metadata(path).num_rows


def index_files(store: IndexStore, manifest: Manifest) -> list[Path]:
    """The files the record covers: every part of every kind, and the manifest's FAISS files
    (with the exact vectors beside a compressed one)."""
    parts = [path for kind in PART_KINDS for path in store.parts(kind).parts()]
    return parts + [store.folder / file for entry in manifest.indexes.values()
                    for file in (entry.file, *entry.exact_files)]


def record_files(store: IndexStore, manifest: Manifest) -> None:
    """Record every file of the directory in ``manifest.files`` as it is now (the caller writes it).

    A file with the inode, modification time and size of its previous record keeps that record
    unread: every file is written under a temporary name and renamed into place, so one written
    since has a new inode. A sync that changed a few parts of a large index hashes those parts
    and its FAISS files, not the whole directory again."""
    earlier = manifest.files or {}
    manifest.files = {}
    for path in index_files(store, manifest):
        key, stat = path.relative_to(store.folder).as_posix(), path.stat()
        record = earlier.get(key)
        if record is None or (record.inode, record.mtime_ns, record.bytes) != (stat.st_ino, stat.st_mtime_ns,
                                                                                 stat.st_size):
            record = FileRecord(bytes=stat.st_size, sha256=sha256(path), count=_count(path), inode=stat.st_ino,
                                mtime_ns=stat.st_mtime_ns)
        manifest.files[key] = record


def _check_one(path: Path, record: FileRecord, checksum: bool) -> str | None:
    """What is wrong with ``path`` against its record, None when it matches. Without
    ``checksum`` a FAISS file's count is left to the search side, which reads it anyway."""
    if not path.is_file():
        return "is missing"
    size = path.stat().st_size
    if size != record.bytes:
        return f"has {size} bytes, the manifest records {record.bytes}"
    if not checksum and path.suffix == ".faiss":
        return None
    try:
        count = _count(path)
    except Exception as error:  # noqa: BLE001 - pyarrow and faiss raise their own kinds: report the file
        return f"cannot be read ({reason(error)})"
    if count != record.count:
        return f"holds {count} rows or vectors, the manifest records {record.count}"
    if checksum and record.sha256 and sha256(path) != record.sha256:
        return "has other bytes than were written (its sha256 differs)"
    return None


def _records(manifest: Manifest) -> dict[str, FileRecord]:
    """What to compare with: the record, or for an index built before files were recorded, its
    FAISS files' sizes and counts as each :class:`~indexer.manifest.IndexEntry` has them (no checksum)."""
    if manifest.files is not None:
        return manifest.files
    return {entry.file: FileRecord(bytes=entry.bytes, sha256="", count=entry.ntotal)
            for entry in manifest.indexes.values()}


def check_files(store: IndexStore, manifest: Manifest, checksum: bool) -> list[Damage]:
    """Every recorded file that differs from its record ([] when none)."""
    found = []
    for name, record in _records(manifest).items():
        problem = _check_one(store.folder / name, record, checksum)
        if problem is not None:
            found.append(Damage(name, problem))
    return found


def damage_error(store: IndexStore, damage: list[Damage]) -> DamagedIndexError:
    """One error for the first damaged file (and how many more), naming what repairs it."""
    first = damage[0]
    more = f" (and {len(damage) - 1} more damaged files: `compsearch verify {store.folder}` lists them)" \
        if len(damage) > 1 else ""
    return DamagedIndexError(f"{store.folder / first.file} {first.problem}{more}", first.repair(store.folder))


def cheap_check(store: IndexStore, manifest: Manifest) -> None:
    """Sizes and counts against the record (no checksums); a :class:`DamagedIndexError` on damage."""
    damage = check_files(store, manifest, checksum=False)
    if damage:
        raise damage_error(store, damage)


def check_count(store: IndexStore, file: str, count: int, recorded: int) -> None:
    """A FAISS file read for queries holds the vectors its manifest records, or is refused."""
    if count != recorded:
        raise damage_error(store, [Damage(file, f"holds {count} vectors, the manifest records {recorded}")])


@dataclass
class VerifyReport:
    """What ``compsearch verify`` found."""

    folder: str
    files: int  # checked
    bytes: int
    damage: list[Damage]
    recorded: bool  # False: built before format 3, nothing to compare with

    def summary(self) -> str:
        if not self.recorded:
            return (f"{self.folder}: no checksums recorded (built by an older compsearch) — "
                    f"`compsearch index IMAGES --out {self.folder} --repair` records them")
        if not self.damage:
            return f"{self.folder}: sound — {self.files} files, {self.bytes / (1 << 20):.1f} MiB, every checksum matches"
        return f"{self.folder}: {len(self.damage)} of {self.files} files damaged"


def full_check(folder: str | Path) -> VerifyReport:
    """Every recorded file's size, count and sha256 (``compsearch verify``)."""
    store = IndexStore(folder)
    manifest = store.read_manifest()
    files = _records(manifest)
    return VerifyReport(folder=str(store.folder), files=len(files), bytes=sum(r.bytes for r in files.values()),
                        damage=check_files(store, manifest, checksum=True), recorded=manifest.files is not None)
