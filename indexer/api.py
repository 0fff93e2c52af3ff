"""The indexer from Python: the same calls the CLI makes."""
from __future__ import annotations

from pathlib import Path

from indexer.artifacts import encoder_for_build
from indexer.build import IndexSettings, IndexSummary, Indexer, Mode
from mapping.images import ImageSource


def resolve_device(device: str) -> str:
    """``auto`` → cuda when torch sees a GPU, else cpu."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def build_index(
    images: str | Path | ImageSource,
    out: str | Path,
    model: str,
    weights: str | Path | None = None,
    pretrained: bool = True,
    aligner: str | Path | None = None,
    ranking: str | Path | None = None,
    properties: list[str] | None = None,
    settings: IndexSettings = IndexSettings(),
    mode: Mode = "resume",
    device: str = "auto",
    first_block: str | int | None = None,
) -> IndexSummary:
    """Index ``images`` into the directory ``out`` (see :mod:`indexer.build`)."""
    from mapping.images import open_source
    from mapping.models import load_model

    source = open_source(images)  # a wrong path fails before any model loads
    loaded = load_model(model, weights=weights, device=resolve_device(device), pretrained=pretrained)
    artifacts = encoder_for_build(loaded, out, aligner, ranking, properties, first_block)
    return Indexer(out, artifacts.encoder, settings, artifacts.provenance).run(source, mode)
