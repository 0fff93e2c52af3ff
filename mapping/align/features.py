"""Component contributions (and CLIP targets) of image files, batch by batch."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from mapping.align.aligner import Aligner
from mapping.align.cache import Encoder
from mapping.align.persist import AlignerMismatchError, check_aligner
from mapping.decompose import Decomposition, adapter_for, decompose
from mapping.images import preprocess_batch
from mapping.models import LoadedModel, load_model


def resolved_first_block(model: LoadedModel, first_block: str | int | None) -> str:
    """The absolute name of the first decomposed block (None: the family's default)."""
    return adapter_for(model.model, model.name).resolve_first_block(first_block)


def decompose_files(
    model: LoadedModel, paths: Sequence[Path], first_block: str | int | None = None, batch_size: int = 32,
    progress: bool = False,
) -> Iterator[Decomposition]:
    """Decompositions of ``paths`` in order, ``batch_size`` images at a time."""
    for start in tqdm(range(0, len(paths), batch_size), desc="decomposing", unit="batch", disable=not progress):
        batch = preprocess_batch(paths[start:start + batch_size], model).to(model.device)
        yield decompose(model.model, batch, first_block=first_block, model_name=model.name)


def component_contributions(
    model: LoadedModel, paths: Sequence[Path], first_block: str | int | None = None, batch_size: int = 32,
    progress: bool = False,
) -> tuple[list[str], torch.Tensor]:
    """``(names, contributions (images, components, dim))`` for a probe set held in memory."""
    parts = list(decompose_files(model, paths, first_block, batch_size, progress))
    return parts[0].names, torch.cat([part.contributions.float().cpu() for part in parts])


def alignment_encoder(model: LoadedModel, clip: LoadedModel, first_block: str | int | None, batch_size: int = 32) -> Encoder:
    """An :data:`Encoder` for the cache: each image decoded once per model, in one order."""

    def encode(paths: list[Path]) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        names, contributions = component_contributions(model, paths, first_block, batch_size)
        targets = torch.cat([
            clip.encode_images(preprocess_batch(paths[start:start + batch_size], clip)).float().cpu()
            for start in range(0, len(paths), batch_size)
        ])
        return names, contributions, targets

    return encode


def aligned_batches(
    model: LoadedModel, aligner: Aligner, paths: Sequence[Path], batch_size: int = 32, progress: bool = False,
) -> Iterator[torch.Tensor]:
    """f_i(c_i(x)) for ``paths``, batch by batch (batch, components, d_clip), decomposed from
    the aligner's first block and checked against the components it was trained on."""
    for part in decompose_files(model, paths, aligner.meta.first_block, batch_size, progress):
        check_aligner(aligner, part.names, part.contributions.shape[-1], model.name, model.weights_id)
        yield aligner.map_components(part.contributions.float().cpu())


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
