"""The one result document (:meth:`SearchResults.to_json`, the HTTP API's answer) printed as
``compsearch search --format`` asks. It works on the JSON document itself, not the dataclasses,
so a query answered by a server prints without building them (the fast remote path)."""
from __future__ import annotations

import json

FORMATS = ("table", "json", "jsonl", "csv", "paths")


def _signed(weight: float, label: str, first: bool) -> str:
    """``label``, ``+ 2×label``, ``− label``, ``− 0.5×label``: a term as it reads in a sum."""
    size = "" if abs(weight) == 1 else f"{abs(weight):g}×"
    sign = ("− " if first else " − ") if weight < 0 else ("" if first else " + ")
    return f"{sign}{size}{label}"


def _where(result: dict) -> str:
    return result["path"] or result["key"]


def format_results(document: dict) -> str:
    """The readable table ``compsearch search`` prints: rank, id, score (and per-term scores
    when several terms are combined), path."""
    terms = document["query"]["terms"]
    labels = [term["label"] for term in terms]
    query = "".join(_signed(term["weight"], term["label"], first=i == 0) for i, term in enumerate(terms))
    seconds, results = document["seconds"], document["results"]
    lines = [f"{len(results)} results for {query} "
             f"(encode {seconds['encode'] * 1e3:.1f} ms, search {seconds['search'] * 1e3:.1f} ms)"]
    if not results:
        return "\n".join(lines)
    per_term = len(labels) > 1
    id_width = max(2, *(len(str(result["id"])) for result in results))
    header = f"{'rank':>4}  {'id':>{id_width}}  {'score':>7}" + "".join(
        f"  {'t' + str(i + 1):>7}" for i in range(len(labels)) if per_term)
    lines.append(header + "  path")
    for result in results:
        row = f"{result['rank']:>4}  {result['id']:>{id_width}}  {result['score']:>7.4f}"
        if per_term:
            row += "".join(f"  {result['scores'][label]:>7.4f}" for label in labels)
        lines.append(f"{row}  {_where(result)}")
    if per_term:
        lines += [f"  t{i + 1} = {label} (weight {term['weight']:g})" for i, (label, term) in enumerate(zip(labels, terms))]
    return "\n".join(lines)


def _csv(document: dict) -> str:
    """One row per result: rank, id, score, key, path, each term's score, then the metadata
    columns (the union over the results, in first-seen order)."""
    import csv  # here: the other formats (and the fast remote path) do without it
    import io

    labels = [term["label"] for term in document["query"]["terms"]]
    results = document["results"]
    metadata = list(dict.fromkeys(name for result in results for name in result["metadata"]))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["rank", "id", "score", "key", "path", *(f"score:{label}" for label in labels), *metadata])
    for result in results:
        writer.writerow([result["rank"], result["id"], f"{result['score']:.6f}", result["key"], result["path"] or "",
                         *(f"{result['scores'][label]:.6f}" for label in labels),
                         *("" if result["metadata"].get(name) is None else result["metadata"][name]
                           for name in metadata)])
    return out.getvalue().rstrip("\n")


def render(document: dict, format: str = "table") -> str:
    """The result ``document`` as ``format`` says (:data:`FORMATS`): the readable table, the
    document itself, one JSON result per line, CSV, or one path per line (for xargs)."""
    if format == "table":
        return format_results(document)
    if format == "json":
        return json.dumps(document, indent=2, default=str)
    if format == "jsonl":
        return "\n".join(json.dumps(result, default=str) for result in document["results"])
    if format == "csv":
        return _csv(document)
    if format == "paths":
        return "\n".join(_where(result) for result in document["results"])
    raise ValueError(f"unknown format {format!r}; one of {', '.join(FORMATS)}")
