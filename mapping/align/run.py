"""The whole CompAlign stage for one model and one CLIP: cache, train, measure, save."""
from __future__ import annotations

import uuid
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from compsearch.mapping.align.aligner import Aligner, AlignerMeta
from compsearch.mapping.align.cache import build_cache
from compsearch.mapping.align.features import AlignmentEncoder, resolved_first_block
from compsearch.mapping.align.files import aligner_paths
from compsearch.mapping.align.persist import save_aligner
from compsearch.mapping.align.train import TrainSettings, train_aligner
from compsearch.mapping.decompose import decompose
from compsearch.mapping.errors import Interrupted, warn_if_few_images
from compsearch.mapping.images import SourceSpec, open_source
from compsearch.mapping.images.probe import probe_batches
from compsearch.mapping.models import RANDOM_INIT, LoadedModel

IDENTITY_CHECK_IMAGES = 32
HELDOUT_ENOUGH = 20  # held-out images below which the cosine says little


def is_same_model(model: LoadedModel, clip: LoadedModel) -> bool:
    """Whether the decomposed model *is* the CLIP image tower (then the aligner is the identity).

    Randomly initialised models share the weights id ``random-init`` without sharing
    weights, so for them only the very same object counts.
    """
    if model is clip:
        return True
    return model.name == clip.name and model.weights_id == clip.weights_id != RANDOM_INIT


def _meta(model: LoadedModel, clip: LoadedModel, names: list[str], model_dim: int, clip_dim: int,
          first_block: str) -> AlignerMeta:
    return AlignerMeta(
        model_name=model.name, model_weights_id=model.weights_id, clip_name=clip.name,
        clip_weights_id=clip.weights_id, component_names=names, model_dim=model_dim, clip_dim=clip_dim,
        first_block=first_block,
    )


def identity_aligner(model: LoadedModel, images: SourceSpec, first_block: str | int | None = None) -> Aligner:
    """The identity aligner of a CLIP in its own space, its cosine measured on the first
    readable probe images (Σ_i c_i is the CLIP embedding itself, so it is 1 up to rounding)."""
    batch = next(batch for batch in probe_batches(images, [model.preprocess], IDENTITY_CHECK_IMAGES) if len(batch))
    pixels = batch.pixels[0].to(model.device)
    part = decompose(model.model, pixels, first_block=first_block, model_name=model.name)
    contributions, targets = part.contributions.double().cpu(), model.encode_images(pixels).double().cpu()
    meta = _meta(model, model, part.names, contributions.shape[-1], targets.shape[-1],
                 resolved_first_block(model, first_block))
    meta.identity = True
    meta.final_loss = 0.0
    meta.heldout_cosine = F.cosine_similarity(contributions.sum(1), targets, dim=-1).mean().item()
    meta.heldout_images = len(batch)
    return Aligner.identity(meta)


def align(
    model: LoadedModel,
    clip: LoadedModel,
    images: SourceSpec,
    out: str | Path,
    first_block: str | int | None = None,
    settings: TrainSettings = TrainSettings(),
    cache_dir: str | Path | None = None,
    encode_batch_size: int = 32,
    progress: bool = True,
    workers: int = 0,
) -> Aligner:
    """Train (or, for a CLIP in its own space, build) the aligner of ``model`` to ``clip`` on
    the probe set ``images`` (a folder, a list or Parquet file, …), and save it at ``out``.

    The features are cached in ``cache_dir`` (default: beside ``out``, ``NAME.cache``), so
    a rerun (more epochs, other settings, after an interruption) does not rerun the models.
    Unreadable images are skipped with a warning.
    """
    if is_same_model(model, clip):
        aligner = identity_aligner(model, images, first_block)
    else:
        first = resolved_first_block(model, first_block)
        tensors_path, _ = aligner_paths(out)
        key = {"model": model.name, "model_weights_id": model.weights_id, "clip": clip.name,
               "clip_weights_id": clip.weights_id, "first_block": first}
        if RANDOM_INIT in (model.weights_id, clip.weights_id):
            key["run"] = uuid.uuid4().hex  # random weights differ per load: never reuse their features
        cache = build_cache(
            cache_dir or tensors_path.with_suffix(".cache"), images, AlignmentEncoder(model, clip, first), key,
            heldout_fraction=settings.heldout_fraction, batch_size=encode_batch_size, workers=workers,
            progress=progress,
        )
        model_dim, clip_dim = cache.dims
        try:
            with torch.enable_grad():  # a caller's no_grad / inference context must not freeze training
                result = train_aligner(cache, len(cache.component_names), model_dim, clip_dim, settings, progress)
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted while training; the features of {len(cache.images)} images are "
                              f"cached in {cache.folder}", "rerun the same command to train without "
                              "recomputing them") from None
        meta = _meta(model, clip, cache.component_names, model_dim, clip_dim, first)
        meta.final_loss = result.final_loss
        meta.heldout_cosine = result.heldout_cosine
        meta.train_images = cache.count(heldout=False)
        meta.heldout_images = cache.count(heldout=True)
        meta.trained_on = open_source(images).description
        warn_if_few_images(meta.heldout_images, "the held-out cosine is measured",
                           "--images, or hold out more with --heldout", enough=HELDOUT_ENOUGH)
        meta.settings = {**asdict(settings), "batches": result.batches, "epochs": result.epochs,
                         "stopped_early": result.stopped_early}
        aligner = Aligner(meta, result.weight, result.bias)
    save_aligner(aligner, out)
    return aligner
