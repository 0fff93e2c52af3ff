"""From artifact files (model, aligner, ranking) to the PropertyEncoder an index is built
with — and back from an index's manifest to the very same encoder for queries.

An artifact is recorded by content id (sha256 prefix of its bytes, like a model's
``weights_id``) and by path, absolute and relative to the index directory, so an index
that moves together with its aligner still finds it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mapping.align import Aligner, load_aligner
from mapping.align.persist import AlignerMismatchError, aligner_paths
from mapping.encoder import PropertyEncoder
from mapping.errors import CompsearchError
from mapping.models import LoadedModel, weights_id
from mapping.properties import PropertyError, builtin_property
from mapping.properties.vocabulary import default_templates
from mapping.rank import Ranking


@dataclass
class EncoderArtifacts:
    encoder: PropertyEncoder
    provenance: dict[str, Any]  # manifest entries: aligner, ranking, properties


def _file_entry(path: Path, index_dir: Path, content_id: str) -> dict[str, str]:
    return {"path": str(path.resolve()), "relative_path": os.path.relpath(path.resolve(), index_dir.resolve()),
            "id": content_id}


def aligner_id(path: str | Path) -> str:
    tensors, sidecar = aligner_paths(path)
    return weights_id(tensors, sidecar)


def templates_for(property_name: str) -> list[str]:
    """Prompt templates for text queries on a property: the built-in ones, else the defaults."""
    try:
        return list(builtin_property(property_name).templates)
    except PropertyError:
        return list(default_templates())


def encoder_for_build(
    model: LoadedModel,
    index_dir: str | Path,
    aligner_path: str | Path | None = None,
    ranking_path: str | Path | None = None,
    property_names: list[str] | None = None,
    first_block: str | int | None = None,
    autocast: bool = True,
) -> EncoderArtifacts:
    """The encoder for ``model`` with an aligner and the top components of a ranking."""
    index_dir = Path(index_dir).expanduser()
    ranking = Ranking.load(ranking_path) if ranking_path else None
    if ranking is not None:
        if ranking.model_name != model.name or ranking.model_weights_id != model.weights_id:
            raise CompsearchError(
                f"the ranking was made for {ranking.model_name} (weights {ranking.model_weights_id}), "
                f"not {model.name} (weights {model.weights_id})",
                f"use --model {ranking.model_name} with its weights, or rank this model with `compsearch rank`",
            )
        if aligner_path is None and ranking.aligner:
            aligner_path = ranking.aligner  # the aligner the ranking was scored through
    provenance: dict[str, Any] = {"aligner": None, "ranking": None, "properties": {}}
    aligner: Aligner | None = None
    content_id = None
    if aligner_path is not None:
        aligner = load_aligner(aligner_path)
        if aligner.meta.model_name != model.name:
            raise AlignerMismatchError(f"the aligner was trained for {aligner.meta.model_name}, not {model.name}",
                                       f"use --model {aligner.meta.model_name} or another --aligner")
        content_id = aligner_id(aligner_path)
        provenance["aligner"] = _file_entry(aligner_paths(aligner_path)[0], index_dir, content_id)
    properties: dict[str, list[str]] = {}
    if ranking is not None:
        names = property_names or [prop.name for prop in ranking.properties]
        for name in names:
            ranked = ranking.get(name)
            properties[name] = ranked.top
            provenance["properties"][name] = {
                "k": ranked.k, "components": ranked.top, "source": ranked.source, "values": ranked.values,
                "templates": templates_for(name),
            }
        provenance["ranking"] = _file_entry(Path(ranking_path), index_dir, weights_id(Path(ranking_path).expanduser()))
    elif property_names:
        raise CompsearchError("properties need a ranking", "pass --ranking FILE from `compsearch rank`")
    encoder = PropertyEncoder(model, aligner, properties, first_block, aligner_id=content_id, autocast=autocast)
    return EncoderArtifacts(encoder, provenance)


def locate_artifact(entry: dict[str, str], index_dir: Path, what: str) -> Path:
    """An artifact recorded in a manifest: at its path relative to the index, else absolute."""
    for candidate in (index_dir / entry["relative_path"], Path(entry["path"])):
        if candidate.is_file():
            return candidate
    raise CompsearchError(
        f"the index's {what} is neither at {index_dir / entry['relative_path']} nor at {entry['path']}",
        f"put the {what} file back there (the index was built with it, id {entry['id']})",
    )
