"""Inverted-file indexes built part by part and merged on disk, and opened memory-mapped.

A collection too large for one process is added shard by shard: each shard's vectors go into
inverted lists of their own (a copy of the trained, empty index, written as one part file —
any process or machine can make a part), and the parts are merged into one
``OnDiskInvertedLists`` file (``NAME.ivfdata``) beside the index file (``NAME.faiss``, which
holds the trained quantizer and where each list lies). Searching memory-maps the lists: only
the probed ones are read.

The index file records the lists file by its full path at build time; it is opened with
``IO_FLAG_ONDISK_SAME_DIR`` (the lists file looked up beside the index file) so that an index
directory still opens after it is moved or copied.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np

from compsearch.indexer.manifest import IndexDirectoryError

LISTS_SUFFIX = ".ivfdata"


def lists_path(index_path: Path) -> Path:
    """Where the inverted lists of the on-disk index ``index_path`` lie."""
    return index_path.with_suffix(LISTS_SUFFIX)


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """faiss's on-disk lists ``printf`` to stdout ("resizing …", "updating ondisk filename …"),
    which would corrupt a ``--format json`` answer: that file descriptor is pointed at
    /dev/null meanwhile (C's buffer flushed before it is restored)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            try:
                yield
            finally:
                ctypes.CDLL(None).fflush(None)
                os.dup2(saved, 1)
    finally:
        os.close(saved)


def add_part(trained: faiss.Index, ids: np.ndarray, vectors: np.ndarray, path: Path) -> Path:
    """``vectors`` (normalised) with their ``ids`` added to a copy of the empty ``trained``
    index, written to ``path``: one part of an index to merge."""
    part = faiss.clone_index(trained)
    part.add_with_ids(vectors, ids.astype(np.int64))
    faiss.write_index(part, str(path))
    return path


def add_parts(trained: faiss.Index, chunks: Iterable[tuple[np.ndarray, np.ndarray]], folder: Path,
              workers: int) -> list[Path]:
    """One part file in ``folder`` per chunk, ``workers`` added at once (faiss releases the GIL;
    at most ``workers`` chunks wait in memory)."""
    paths: list[Path] = []
    pending: list[Future] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for number, (ids, vectors) in enumerate(chunks):
            if len(pending) >= workers:
                pending.pop(0).result()
            path = folder / f"part-{number:06d}.faiss"
            pending.append(pool.submit(add_part, trained, ids, vectors, path))
            paths.append(path)
        for future in pending:
            future.result()
    return paths


def merge_parts(trained: faiss.Index, parts: list[Path], path: Path, exact_lookup: bool, *,
                base: faiss.Index | None = None, removed: np.ndarray | None = None) -> faiss.Index:
    """The parts merged into ``trained`` (left empty) with their lists in one on-disk file, the
    index written to ``path`` and the lists to ``lists_path(path)``, replacing any earlier pair.
    ``exact_lookup``: keep a hash table from id to list position (``reconstruct(id)``).
    An update (:mod:`indexer.faiss_update`) passes ``base``, the index as it was, whose lists
    come first, and the ids ``removed`` from it.

    Both files are made in a scratch folder beside ``path`` under their final names, then moved
    in (lists first): an interrupted merge leaves the previous index whole."""
    scratch = path.parent / f".{path.name}.merge"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        index = faiss.clone_index(trained)
        sources = [faiss.extract_index_ivf(base).invlists] if base is not None else []
        opened = [faiss.read_index(str(part), faiss.IO_FLAG_MMAP) for part in parts]  # lists not read into memory
        sources += [faiss.extract_index_ivf(part).invlists for part in opened]
        ivf = faiss.extract_index_ivf(index)
        lists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(scratch / lists_path(path).name))
        pointers = faiss.InvertedListsPtrVector()
        for source in sources:
            pointers.push_back(source)
        with quiet_stdout():
            index.ntotal = ivf.ntotal = lists.merge_from_multiple(pointers.data(), pointers.size(), False)
        ivf.replace_invlists(lists, True)
        lists.this.disown()  # the index owns them now
        if removed is not None and len(removed):
            index.remove_ids(faiss.IDSelectorBatch(len(removed), faiss.swig_ptr(removed)))
        if exact_lookup:
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        faiss.write_index(index, str(scratch / path.name))
        del index, ivf, lists, sources, opened  # unmaps the lists before they move
        move_in(scratch, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return read_faiss(path)


def move_in(scratch: Path, path: Path) -> None:
    """The index and lists files made in ``scratch`` under their final names moved to ``path``
    and beside it, the lists first (the index file says where in them each list lies)."""
    os.replace(scratch / lists_path(path).name, lists_path(path))
    os.replace(scratch / path.name, path)


def read_faiss(path: Path) -> faiss.Index:
    """``path`` as the search layer opens it: an on-disk index with its lists memory-mapped from
    the file beside it (wherever the folder now is), any other memory-mapped read-only where
    faiss can (read into memory where the type cannot be mapped)."""
    if lists_path(path).is_file():
        with quiet_stdout():
            return faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)
    try:
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError:
        index = faiss.read_index(str(path))
    try:
        lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
    except RuntimeError:
        return index  # not an inverted file
    if isinstance(lists, faiss.OnDiskInvertedLists) and lists.filename:  # lists in another file (memory-mapped
        # lists inside the index file have none): read, but searching would crash
        raise IndexDirectoryError(f"{lists_path(path)} is missing (the inverted lists of {path.name})",
                                  "copy it beside the index file, or rebuild the index")
    return index
