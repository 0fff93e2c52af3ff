"""The query side: opening indexes, text / reference-image / combined queries, HTTP API, web page.

``compsearch.search.open_index(DIR)`` → :class:`compsearch.search.index.SearchIndex`; queries
are built from :class:`~compsearch.search.query.Term` / :class:`~compsearch.search.query.Query`
and answered as :class:`~compsearch.search.results.SearchResults`. Heavy imports (torch,
faiss) happen on first use, so importing this package (and ``compsearch --help``) stays cheap.
"""
from __future__ import annotations

from compsearch.mapping.lazy import lazy_attributes

_EXPORTS = {  # exported name -> submodule defining it
    "open_index": "index",
    "SearchIndex": "index",
    "Query": "query",
    "Term": "query",
    "MAX_K": "query",
    "Result": "results",
    "SearchResults": "results",
}
__all__ = list(_EXPORTS)

__getattr__ = lazy_attributes(__name__, _EXPORTS)
