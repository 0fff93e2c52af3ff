"""The one result schema: what the CLI's ``--json`` prints and the HTTP API returns."""
from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from typing import Any

FORMATS = ("table", "json", "jsonl", "csv", "paths")


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


def _signed(weight: float, label: str, first: bool) -> str:
    """``label``, ``+ 2×label``, ``− label``, ``− 0.5×label``: a term as it reads in a sum."""
    size = "" if abs(weight) == 1 else f"{abs(weight):g}×"
    sign = ("− " if first else " − ") if weight < 0 else ("" if first else " + ")
    return f"{sign}{size}{label}"


def format_results(results: SearchResults) -> str:
    """The readable table ``compsearch search`` prints: rank, score (and per-term scores when
    several terms are combined), path."""
    terms = results.query["terms"]
    labels = [term["label"] for term in terms]
    query = "".join(_signed(term["weight"], term["label"], first=i == 0) for i, term in enumerate(terms))
    seconds = results.seconds
    lines = [f"{len(results.results)} results for {query} "
             f"(encode {seconds['encode'] * 1e3:.1f} ms, search {seconds['search'] * 1e3:.1f} ms)"]
    if not results.results:
        return "\n".join(lines)
    per_term = len(labels) > 1
    id_width = max(2, *(len(str(result.id)) for result in results.results))
    header = f"{'rank':>4}  {'id':>{id_width}}  {'score':>7}" + "".join(
        f"  {'t' + str(i + 1):>7}" for i in range(len(labels)) if per_term)
    lines.append(header + "  path")
    for result in results.results:
        row = f"{result.rank:>4}  {result.id:>{id_width}}  {result.score:>7.4f}"
        if per_term:
            row += "".join(f"  {result.scores[label]:>7.4f}" for label in labels)
        lines.append(f"{row}  {result.path or result.key}")
    if per_term:
        lines += [f"  t{i + 1} = {label} (weight {term['weight']:g})" for i, (label, term) in enumerate(zip(labels, terms))]
    return "\n".join(lines)


def _csv(results: SearchResults) -> str:
    """One row per result: rank, id, score, key, path, each term's score, then the metadata
    columns (the union over the results, in first-seen order)."""
    labels = [term["label"] for term in results.query["terms"]]
    metadata = list(dict.fromkeys(name for result in results.results for name in result.metadata))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["rank", "id", "score", "key", "path", *(f"score:{label}" for label in labels), *metadata])
    for result in results.results:
        writer.writerow([result.rank, result.id, f"{result.score:.6f}", result.key, result.path or "",
                         *(f"{result.scores[label]:.6f}" for label in labels),
                         *("" if result.metadata.get(name) is None else result.metadata[name] for name in metadata)])
    return out.getvalue().rstrip("\n")


def render(results: SearchResults, format: str = "table") -> str:
    """``results`` as ``format`` says (:data:`FORMATS`): the readable table, the one JSON
    document, one JSON result per line, CSV, or one path per line (for xargs)."""
    if format == "table":
        return format_results(results)
    if format == "json":
        return json.dumps(results.to_json(), indent=2, default=str)
    if format == "jsonl":
        return "\n".join(json.dumps(result.to_json(), default=str) for result in results.results)
    if format == "csv":
        return _csv(results)
    if format == "paths":
        return "\n".join(result.path or result.key for result in results.results)
    raise ValueError(f"unknown format {format!r}; one of {', '.join(FORMATS)}")
