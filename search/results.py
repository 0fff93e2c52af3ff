"""The one result schema: what the CLI's ``--json`` prints and the HTTP API returns
(:mod:`.render` prints its JSON document in every ``--format``)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class Result:
    rank: int
    id: int
    key: str
    path: str | None
    score: float | None  # total: Σ over terms of weight × cosine (None: browsed, not searched)
    scores: dict[str, float]  # cosine per term, by label ("pattern:text:striped")
    metadata: dict[str, Any]  # carried columns: width, height and any from the listing

    def to_json(self) -> dict[str, Any]:
        """The result as JSON: without ``score`` and ``scores`` when it was browsed."""
        data = asdict(self)
        if self.score is None:
            del data["score"], data["scores"]
        return data


@dataclass
class SearchResults:
    query: dict[str, Any]  # {"terms": [{property, kind, value, weight}], "k", "threshold", "candidates"}
    results: list[Result]
    seconds: dict[str, float]  # encode (text embedding, image decomposition), search, total

    def to_json(self) -> dict[str, Any]:
        """The one JSON shape: ``{"query": …, "results": [...], "seconds": …}``."""
        return {"query": self.query, "results": [result.to_json() for result in self.results], "seconds": self.seconds}

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> SearchResults:
        """The results a :meth:`to_json` document (a server's answer) holds."""
        names = [field.name for field in fields(Result)]  # a newer server may send more
        results = [Result(**{name: result.get(name) for name in names}) for result in document["results"]]
        return cls(query=document["query"], results=results, seconds=document["seconds"])
