"""The corpus side: reading collections, decoding images, writing vectors and FAISS indexes.

``indexer.build_index(IMAGES, DIR, model=…)`` builds an index directory and
``indexer.open_index(DIR)`` reads one (:class:`indexer.store.IndexStore`). Heavy imports
happen on first use, so ``import indexer`` stays cheap.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from indexer.store import IndexStore


def build_index(*args: Any, **kwargs: Any):
    from indexer.api import build_index as build

    return build(*args, **kwargs)


def open_index(folder: str | Path) -> IndexStore:
    """The index directory ``folder``, its manifest checked."""
    from indexer.store import IndexStore

    store = IndexStore(folder)
    store.read_manifest()
    return store
