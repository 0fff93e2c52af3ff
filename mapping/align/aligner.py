"""CompAlign: one linear map per component into CLIP space, and its objective (docs/architecture.md, Alignment).

``f_i(c) = W_iᵀ c + b/n`` with ``W`` stored as one (components, d_model, d_clip) tensor so
every component is mapped by one einsum; ``weight=None`` is the identity aligner (a CLIP
ViT decomposed in its own embedding space).

Where the identity of the orthogonality regulariser lives: ``‖W_iᵀW_i − I‖_F²`` and
``‖W_iW_iᵀ − I‖_F²`` differ only by the constant ``|d_model − d_clip|`` (the two Gram
matrices share their non-zero spectrum), so they have the same gradient and the same
minimisers. We evaluate the Gram matrix on the *smaller* side, so the regulariser is zero
exactly at partial isometries (orthonormal rows or columns) and the reported loss has no
unreachable floor: with d_model ≥ d_clip, ``W_iᵀW_i = I`` (the map is a projection onto
CLIP space); with d_model < d_clip, ``W_iW_iᵀ = I`` (an isometric embedding into it).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def orthogonality_penalty(weight: torch.Tensor) -> torch.Tensor:
    """``(1/(n·d_clip)) Σ_i ‖G_i − I‖_F²`` with G_i the Gram matrix of W_i on its smaller side."""
    components, d_model, d_clip = weight.shape
    if d_model >= d_clip:
        gram = torch.einsum("cdk,cdl->ckl", weight, weight)
    else:
        gram = torch.einsum("cdk,cek->cde", weight, weight)
    identity = torch.eye(gram.shape[-1], dtype=weight.dtype, device=weight.device)
    return (gram - identity).pow(2).sum() / (components * d_clip)


def mapped_sum(weight: torch.Tensor, bias: torch.Tensor, contributions: torch.Tensor) -> torch.Tensor:
    """``Σ_i f_i(c_i)`` for a batch (batch, components, d_model) → (batch, d_clip): one matmul."""
    return contributions.flatten(1) @ weight.flatten(0, 1) + bias


def alignment_loss(
    weight: torch.Tensor,
    bias: torch.Tensor,
    contributions: torch.Tensor,
    targets: torch.Tensor,
    regularisation: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The CompAlign objective on one batch; returns ``(loss, mean cosine)``."""
    cosine = F.cosine_similarity(mapped_sum(weight, bias, contributions), targets, dim=-1).mean()
    return 1.0 - cosine + regularisation * orthogonality_penalty(weight), cosine


@dataclass
class AlignerMeta:
    """What an aligner maps from and to, and how it was trained (the JSON sidecar)."""

    model_name: str
    model_weights_id: str
    clip_name: str
    clip_weights_id: str
    component_names: list[str]
    model_dim: int
    clip_dim: int
    first_block: str | None
    identity: bool = False
    final_loss: float | None = None
    heldout_cosine: float | None = None
    train_images: int = 0
    heldout_images: int = 0
    settings: dict | None = None
    trained_on: str | None = None  # the images' source, e.g. 'folder /data/renders' (absent in older sidecars)


@dataclass
class Aligner:
    """Maps component contributions of one model into one CLIP's embedding space."""

    meta: AlignerMeta
    weight: torch.Tensor | None  # (components, d_model, d_clip); None: identity
    bias: torch.Tensor  # (d_clip,), shared, split equally over the components

    @classmethod
    def identity(cls, meta: AlignerMeta) -> Aligner:
        return cls(meta, None, torch.zeros(meta.clip_dim))

    @property
    def component_names(self) -> list[str]:
        return self.meta.component_names

    def map_components(self, contributions: torch.Tensor) -> torch.Tensor:
        """``f_i(c_i)`` for every component: (batch, components, d_model) → (batch, components, d_clip)."""
        contributions = contributions.to(self.bias.dtype)
        if self.weight is None:
            return contributions
        share = self.bias / len(self.component_names)
        return torch.einsum("bcd,cdk->bck", contributions, self.weight) + share

    def map_sum_of(self, contributions: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``Σ_{i∈positions} f_i(c_i)``: a property's vector from the components it sums
        (each carries its 1/n share of the bias), mapping only those: (batch, d_clip)."""
        selected = contributions[:, positions].to(self.bias.dtype)
        if self.weight is None:
            return selected.sum(1)
        share = self.bias / len(self.component_names)
        return mapped_sum(self.weight[positions], share * len(positions), selected)

    def map_sum(self, contributions: torch.Tensor) -> torch.Tensor:
        """``Σ_i f_i(c_i)``: the aligned representation of each image (batch, d_clip)."""
        contributions = contributions.to(self.bias.dtype)
        if self.weight is None:
            return contributions.sum(1)
        return mapped_sum(self.weight, self.bias, contributions)
