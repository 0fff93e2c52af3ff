"""What a search asks: weighted terms, each one text, one reference image or one indexed
image's id, on one property's index — and the term syntax of the CLI (``[W*]PROPERTY:KIND:VALUE``).

A query's score for an image is Σ_t w_t · cos(v_{p_t}(image), q_t), with q_t the term's
query vector in property p_t's space; a negative weight pushes away ("NOT plain").
"""
from __future__ import annotations

import builtins
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from compsearch.mapping.names import FULL
from compsearch.search.errors import QueryError
from compsearch.search.term_syntax import KINDS, TermParts, read_term

MAX_K = 10_000
MAX_DEPTH = 100_000  # offset + k: how deep a page may reach into the ranking
MAX_ID = 2**63 - 1  # ids are int64 in the shards and in FAISS

if TYPE_CHECKING:  # PIL loads only where an image is read
    import PIL.Image

    ImageInput = Union[str, Path, bytes, PIL.Image.Image]


@dataclass(frozen=True)
class Term:
    """One weighted term: exactly one of ``text``, ``image`` (a path, PIL image or encoded
    bytes) or ``id`` (an indexed image), searched in ``property``'s index (None: ``full``)."""

    property: str | None = None
    text: str | None = None
    image: ImageInput | None = field(default=None, compare=False)
    id: int | None = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        given = [kind for kind in KINDS if getattr(self, kind) is not None]
        if len(given) != 1:
            raise QueryError(f"a query term needs exactly one of text, image or id (got {', '.join(given) or 'none'})",
                             "give one per term; combine several with terms=[Term(…), …] (CLI: --and)")
        if self.text is not None and (not isinstance(self.text, str) or not self.text.strip()):
            raise QueryError("the query text is empty", "give some words, e.g. --text striped")
        if self.id is not None:
            check_id(self.id)
        if not isinstance(self.weight, (int, float)) or not math.isfinite(self.weight) or self.weight == 0:
            raise QueryError(f"term weight {self.weight!r} is not a finite non-zero number",
                             "use a positive weight to attract, a negative one to repel")

    @classmethod
    def from_parts(cls, parts: TermParts) -> Term:
        """The term of :func:`.term_syntax.read_term`'s parts."""
        property_name, kind, value, weight = parts
        return cls(property_name, weight=weight, **{kind: value})

    @builtins.property  # the field `property` shadows the builtin here
    def parts(self) -> TermParts:
        return self.property_name, self.kind, getattr(self, self.kind), self.weight

    @builtins.property
    def kind(self) -> str:
        return next(kind for kind in KINDS if getattr(self, kind) is not None)

    @builtins.property
    def property_name(self) -> str:
        return self.property or FULL

    @builtins.property
    def shown_value(self) -> str | int:
        """The value as a person reads it: the text, the id, the image's path or what it was."""
        if self.kind != "image":
            return getattr(self, self.kind)
        if isinstance(self.image, (str, Path)):
            return str(self.image)
        return "uploaded bytes" if isinstance(self.image, (bytes, bytearray)) else "PIL image"

    @builtins.property
    def label(self) -> str:
        """``property:kind:value`` (an image by its file name): the key of its per-term score."""
        value = self.shown_value
        if self.kind == "image" and isinstance(self.image, (str, Path)):
            value = Path(self.image).name
        return f"{self.property_name}:{self.kind}:{value}"

    def describe(self) -> dict[str, Any]:
        return {"property": self.property_name, "kind": self.kind, "value": self.shown_value, "weight": self.weight}


@dataclass
class Query:
    """One search: a main term (``text``, ``image`` or ``id`` on ``property``, with ``weight``)
    and/or further ``terms``; at least one term in all."""

    text: str | None = None
    image: ImageInput | None = None
    id: int | None = None
    property: str | None = None
    weight: float = 1.0
    terms: list[Term] = field(default_factory=list)

    def all_terms(self) -> list[Term]:
        main = [] if self.text is None and self.image is None and self.id is None else [
            Term(self.property, text=self.text, image=self.image, id=self.id, weight=self.weight)]
        terms = main + list(self.terms or [])
        if not terms:
            raise QueryError("the query is empty", "give a text, an image or an id (or terms)")
        if any(not isinstance(term, Term) for term in terms):
            raise QueryError("terms must be search.Term objects", "write terms=[Term('pattern', text='striped')]")
        return terms


def term_labels(terms: list[Term]) -> list[str]:
    """Each term's label, made unique (``…#2``) where two terms read the same."""
    labels: list[str] = []
    for term in terms:
        label, count = term.label, 1
        while label in labels:
            count += 1
            label = f"{term.label}#{count}"
        labels.append(label)
    return labels


def check_id(image_id: int) -> None:
    """An image id must be an int64 (anything else cannot name an indexed image)."""
    if isinstance(image_id, bool) or not isinstance(image_id, int):
        raise QueryError(f"image id {image_id!r} is not an integer", "give the id of an indexed image")
    if not -MAX_ID - 1 <= image_id <= MAX_ID:
        raise QueryError(f"image id {image_id} is out of range", "ids are 64-bit integers: give a result's `id`")


def check_threshold(threshold: float | None) -> None:
    """None or a finite number: NaN keeps nothing and says nothing, so it is refused."""
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                  or not math.isfinite(threshold)):
        raise QueryError(f"threshold {threshold!r} is not a finite number", "give a score such as 0.2, or none")


def check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise QueryError(f"k = {k!r} is out of range", f"ask for 1 to {MAX_K} results")


def check_offset(offset: int, k: int) -> None:
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0 or offset + k > MAX_DEPTH:
        raise QueryError(f"offset = {offset!r} is out of range",
                         f"give 0 or more, with offset + k at most {MAX_DEPTH:,}")


def parse_term(spec: str, weight: float = 1.0) -> Term:
    """A term from the CLI syntax (:func:`.term_syntax.read_term`), its weight multiplied by
    ``weight`` (``--not`` passes -1)."""
    return Term.from_parts(read_term(spec, weight))
