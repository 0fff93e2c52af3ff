"""The query side: opening indexes, text / reference-image / combined queries, HTTP API, web page.

``search.open_index(DIR)`` → :class:`search.index.SearchIndex`; queries are built from
:class:`search.query.Term` / :class:`search.query.Query` and answered as
:class:`search.results.SearchResults`. Heavy imports (torch, faiss) happen on first use, so
``import search`` (and ``compsearch --help``) stays cheap.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "open_index": "search.index",
    "SearchIndex": "search.index",
    "Query": "search.query",
    "Term": "search.query",
    "MAX_K": "search.query",
    "Result": "search.results",
    "SearchResults": "search.results",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'search' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
