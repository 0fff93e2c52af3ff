"""The CLI's term syntax, ``[WEIGHT*]PROPERTY:KIND:VALUE``, read into plain parts. Apart from
:mod:`.query` (which makes a :class:`~.query.Term` of them) so that a query sent to a server
reads its ``--and`` / ``--not`` terms without importing dataclasses and typing."""
from __future__ import annotations

import re

from compsearch.search.errors import QueryError

KINDS = ("text", "image", "id")
TERM_SYNTAX = "[WEIGHT*]PROPERTY:KIND:VALUE with KIND text, image or id (e.g. pattern:text:striped, 0.5*colour:image:a.jpg)"
_WEIGHT_PREFIX = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\*(.*)$", re.S)

TermParts = tuple[str, str, "str | int", float]  # property, kind, value, weight


def read_term(spec: str, weight: float = 1.0) -> TermParts:
    """The parts of ``spec`` (the value may hold colons), its weight multiplied by ``weight``
    (``--not`` passes -1); an id's value as an int."""
    matched = _WEIGHT_PREFIX.match(spec)
    if matched:
        weight *= float(matched.group(1))
        spec = matched.group(2)
    pieces = spec.split(":", 2)
    if len(pieces) != 3 or not pieces[0] or pieces[1] not in KINDS or not pieces[2]:
        raise QueryError(f"cannot read the query term {spec!r}", f"write {TERM_SYNTAX}")
    property_name, kind, value = pieces
    if kind != "id":
        return property_name, kind, value, weight
    try:
        return property_name, kind, int(value), weight
    except ValueError:
        raise QueryError(f"image id {value!r} in {spec!r} is not an integer", f"write {TERM_SYNTAX}") from None
