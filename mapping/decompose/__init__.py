"""RepDecompose: split a ViT's representation into exact named component contributions.

``decompose(model, images)`` finds the adapter registered for the model's architecture
(one module per family, like timm's one file per model family) and runs it.
"""
from __future__ import annotations

import torch
from torch import nn

from mapping.decompose.base import (
    Adapter,
    Decomposition,
    TokenSplit,
    adapter_for,
    linearised_layer_norm,
    register_adapter,
)

# Importing the family modules registers their adapters.
from mapping.decompose import families  # noqa: F401  (registration side effect)


def decompose(
    model: nn.Module,
    images: torch.Tensor,
    first_block: str | int | None = None,
    split_tokens: bool = False,
    model_name: str | None = None,
) -> Decomposition:
    """Decompose ``model``'s representation of ``images`` (a preprocessed batch).

    ``first_block``: name or index of the first decomposed block, ``"all"``, or None for
    the paper's default range. ``split_tokens`` also splits every head by token.
    """
    name = model_name or getattr(model, "compsearch_name", None) or type(model).__name__
    adapter = adapter_for(model, name)
    with torch.inference_mode():
        return adapter.decompose(images, adapter.resolve_first_block(first_block), split_tokens)


__all__ = [
    "Adapter",
    "Decomposition",
    "TokenSplit",
    "adapter_for",
    "decompose",
    "linearised_layer_norm",
    "register_adapter",
]
