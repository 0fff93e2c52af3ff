"""A resumable chunk store: one part file per finished chunk, written atomically.

Both long passes over a collection (the alignment feature cache, the index's shards) are
cut into chunks by :mod:`mapping.images.plan` and keep what they finished in one of these:

- a part is written under a temporary name and renamed, so a part on disk *is* a finished
  chunk whatever moment the process was killed at (``kill -9`` included), and the chunks to
  redo are found by listing the folder (:meth:`ChunkStore.done`), not by trusting a record;
- parts are named by run and chunk (``part-RRR-CCCCCC.<suffix>``), so the processes of a
  partitioned run write into one folder without clashing;
- a file that cannot be read (a damaged part or manifest) is one :class:`DamagedFileError`
  naming the file and what to do, never a parser's traceback;
- Ctrl-C keeps the finished parts and raises one :class:`~mapping.errors.Interrupted`
  (:func:`interrupted`) saying how many images are kept and to rerun the same command.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from compsearch.mapping.errors import CompsearchError, Interrupted, reason

T = TypeVar("T")
RERUN = "rerun the same command to continue where it stopped"


class DamagedFileError(CompsearchError):
    """A file of a store (a part, a manifest) that exists but cannot be read."""


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write`` the file to a temporary name beside ``path``, then rename it into place. The
    temporary name carries the process id: processes of one run may write the same file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
    except BaseException:  # a failed or interrupted write leaves nothing behind
        temporary.unlink(missing_ok=True)
        raise
    os.replace(temporary, path)


def write_json(path: Path, value: Any) -> None:
    write_atomically(path, lambda temporary: temporary.write_text(json.dumps(value, indent=1) + "\n"))


def read_file(path: Path, read: Callable[[Path], T], hint: str) -> T:
    """``read(path)``, any failure to parse it turned into one :class:`DamagedFileError`."""
    try:
        return read(path)
    except Exception as error:  # noqa: BLE001 - every parser raises its own kind: name the file instead
        raise DamagedFileError(f"cannot read {path} ({reason(error)})", hint) from error


def read_json(path: Path, hint: str) -> Any:
    return read_file(path, lambda p: json.loads(p.read_text()), hint)


def interrupted(kept: int, listed: int, folder: Path, why: str = "interrupted") -> Interrupted:
    """The one error of a pass stopped (by Ctrl-C, or ``why``) after its finished chunks were kept."""
    return Interrupted(f"{why}: {kept} of {listed} images are done and kept in {folder}", RERUN)


def part_name(run: int, chunk: int, suffix: str) -> str:
    return f"part-{run:03d}-{chunk:06d}{suffix}"


def parse_part_name(name: str, suffix: str) -> tuple[int, int] | None:
    """``(run, chunk)`` of a part file name, None for anything else (temporary files)."""
    pieces = name.removesuffix(suffix).split("-")
    if not name.endswith(suffix) or len(pieces) != 3 or pieces[0] != "part":
        return None
    try:
        return int(pieces[1]), int(pieces[2])
    except ValueError:
        return None


class ChunkStore:
    """The part files of one folder (see the module docstring); what a part holds is its
    user's business (Parquet rows, safetensors tensors)."""

    def __init__(self, folder: Path, suffix: str) -> None:
        self.folder = folder
        self.suffix = suffix

    def path(self, run: int, chunk: int) -> Path:
        return self.folder / part_name(run, chunk, self.suffix)

    def parts(self) -> list[Path]:
        """Every finished part, in (run, chunk) order."""
        if not self.folder.is_dir():
            return []
        return sorted(path for path in self.folder.iterdir() if parse_part_name(path.name, self.suffix))

    def done(self, run: int = 0) -> set[int]:
        """Chunks of ``run`` whose part is on disk (finished)."""
        found = (parse_part_name(path.name, self.suffix) for path in self.parts())
        return {chunk for r, chunk in found if r == run}

    def write(self, run: int, chunk: int, write: Callable[[Path], None]) -> Path:
        """Write one chunk's part atomically (the rename marks the chunk finished)."""
        path = self.path(run, chunk)
        write_atomically(path, write)
        return path
