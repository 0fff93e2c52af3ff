"""A property's subspace of CLIP text space (docs/architecture.md, Property vectors)."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from compsearch.mapping.properties.vocabulary import Property

TextEncoder = Callable[[list[str]], torch.Tensor]  # texts -> (texts, d_clip) embeddings


def description_embeddings(prop: Property, encode_text: TextEncoder) -> torch.Tensor:
    """t_j = normalise(mean over templates of normalise(E_text(template(s_j)))): (k, d_clip)."""
    prompts = [prompt for description in prop.descriptions for prompt in prop.prompts(description)]
    with torch.no_grad():
        embedded = F.normalize(encode_text(prompts).float().cpu(), dim=-1)
    per_description = embedded.view(len(prop.descriptions), len(prop.templates), -1).mean(1)
    return F.normalize(per_description, dim=-1)


def orthonormal_basis(embeddings: torch.Tensor, tolerance: float = 1e-6) -> torch.Tensor:
    """Rows spanning span{t_j} orthonormally (QR), dropping directions the others already span
    (more descriptions than dimensions, or repeated ones): (rank, d_clip)."""
    q, r = torch.linalg.qr(embeddings.double().T)
    kept = r.diagonal().abs() > tolerance * r.diagonal().abs().max()
    return q[:, kept].T.to(embeddings.dtype)


def property_basis(prop: Property, encode_text: TextEncoder) -> torch.Tensor:
    """B_p for ``prop``: an orthonormal basis of its descriptions' text embeddings."""
    return orthonormal_basis(description_embeddings(prop, encode_text))
