"""Why a result matched: the token heatmaps of the property's components (:mod:`mapping.explain`)
for the result and for the query image, side by side.

A result's score on a property is the cosine of its property vector with the query vector;
the property vector is the sum of the property's components, each a sum over the image's
tokens. Projecting each token's share on the query vector therefore says where in the result
the agreement comes from; projecting the query image's tokens on the result's vector says
where in the query it comes from. Both need the image model (the index's encoder).
"""
from __future__ import annotations

import base64
import io
from typing import Any

import PIL.Image
import torch

from compsearch.mapping.encoder import FULL
from compsearch.mapping.explain import Query, components_caption, explain_images, render_overlay
from compsearch.search.index import SearchIndex
from compsearch.search.query import Term


def _side(index: SearchIndex, image: PIL.Image.Image, components: list[str] | None, direction: torch.Tensor,
          name: str, title: str) -> dict[str, Any]:
    """One image's heatmap along ``direction``: its grid (JSON) and the overlay as a PNG (base64)."""
    encoder = index.encoder
    [explanation] = explain_images(encoder.model, [image], Query(components, direction=direction, direction_name=name),
                                   encoder.aligner, None, encoder.first_block)
    heatmap = explanation.heatmap
    caption = components_caption(heatmap.components, heatmap.located)
    overlay = render_overlay(explanation.view, explanation.pixel_heat(), title, caption)
    encoded = io.BytesIO()
    overlay.save(encoded, "PNG")
    return {**explanation.to_json(), "caption": f"{title}: heat {heatmap.total[0]:+.3g} over {len(heatmap.components)} "
                                                f"components",
            "png": base64.b64encode(encoded.getvalue()).decode("ascii")}


def explain_match(index: SearchIndex, property: str | None, result_id: int, result_image: PIL.Image.Image,
                  query: Term, query_image: PIL.Image.Image | None = None) -> dict[str, Any]:
    """``{"property", "components", "result": side, "query": side or None}`` for the result
    ``result_id`` (its file read as ``result_image``) of ``query`` on ``property``; ``query_image``:
    the query's own image (an uploaded one, or an id's file), None for a text query."""
    name = property or FULL
    entry = index.manifest.properties.get(name)
    components = list(entry.components) if entry else None  # full: every component
    [query_vector] = index.query_vectors([Term(name, text=query.text, image=query.image, id=query.id)])
    result_vector = index.stored_vectors(name, [result_id])[0]
    answer = {"property": name, "components": components,
              "result": _side(index, result_image, components, torch.from_numpy(query_vector),
                              f"query ({name})", f"result #{result_id} along the query"),
              "query": None}
    if query_image is not None:
        answer["query"] = _side(index, query_image, components, torch.from_numpy(result_vector),
                                f"result #{result_id} ({name})", f"query along result #{result_id}")
    return answer
