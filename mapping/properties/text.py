"""A property's subspace of CLIP text space (docs/architecture.md, Property vectors)."""
from __future__ import annotations

import torch

from compsearch.mapping.properties.prompts import TextEncoder, description_vectors
from compsearch.mapping.properties.vocabulary import Property


@torch.no_grad()
def description_embeddings(prop: Property, encode_text: TextEncoder) -> torch.Tensor:
    """t_j = normalise(mean over templates of normalise(E_text(template(s_j)))): (k, d_clip)."""
    return torch.from_numpy(description_vectors(prop, encode_text))


def orthonormal_basis(embeddings: torch.Tensor, tolerance: float = 1e-6) -> torch.Tensor:
    """Rows spanning span{t_j} orthonormally (QR), dropping directions the others already span
    (more descriptions than dimensions, or repeated ones): (rank, d_clip)."""
    q, r = torch.linalg.qr(embeddings.double().T)
    kept = r.diagonal().abs() > tolerance * r.diagonal().abs().max()
    return q[:, kept].T.to(embeddings.dtype)


def property_basis(prop: Property, encode_text: TextEncoder) -> torch.Tensor:
    """B_p for ``prop``: an orthonormal basis of its descriptions' text embeddings."""
    return orthonormal_basis(description_embeddings(prop, encode_text))
