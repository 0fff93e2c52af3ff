"""compsearch: property-specific image search built on the components of Vision Transformers.

The public API in one place, imported on first use (PEP 562) so ``import compsearch`` stays
cheap (no torch, no faiss until a name below is used)::

    import compsearch
    loaded = compsearch.load_model("deit_tiny_patch16_224", weights="deit_tiny.safetensors")
    parts = compsearch.decompose(loaded.model, images)          # z = Σ_i c_i
    compsearch.build_index("photos/", "photos.index", model=…)  # shards + FAISS per property
    hits = compsearch.open_index("photos.index").search(compsearch.Term("striped", "pattern"))

The three parts install as ``compsearch.mapping`` (the model side), ``compsearch.indexer``
(the corpus side) and ``compsearch.search`` (the query side); dependencies point one way,
search → indexer → mapping (docs/architecture.md).
"""
from __future__ import annotations

from compsearch.mapping.lazy import lazy_attributes

_EXPORTS = {  # public name -> module defining it, relative to this package
    "load_model": "mapping.models",
    "LoadedModel": "mapping.models",
    "decompose": "mapping.decompose",
    "Decomposition": "mapping.decompose",
    "model_output": "mapping.decompose",
    "preprocess_batch": "mapping.images",
    "open_source": "mapping.images",
    "load_aligner": "mapping.align",
    "Ranking": "mapping.rank",
    "CompsearchError": "mapping.errors",
    "build_index": "indexer.api",
    "IndexSettings": "indexer.settings",
    "open_index": "search.index",
    "SearchIndex": "search.index",
    "Query": "search.query",
    "Term": "search.query",
    "Result": "search.results",
    "SearchResults": "search.results",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_attributes(__name__, _EXPORTS)
