"""From artifact files (model, aligner, ranking) to the PropertyEncoder an index is built
with — and back from an index's manifest to the very same encoder for queries.

An artifact is recorded by content id (sha256 prefix of its bytes, like a model's
``weights_id``) and by path, absolute and relative to the index directory, so an index
that moves together with its aligner still finds it.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from compsearch.mapping.align import Aligner, load_aligner
from compsearch.mapping.align.persist import AlignerMismatchError, aligner_paths
from compsearch.indexer.manifest import FileEntry, Manifest, PropertyEntry, Provenance
from compsearch.mapping.encoder import PropertyEncoder, default_precision
from compsearch.mapping.identity import EncoderIdentity, Precision
from compsearch.mapping.errors import CompsearchError
from compsearch.mapping.models import RANDOM_INIT, LoadedModel, weights_id
from compsearch.mapping.properties.vocabulary import templates_for
from compsearch.mapping.rank import Ranking


class IndexMismatchError(CompsearchError):
    """A model, aligner or CLIP that is not the one an index was built with."""


@dataclass
class EncoderArtifacts:
    encoder: PropertyEncoder
    provenance: Provenance  # for the manifest: aligner, ranking, properties, weights file


def _file_entry(path: Path, index_dir: Path, content_id: str) -> FileEntry:
    return FileEntry(path=str(path.resolve()), relative_path=os.path.relpath(path.resolve(), index_dir.resolve()),
                     id=content_id)


def aligner_id(path: str | Path) -> str:
    tensors, sidecar = aligner_paths(path)
    return weights_id(tensors, sidecar)


def encoder_for_build(
    model: LoadedModel,
    index_dir: str | Path,
    aligner_path: str | Path | None = None,
    ranking_path: str | Path | None = None,
    property_names: list[str] | None = None,
    first_block: str | int | None = None,
    precision: Precision | None = None,
) -> EncoderArtifacts:
    """The encoder for ``model`` with an aligner and the top components of a ranking, computing
    in ``precision`` (None: :func:`~compsearch.mapping.encoder.default_precision` of its device)."""
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
    provenance = Provenance()
    if model.weights_file is not None:  # so image queries find the weights without --weights
        provenance.model_weights = _file_entry(Path(model.weights_file), index_dir, model.weights_id)
    aligner: Aligner | None = None
    content_id = None
    if aligner_path is not None:
        aligner = load_aligner(aligner_path)
        if aligner.meta.model_name != model.name:
            raise AlignerMismatchError(f"the aligner was trained for {aligner.meta.model_name}, not {model.name}",
                                       f"use --model {aligner.meta.model_name} or another --aligner")
        content_id = aligner_id(aligner_path)
        provenance.aligner = _file_entry(aligner_paths(aligner_path)[0], index_dir, content_id)
    properties: dict[str, list[str]] = {}
    if ranking is not None:
        names = property_names or [prop.name for prop in ranking.properties]
        for name in names:
            ranked = ranking.get(name)
            properties[name] = ranked.top
            provenance.properties[name] = PropertyEntry(
                k=ranked.k, components=ranked.top, source=ranked.source, values=ranked.values,
                templates=ranked.templates or templates_for(name),
            )
        provenance.ranking = _file_entry(Path(ranking_path), index_dir, weights_id(Path(ranking_path).expanduser()))
    elif property_names:
        raise CompsearchError("properties need a ranking", "pass --ranking FILE from `compsearch rank`")
    encoder = PropertyEncoder(model, aligner, properties, first_block, aligner_id=content_id,
                              precision=precision or default_precision(model.device))
    return EncoderArtifacts(encoder, provenance)


def find_artifact(entry: FileEntry, index_dir: Path) -> Path | None:
    """An artifact recorded in a manifest: at its path relative to the index, else absolute; None if at neither."""
    for candidate in (index_dir / entry.relative_path, Path(entry.path)):
        if candidate.is_file():
            return candidate
    return None


def locate_artifact(entry: FileEntry, index_dir: Path, what: str) -> Path:
    """:func:`find_artifact`, which the index cannot do without."""
    found = find_artifact(entry, index_dir)
    if found is not None:
        return found
    raise CompsearchError(
        f"the index's {what} is neither at {index_dir / entry.relative_path} nor at {entry.path}",
        f"put the {what} file back there (the index was built with it, id {entry.id})",
    )


def identity_differences(recorded: EncoderIdentity, current: EncoderIdentity) -> list[str]:
    """``field: index has …, now …`` for each encoder identity field that differs."""
    index, now = asdict(recorded), asdict(current)
    return [f"{key}: index has {index[key]!r}, now {now[key]!r}" for key in index if index[key] != now[key]]


def check_model(recorded: EncoderIdentity, model: LoadedModel, index_dir: Path) -> None:
    """``model`` must be the one the manifest's encoder identity ``recorded`` names, with the same weights."""
    name, weights = recorded.model_name, recorded.model_weights_id
    if model.name != name:
        raise IndexMismatchError(f"{index_dir} was built with {name}, not {model.name}", f"load {name}")
    if model.weights_id != weights:
        raise IndexMismatchError(
            f"{index_dir} was built with {name} weights {weights}, the weights loaded are {model.weights_id}",
            "pass the weights file the index was built with (--weights)" if weights != RANDOM_INIT
            else "an index of a randomly initialised model can be queried only by text or by id",
        )


def encoder_for_manifest(manifest: Manifest, index_dir: str | Path, model: LoadedModel,
                         clip: LoadedModel | None = None) -> PropertyEncoder:
    """The encoder an index was built with, rebuilt from its manifest around ``model`` (and
    ``clip``, the text side, for text queries): the same weights, first block, aligner (found
    where the manifest says, its content unchanged), components per property and precision
    (whatever device runs it) — any difference is refused, since the queries would land in
    another space than the index."""
    index_dir = Path(index_dir).expanduser()
    recorded = manifest.encoder
    check_model(recorded, model, index_dir)
    aligner, content_id = None, None
    if manifest.aligner is not None:
        entry = manifest.aligner
        path = locate_artifact(entry, index_dir, "aligner")
        content_id = aligner_id(path)
        if content_id != entry.id:
            raise IndexMismatchError(
                f"the aligner {path} has changed since {index_dir} was built (id {content_id}, the index "
                f"recorded {entry.id})",
                "put back the aligner the index was built with, or rebuild the index (`compsearch index … --overwrite`)",
            )
        aligner = load_aligner(path)
    properties = {name: entry.components for name, entry in manifest.properties.items()}
    encoder = PropertyEncoder(model, aligner, properties, recorded.first_block, aligner_id=content_id,
                              precision=recorded.precision, clip=clip)
    differing = identity_differences(recorded, encoder.identity())
    if differing:
        raise IndexMismatchError(f"the encoder rebuilt for {index_dir} differs from the one it was built with "
                                 f"({'; '.join(differing[:3])})", "rebuild the index (`compsearch index … --overwrite`)")
    return encoder
