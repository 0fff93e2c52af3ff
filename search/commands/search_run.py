"""What ``compsearch search`` does once its options are parsed, by click
(:mod:`.search`) or, for a query to a server, by the fast path (:mod:`compsearch.search.launch`):
one body for both, importing what a query needs only once it knows the kind (no model
library, FAISS or pathlib for a server's query)."""
from __future__ import annotations

import sys

from compsearch.mapping.errors import CompsearchError
from compsearch.search.remote import ask_server, is_url
from compsearch.search.render import render
from compsearch.search.term_syntax import read_term


def run_search(index_dir: str, text: str | None, image: str | None, image_id: int | None,
               property_name: str | None, weight: float, and_terms: tuple[str, ...], not_terms: tuple[str, ...],
               k: int, offset: int, where: str | None, output_format: str | None, copy_to: str | None,
               link_to: str | None, threshold: float | None, weights: str | None, clip_weights: str | None,
               device: str, token: str | None, as_json: bool) -> None:
    """Query the index in ``index_dir`` (or the server at that URL), print the results as
    ``output_format`` says, and copy or link their files when asked."""
    if as_json and output_format not in (None, "json"):
        raise CompsearchError(f"--json and --format {output_format} disagree", "give one of them")
    if copy_to and link_to:
        raise CompsearchError("--copy-to and --link-to both given", "give one of them")
    terms = [read_term(spec) for spec in and_terms] + [read_term(spec, -1.0) for spec in not_terms]
    if is_url(index_dir):
        document = ask_server(index_dir, text=text, image=image, id=image_id, property=property_name, weight=weight,
                              terms=terms, k=k, offset=offset, where=where, threshold=threshold, token=token)
    else:
        from pathlib import Path

        from compsearch.search.index import open_index
        from compsearch.search.query import Query, Term

        query = Query(text=text, image=image, id=image_id, property=property_name, weight=weight,
                      terms=[Term.from_parts(parts) for parts in terms])
        index = open_index(Path(index_dir), device=device, weights=weights and Path(weights),
                           clip_weights=clip_weights and Path(clip_weights))
        document = index.search_batch([query], k=k, threshold=threshold, offset=offset, where=where)[0].to_json()
    # the one JSON schema of the HTTP API too (query, results with id, path, score, scores, metadata, seconds)
    print(render(document, "json" if as_json else output_format or "table"))
    if copy_to or link_to:
        from compsearch.search.export import export_results

        exported = export_results(document, copy_to or link_to, link=link_to is not None)
        missing = f"; {len(exported.missing)} result file(s) no longer exist" if exported.missing else ""
        print(f"{'linked' if link_to else 'copied'} {len(exported.written)} file(s) into {exported.folder}{missing}",
              file=sys.stderr)
