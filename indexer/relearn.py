"""Changing an index's mind without the ViT: property indexes rebuilt from the component store,
and rankings scored on the stored images.

The store holds every image's components in compact form (:mod:`indexer.component_store`);
:func:`~mapping.decompose.expand` rebuilds them from the image model's *weights* alone (no
image passes through it). The encoder an index is built with then maps them exactly as at
indexing time (:meth:`~mapping.encoder.PropertyEncoder.vectors`), so a property added later,
a new k, ranking or aligner gives the vectors a fresh ``compsearch index`` would give, to the
store's precision. Vectors go to ``DIR/vectors/<name>/`` (one part per shard, in its order),
the FAISS indexes are built by the finish stage's own :func:`~indexer.finish.build_indexes`.
"""
from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from compsearch.indexer.artifacts import EncoderArtifacts, check_model, encoder_for_build, locate_artifact
from compsearch.indexer.component_store import iter_components, require_store, write_vectors
from compsearch.indexer.finish import build_indexes, now
from compsearch.indexer.integrity import record_files
from compsearch.indexer.manifest import Manifest
from compsearch.indexer.settings import IndexSettings
from compsearch.indexer.store import IndexStore
from compsearch.mapping.align import Aligner
from compsearch.mapping.align.persist import check_aligner
from compsearch.mapping.errors import CompsearchError
from compsearch.mapping.identity import EncoderIdentity
from compsearch.mapping.models import RANDOM_INIT, LoadedModel
from compsearch.mapping.names import FULL
from compsearch.mapping.onnx.towers import IMAGE_TOWER
from compsearch.mapping.properties import Property
from compsearch.mapping.rank import Ranking


@dataclass
class RelearnSummary:
    folder: str
    rebuilt: dict[str, str]  # vector name → index_factory string
    images: int
    seconds: float


def model_for_index(manifest: Manifest, folder: Path, weights: str | Path | None = None,
                    device: str = "cpu") -> LoadedModel:
    """The image model as the manifest records it (its weights file where the manifest says)."""
    from compsearch.mapping.models import load_model

    recorded = manifest.encoder
    if recorded.model_weights_id == RANDOM_INIT:
        raise CompsearchError(f"{folder} was built with a randomly initialised {recorded.model_name}: "
                              "its components cannot be rebuilt", "rebuild the index with real weights")
    if weights is None and manifest.model_weights is not None and manifest.model_weights.id == recorded.model_weights_id:
        weights = locate_artifact(manifest.model_weights, folder, "model weights")
    model = load_model(recorded.model_name, weights=weights, device=device)
    check_model(recorded, model, folder)
    return model


def stored_aligned_batches(folder: Path, model: LoadedModel, aligner: Aligner, sample: int | None = None,
                           batch_size: int = 512) -> Iterator[torch.Tensor]:
    """The index's images' components from its store, mapped by ``aligner`` (batch, components,
    d_clip): the first ``sample`` images in shard order, or all — probe images for a ranking."""
    manifest = IndexStore(folder).read_manifest()
    entry = require_store(manifest, folder, model)
    left = sample
    for _, _, components, names in iter_components(IndexStore(folder), entry.layout, model, batch_size):
        check_aligner(aligner, names, components.shape[-1], model.name, model.weights_id)
        batch = aligner.map_components(components.float().cpu())
        if left is not None:
            batch, left = batch[:left], left - min(left, len(batch))
        yield batch
        if left == 0:
            return


def rank_from_index(folder: str | Path, properties: Sequence[Property], k: int | dict[str, int] | None = None,
                    aligner_path: str | Path | None = None, sample: int | None = None,
                    model: LoadedModel | None = None, weights: str | Path | None = None,
                    clip_weights: str | Path | None = None, device: str = "cpu") -> Ranking:
    """Rank components for text ``properties`` on the index's stored images (or ``sample`` of
    them) through its aligner (or ``aligner_path``), instead of passing probe images through the model."""
    from compsearch.mapping.align import load_aligner
    from compsearch.mapping.align.features import clip_for_aligner
    from compsearch.mapping.rank import rank

    folder = Path(folder).expanduser()
    manifest = IndexStore(folder).read_manifest()
    aligner_path = aligner_path or _artifact(manifest, folder, "aligner")
    if aligner_path is None:
        raise CompsearchError(f"{folder} was built without an aligner: properties in words need one",
                              "pass --aligner (trained for the index's model)")
    model = model or model_for_index(manifest, folder, weights, device)
    aligner = load_aligner(aligner_path)
    clip = clip_for_aligner(aligner, model, clip_weights)
    return rank(model, aligner, None, properties, (), clip.encode_text, k, aligner_path,
                mapped=stored_aligned_batches(folder, model, aligner, sample))


def _artifact(manifest: Manifest, folder: Path, kind: str) -> Path | None:
    entry = getattr(manifest, kind)
    return None if entry is None else locate_artifact(entry, folder, kind)


def add_properties(folder: str | Path, names: list[str], ranking: str | Path | None = None,
                   settings: IndexSettings = IndexSettings(), model: LoadedModel | None = None,
                   weights: str | Path | None = None, device: str = "cpu") -> RelearnSummary:
    """Index ``names`` of ``ranking`` (default: the index's own) as new properties, from the store."""
    folder = Path(folder).expanduser()
    manifest = IndexStore(folder).read_manifest()
    present = [name for name in names if name in manifest.properties or name == FULL]
    if present:
        raise CompsearchError(f"{folder} indexes {', '.join(present)} already",
                              "pick other properties, or change them with `compsearch reindex`")
    ranking = ranking or _artifact(manifest, folder, "ranking")
    if ranking is None:
        raise CompsearchError("properties need a ranking", "pass --ranking FILE from `compsearch rank`")
    model = model or model_for_index(manifest, folder, weights, device)
    built = encoder_for_build(model, folder, _artifact(manifest, folder, "aligner"), ranking, names,
                              manifest.encoder.first_block, manifest.encoder.precision)
    return _rebuild(folder, manifest, model, built, names, settings)


def reindex(folder: str | Path, aligner: str | Path | None = None, ranking: str | Path | None = None,
            k: dict[str, int] | None = None, settings: IndexSettings = IndexSettings(),
            model: LoadedModel | None = None, weights: str | Path | None = None,
            device: str = "cpu") -> RelearnSummary:
    """Rebuild the index's property indexes (and ``full``, under a new aligner) from the store,
    with ``aligner``, ``ranking`` (default: the index's own) and k per property."""
    folder = Path(folder).expanduser()
    manifest = IndexStore(folder).read_manifest()
    k = k or {}
    unknown = [name for name in k if name not in manifest.properties]
    if unknown:
        raise CompsearchError(f"{folder} has no property {', '.join(unknown)}",
                              f"its properties: {', '.join(manifest.properties) or 'none'}")
    model = model or model_for_index(manifest, folder, weights, device)
    names = list(manifest.properties)
    built = encoder_for_build(model, folder, aligner or _artifact(manifest, folder, "aligner"),
                              ranking or _artifact(manifest, folder, "ranking"), names,
                              manifest.encoder.first_block, manifest.encoder.precision)
    for name, count in k.items():
        entry = built.provenance.properties[name]
        full_list = _ranked_components(built, name)
        if not 1 <= count <= len(full_list):
            raise CompsearchError(f"--k {name}={count} is out of range", f"choose 1 to {len(full_list)}")
        entry.k, entry.components = count, full_list[:count]
        built.encoder.properties[name] = entry.components
    if ranking is not None:
        manifest.ranking = built.provenance.ranking
    rebuilt = names + ([FULL] if aligner is not None else [])
    return _rebuild(folder, manifest, model, built, rebuilt, settings)


def _ranked_components(built: EncoderArtifacts, name: str) -> list[str]:
    """Every component the ranking ranked for ``name``, best first."""
    ranking = built.provenance.ranking
    return Ranking.load(ranking.path).get(name).components


def _rebuild(folder: Path, manifest: Manifest, model: LoadedModel, built: EncoderArtifacts, names: list[str],
             settings: IndexSettings) -> RelearnSummary:
    """``names``' vectors from the store → vectors parts → FAISS indexes → the manifest."""
    started = time.perf_counter()
    store = IndexStore(folder)
    entry = require_store(manifest, folder, model)
    encoder = built.encoder
    pending: dict[Path, tuple[list[np.ndarray], dict[str, list[np.ndarray]]]] = {}
    for shard, ids, components, component_names in iter_components(store, entry.layout, model, settings.batch_size):
        vectors = encoder.vectors(components, component_names)
        shard_ids, pieces = pending.setdefault(shard, ([], {}))
        shard_ids.append(ids)
        for name in names:
            pieces.setdefault(name, []).append(vectors[name].numpy())
        for done in [path for path in pending if path != shard]:  # shards come one after another
            _write_shard(store, done, pending.pop(done))
    for done in list(pending):
        _write_shard(store, done, pending.pop(done))
    entries = build_indexes(store, names, encoder.space, settings)
    _record(manifest, built, entries)
    record_files(store, manifest)  # the shards and FAISS files were rewritten: open checks them against this
    manifest.updated = now()
    store.write_manifest(manifest)
    (folder / IMAGE_TOWER).unlink(missing_ok=True)  # it computes the old properties: the next image query writes it
    return RelearnSummary(str(folder), {name: e.factory for name, e in entries.items()}, manifest.counts.images,
                          time.perf_counter() - started)


def _write_shard(store: IndexStore, shard: Path, pending: tuple[list[np.ndarray], dict[str, list[np.ndarray]]]) -> None:
    ids, pieces = pending
    for name, parts in pieces.items():
        write_vectors(store, name, shard, np.concatenate(ids), np.concatenate(parts))


def _record(manifest: Manifest, built: EncoderArtifacts, entries: dict) -> None:
    """The manifest after a rebuild: its indexes, properties, aligner and encoder identity."""
    manifest.indexes.update(entries)
    manifest.properties.update(built.provenance.properties)
    if built.provenance.aligner is not None:
        manifest.aligner = built.provenance.aligner
    identity: EncoderIdentity = built.encoder.identity()
    manifest.encoder = replace(identity, properties={name: entry.components for name, entry in manifest.properties.items()})
