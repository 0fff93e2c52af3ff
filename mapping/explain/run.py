"""Explain images: choose the components and the direction, decompose with the token split,
and return each image's heatmap over the model's view of it."""
from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from compsearch.mapping.align import Aligner, check_aligner
from compsearch.mapping.align.features import clip_for_aligner
from compsearch.mapping.decompose import Decomposition, decompose
from compsearch.mapping.errors import CompsearchError
from compsearch.mapping.explain.directions import aligned_directions, class_directions, mapped_components, property_directions
from compsearch.mapping.explain.heatmap import Heatmap, token_heat
from compsearch.mapping.explain.view import split_transform
from compsearch.mapping.models import LoadedModel
from compsearch.mapping.properties import Property, property_basis
from compsearch.mapping.properties.text import TextEncoder
from compsearch.mapping.rank import Ranking


@dataclass
class Query:
    """What to explain. ``components``: names or globs (``blocks.11.attn.*``), None for all the
    decomposed components. The direction: ``direction`` (vectors in the aligner's CLIP space,
    or the model's own without an aligner: one for every image or one per image, named
    ``direction_name``), else ``text``, else ``property`` (its subspace), else
    ``class_index``, else each image's predicted class."""

    components: list[str] | None = None
    text: str | None = None
    property: Property | None = None
    class_index: int | None = None
    direction: torch.Tensor | None = None
    direction_name: str = "the given direction"


def query_from_ranking(ranking: Ranking, property_name: str, text: str | None = None) -> Query:
    """The top components of ``property_name``; projected on ``text`` when given, else on the
    property's own text subspace (text-scored properties) or on the predicted class."""
    ranked = ranking.get(property_name)
    prop = Property(ranked.name, tuple(ranked.values)) if ranked.source == "text" and text is None else None
    return Query(components=ranked.top, text=text, property=prop)


@dataclass
class Explanation:
    """One image's heatmap (``heatmap`` holds a batch of one) and what it projects on."""

    view: PIL.Image.Image  # the model input as an image: the heat's pixels
    heatmap: Heatmap
    target: str  # 'text "a star"', "property shape", "class 207 (predicted)"
    class_index: int | None = None
    label: str | None = None

    def pixel_heat(self) -> np.ndarray:
        return self.heatmap.pixels((self.view.height, self.view.width))[0].cpu().numpy()

    def to_json(self) -> dict:
        heatmap = self.heatmap
        return {
            "target": self.target, "class_index": self.class_index, "label": self.label,
            "components": heatmap.components, "located": heatmap.located,
            "grid": heatmap.grid[0].tolist(), "grid_shape": list(heatmap.grid.shape[1:]),
            "input_size": [self.view.height, self.view.width],
            "prefix": heatmap.prefix[0].item(), "unlocated": heatmap.unlocated[0].item(),
            "total": heatmap.total[0].item(),
        }


def select_components(names: Sequence[str], patterns: Sequence[str] | None) -> list[str]:
    """``names`` matching any of ``patterns`` (exact names or shell globs), in decomposition order."""
    if patterns is None:
        return list(names)
    chosen = [name for name in names if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)]
    unmatched = [pattern for pattern in patterns if not any(fnmatch.fnmatchcase(name, pattern) for name in names)]
    if unmatched:
        raise CompsearchError(
            f"no component matches {unmatched[0]!r}",
            f"components are named like {names[1] if len(names) > 1 else names[0]} "
            "(list them with `compsearch decompose IMAGE --model ...`); globs such as 'blocks.11.attn.*' work",
        )
    return chosen


def text_encoder(model: LoadedModel, aligner: Aligner | None, clip_weights: str | Path | None = None) -> TextEncoder | None:
    """The text side of the space heat is projected in: the aligner's CLIP, or the model itself
    when it is a CLIP; None for a classifier without an aligner."""
    if aligner is not None:
        return clip_for_aligner(aligner, model, clip_weights).encode_text
    return model.encode_text if model.is_clip else None


def class_label(model: LoadedModel, index: int) -> str | None:
    """ImageNet's description of ``index`` for 1000-class models, else None."""
    if getattr(model.model, "num_classes", None) != 1000:
        return None
    from timm.data import ImageNetInfo

    return ImageNetInfo().index_to_description(index)


def _directions(
    model: LoadedModel, parts: Decomposition, components: list[str], query: Query,
    aligner: Aligner | None, encode_text: TextEncoder | None,
) -> tuple[torch.Tensor, torch.Tensor | float, list[str], torch.Tensor | None]:
    """``(directions, constant, target per image, classes or None)`` for ``query``."""
    batch = parts.contributions.shape[0]
    if query.direction is not None:  # e.g. a search's query vector: where a result agrees with it
        given = F.normalize(query.direction.float().cpu().reshape(-1, query.direction.shape[-1]), dim=-1)
        directions, constant = aligned_directions(aligner, components, given.expand(batch, -1))
        return directions, constant, [query.direction_name] * batch, None
    if query.text is not None or query.property is not None:
        if encode_text is None:
            raise CompsearchError(
                f"{model.name} has no text side to project on",
                "pass --aligner (an aligner to a CLIP), or use --class for a classifier",
            )
        if query.text is not None:
            clip = F.normalize(encode_text([query.text]).float().cpu(), dim=-1).expand(batch, -1)
            target = f'text "{query.text}"'
        else:
            represented = mapped_components(aligner, parts, components).sum(1)
            clip = property_directions(property_basis(query.property, encode_text), represented)
            target = f"property {query.property.name}"
        directions, constant = aligned_directions(aligner, components, clip)
        return directions, constant, [target] * batch, None
    directions, classes = class_directions(model.model, parts.output.to(model.device), query.class_index)
    directions, classes = directions.float().cpu(), classes.cpu()
    suffix = "" if query.class_index is not None else " (predicted)"
    return directions, 0.0, [f"class {int(index)}{suffix}" for index in classes], classes


def explain_images(
    model: LoadedModel,
    images: Sequence[PIL.Image.Image],
    query: Query = Query(),
    aligner: Aligner | None = None,
    encode_text: TextEncoder | None = None,
    first_block: str | int | None = None,
) -> list[Explanation]:
    """Heatmaps of ``images`` for ``query`` (one batch). With ``aligner`` (or the model being
    a CLIP, aligner None) texts and properties are projected in CLIP space; the decomposition
    starts at the aligner's first block, so the components are the ones it maps."""
    transform = split_transform(model.preprocess)
    views, inputs = zip(*(transform(image) for image in images))
    start = aligner.meta.first_block if aligner is not None else first_block
    parts = decompose(model.model, torch.stack(inputs).to(model.device), first_block=start,
                      split_tokens=True, model_name=model.name)
    parts = Decomposition(parts.model_name, parts.names, parts.contributions.float().cpu(), parts.output.float().cpu(),
                          [replace(split, contributions=split.contributions.float().cpu()) for split in parts.token_splits])
    if aligner is not None:
        check_aligner(aligner, parts.names, parts.contributions.shape[-1], model.name, model.weights_id)
    components = select_components(parts.names, query.components)
    directions, constant, targets, classes = _directions(model, parts, components, query, aligner, encode_text)
    heat = token_heat(parts, components, directions, constant)
    explanations = []
    for position, view in enumerate(views):
        one = Heatmap(heat.components, heat.located, heat.grid[position:position + 1],
                      heat.prefix[position:position + 1], heat.unlocated[position:position + 1])
        index = None if classes is None else int(classes[position])
        label = None if index is None else class_label(model, index)
        explanations.append(Explanation(view, one, targets[position], index, label))
    return explanations
