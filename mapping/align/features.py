"""Component contributions (and CLIP targets) of probe images, batch by batch, read through
the image layer (:mod:`mapping.images`)."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from compsearch.mapping.align.aligner import Aligner
from compsearch.mapping.align.persist import AlignerMismatchError, check_aligner
from compsearch.mapping.decompose import Decomposition, adapter_for, decompose
from compsearch.mapping.images import ImageRecord, SourceSpec
from compsearch.mapping.images.loader import Transform
from compsearch.mapping.images.probe import probe_batches
from compsearch.mapping.models import LoadedModel, load_model


def resolved_first_block(model: LoadedModel, first_block: str | int | None) -> str:
    """The absolute name of the first decomposed block (None: the family's default)."""
    return adapter_for(model.model, model.name).resolve_first_block(first_block)


def decompose_source(
    model: LoadedModel, images: SourceSpec, first_block: str | int | None = None, batch_size: int = 32,
    workers: int = 0, progress: bool = False,
) -> Iterator[tuple[list[ImageRecord], Decomposition]]:
    """``(records, decomposition)`` per batch of the probe set ``images`` (a folder, a list or
    Parquet file, a list of paths or a source); unreadable files are skipped with a warning."""
    for batch in probe_batches(images, [model.preprocess], batch_size, workers, progress, "decomposing"):
        if not len(batch):
            continue
        pixels = batch.pixels[0].to(model.device)
        yield batch.records, decompose(model.model, pixels, first_block=first_block, model_name=model.name)


def component_contributions(
    model: LoadedModel, images: SourceSpec, first_block: str | int | None = None, batch_size: int = 32,
    workers: int = 0, progress: bool = False,
) -> tuple[list[str], torch.Tensor]:
    """``(names, contributions (images, components, dim))`` for a probe set held in memory."""
    parts = [part for _, part in decompose_source(model, images, first_block, batch_size, workers, progress)]
    return parts[0].names, torch.cat([part.contributions.float().cpu() for part in parts])


@dataclass
class AlignmentEncoder:
    """The cache's :class:`~mapping.align.cache.Encoder` for a model and a CLIP: each image is
    decoded once and goes through both models' transforms."""

    model: LoadedModel
    clip: LoadedModel
    first_block: str | int | None

    @property
    def transforms(self) -> list[Transform]:
        return [self.model.preprocess, self.clip.preprocess]

    def __call__(self, pixels: list[torch.Tensor]) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        part = decompose(self.model.model, pixels[0].to(self.model.device), first_block=self.first_block,
                         model_name=self.model.name)
        return part.names, part.contributions.float().cpu(), self.clip.encode_images(pixels[1]).float().cpu()


def aligned_batches(
    model: LoadedModel, aligner: Aligner, images: SourceSpec, batch_size: int = 32, workers: int = 0,
    progress: bool = False,
) -> Iterator[tuple[list[ImageRecord], torch.Tensor]]:
    """``(records, f_i(c_i(x)))`` per batch of the probe set ``images`` (mapped: batch,
    components, d_clip), decomposed from the aligner's first block and checked against the
    components it was trained on."""
    for records, part in decompose_source(model, images, aligner.meta.first_block, batch_size, workers, progress):
        check_aligner(aligner, part.names, part.contributions.shape[-1], model.name, model.weights_id)
        yield records, aligner.map_components(part.contributions.float().cpu())


def clip_for_aligner(aligner: Aligner, model: LoadedModel, weights: str | Path | None = None) -> LoadedModel:
    """The CLIP whose space ``aligner`` maps into (its text encoder embeds the properties):
    ``model`` itself for an identity aligner, else loaded by name and checked by weights id."""
    meta = aligner.meta
    clip = model if meta.identity else load_model(meta.clip_name, weights=weights)
    if clip.weights_id != meta.clip_weights_id:
        raise AlignerMismatchError(
            f"the aligner maps into {meta.clip_name} with weights {meta.clip_weights_id}, "
            f"but the weights loaded have id {clip.weights_id}",
            "pass the CLIP weights the aligner was trained with (--clip-weights)",
        )
    return clip
