"""The corpus side: reading collections, decoding images, writing vectors and FAISS indexes.

``compsearch.indexer.build_index(IMAGES, DIR, model=…)`` builds an index directory;
:class:`~compsearch.indexer.store.IndexStore` reads and writes its files. Heavy imports
happen on first use, so importing this package stays cheap.
"""
from __future__ import annotations

from compsearch.mapping.lazy import lazy_attributes

_EXPORTS = {  # exported name -> submodule defining it
    "build_index": "api",
    "IndexSettings": "settings",
    "IndexSummary": "build",
    "IndexStore": "store",
}
__all__ = list(_EXPORTS)

__getattr__ = lazy_attributes(__name__, _EXPORTS)
