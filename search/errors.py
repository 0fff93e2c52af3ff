"""Errors a search can raise that the user can fix (all :class:`CompsearchError`s: the CLI
prints them as one line and exits with status 2, the HTTP API answers them as 4xx)."""
from __future__ import annotations

from compsearch.mapping.errors import CompsearchError, ImageReadError

__all__ = ["ImageReadError", "NoTextEncoderError", "QueryError", "UnknownImageError", "UnknownPropertyError"]


class QueryError(CompsearchError):
    """A malformed query: nothing or too much asked, empty text, k out of range, bad term."""


class UnknownPropertyError(QueryError):
    """A property the index has no vectors for."""


class NoTextEncoderError(QueryError):
    """A text query on an index whose vectors are not in a CLIP space."""


class UnknownImageError(QueryError):
    """An image id that is not in the index."""
