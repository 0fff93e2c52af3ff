"""A FAISS index brought up to date with its shards in place of a rebuild, after a sync.

The change is read from the index itself: the ids it holds that no shard holds any more leave
(``remove_ids``), and the shards' ids it lacks are added (``add_with_ids``), their vectors
read from only the parts that hold them. Because the index and the shards are compared, an
update interrupted anywhere is finished by the next run, whatever the plan said.

A rebuild (retrain, retune) is chosen instead when the settings ask for another index type
(``auto`` picking another for the collection's new size), when the type cannot remove ids
(HNSW graphs), or once updates since the build have changed more than :data:`REBUILD_SHARE`
of an approximate index: an inverted file's centroids and its tuned ``nprobe`` fit the
collection it was trained on.

Each update is written as a build is. A one-file index is changed in memory and written to a
temporary file renamed into place. An on-disk inverted file is merged anew, as a build merges
its parts: its current lists first, then parts holding the added vectors, then the removed
ids taken out of the new lists — its lists are never grown in place (faiss's on-disk lists
corrupt ids when a full list grows) and a reader (a server) keeps the lists it has mapped.
An interrupted update leaves the previous index whole.
"""
from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compsearch.indexer.faiss_choice import default_workers, normalised_chunks, write_one_file
from compsearch.indexer.faiss_ondisk import add_parts, lists_path, merge_parts, read_faiss

REBUILD_SHARE = 0.1  # ids removed plus added since the build, as a share of an approximate index

VectorsOf = Callable[[np.ndarray], Iterator[tuple[np.ndarray, np.ndarray]]]  # ids -> (ids, vectors) per part


@dataclass
class Update:
    removed: int
    added: int
    ntotal: int
    seconds: float
    files: list[Path]


def held_ids(index) -> np.ndarray:
    """Every id ``index`` holds (an inverted file's from its lists, any other's from its IDMap)."""
    import faiss

    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return faiss.vector_to_array(faiss.downcast_index(index).id_map).astype(np.int64)
    lists = ivf.invlists
    held = [faiss.rev_swig_ptr(lists.get_ids(number), lists.list_size(number)).copy()
            for number in range(ivf.nlist) if lists.list_size(number)]
    return np.concatenate(held).astype(np.int64) if held else np.zeros(0, np.int64)


def _emptied(index):
    """``index`` (an inverted file opened from disk) with empty lists in memory: the trained
    quantizer (and any transform) to add new vectors to."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    ivf.set_direct_map_type(faiss.DirectMap.NoMap)
    lists = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.replace_invlists(lists, True)
    lists.this.disown()  # the index owns them now
    index.ntotal = ivf.ntotal = 0
    return index


def update_index(path: Path, ids: np.ndarray, vectors_of: VectorsOf, changed_before: int,
                 exact: bool) -> Update | None:
    """Bring the index at ``path`` to hold exactly ``ids`` (the shards'), or ``None`` where a
    rebuild is due (see the module): the type cannot remove ids, or it is approximate (not
    ``exact``: a flat scan, which no change makes stale) and, with ``changed_before`` ids
    changed since its build, this change would pass :data:`REBUILD_SHARE` of it."""
    import faiss

    started = time.perf_counter()
    on_disk = lists_path(path).is_file()
    index = read_faiss(path) if on_disk else faiss.read_index(str(path))  # one file: changed in memory
    held = held_ids(index)
    removed = np.setdiff1d(held, ids, assume_unique=True)
    added = np.setdiff1d(ids, held, assume_unique=True)
    if not exact and changed_before + len(removed) + len(added) > REBUILD_SHARE * max(len(held), 1):
        return None
    if on_disk:
        exact_lookup = faiss.extract_index_ivf(index).direct_map.type == faiss.DirectMap.Hashtable
        with tempfile.TemporaryDirectory(prefix=f".{path.name}.parts-", dir=path.parent) as parts:
            trained = _emptied(read_faiss(path))
            built = add_parts(trained, normalised_chunks(vectors_of(added)), Path(parts), default_workers())
            ntotal = merge_parts(trained, built, path, exact_lookup, base=index, removed=removed).ntotal
        files = [path, lists_path(path)]
    else:
        if len(removed):
            try:
                index.remove_ids(faiss.IDSelectorBatch(len(removed), faiss.swig_ptr(removed)))
            except RuntimeError:  # HNSW keeps no way to unlink a node
                return None
        for part_ids, vectors in normalised_chunks(vectors_of(added)):
            index.add_with_ids(vectors, part_ids)
        write_one_file(index, path)
        ntotal, files = index.ntotal, [path]
    return Update(len(removed), len(added), int(ntotal), time.perf_counter() - started, files)
