"""RepDecompose: split a ViT's representation into exact named component contributions.

``decompose(model, images)`` finds the adapter registered for the model's architecture
(one module per family, like timm's one file per model family) and runs it.
"""
from __future__ import annotations

import torch
from torch import nn

from compsearch.mapping.decompose.base import (
    Adapter,
    Decomposition,
    HookScope,
    TokenSplit,
    adapter_for,
    cached_adapter,
    linearised_layer_norm,
    register_adapter,
    registered_adapters,
)
from compsearch.mapping.decompose.store import StoredArray, StoredComponents

# Importing the family modules registers their adapters.
from compsearch.mapping.decompose import families  # noqa: F401  (registration side effect)


def decompose(
    model: nn.Module,
    images: torch.Tensor,
    first_block: str | int | None = None,
    split_tokens: bool = False,
    model_name: str | None = None,
    store: bool = False,
) -> Decomposition:
    """Decompose ``model``'s representation of ``images`` (a preprocessed batch).

    ``first_block``: name or index of the first decomposed block, ``"all"``, or None for
    the paper's default range. ``split_tokens`` also splits every head by token. ``store``
    also keeps the compact form as ``Decomposition.stored`` (from the same pass, at no cost:
    the components are computed from it).
    Cheap to call per batch or per query: the model's adapter is built once and kept on
    the model; calls on one model run one at a time (its hooks live on the model).
    """
    adapter = adapter_for(model, model_name or model_display_name(model))
    return adapter.decompose(images, adapter.resolve_first_block(first_block), split_tokens, store)


def store_rows(
    model: nn.Module,
    images: torch.Tensor,
    first_block: str | int | None = None,
    dtype: str = "fp16",
    model_name: str | None = None,
) -> StoredComponents:
    """The component store of ``images``: what :func:`expand` rebuilds their components from,
    arrays in ``dtype`` ("fp16" or "fp32"), scalars in fp32. One forward pass; to keep the
    decomposition too, call ``decompose(..., store=True)`` and ``.stored.to(dtype)``."""
    return decompose(model, images, first_block, model_name=model_name, store=True).stored.to(dtype)


def expand(stored: StoredComponents, model: nn.Module) -> torch.Tensor:
    """The components (batch, components, dim) in z-space that ``stored`` holds, equal to
    ``decompose(...).contributions`` of the same images (names: ``stored.names``), from the
    weights of ``model`` alone: no image passes through the model."""
    return adapter_for(model, stored.model_name).expand(stored)


def model_output(model: nn.Module, images: torch.Tensor, model_name: str | None = None) -> torch.Tensor:
    """The representation z of ``images`` that :func:`decompose` splits: one definition per
    family (timm: pre-logits; MaxViT-tf: before the head's tanh layer; CLIP: the normalised
    image embedding), also for models of a family whose configuration cannot be split."""
    return cached_adapter(model, model_name or model_display_name(model)).output(images)


def model_display_name(model: nn.Module) -> str:
    """The name results report ``model`` by: what ``load_model`` was asked for, else its class."""
    return getattr(model, "compsearch_name", None) or type(model).__name__


__all__ = [
    "Adapter",
    "Decomposition",
    "HookScope",
    "StoredArray",
    "StoredComponents",
    "TokenSplit",
    "adapter_for",
    "cached_adapter",
    "decompose",
    "expand",
    "linearised_layer_norm",
    "model_output",
    "register_adapter",
    "registered_adapters",
    "store_rows",
]
