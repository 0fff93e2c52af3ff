"""Text vectors from prompt templates: t_j = normalise(mean over templates of normalise(E_text(
template(s_j)))) (docs/architecture.md, Property vectors) — for rankings and for text queries
alike, whichever backend runs the CLIP's text tower (torch, or its ONNX export), so this module
imports no torch."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from compsearch.mapping.properties.vocabulary import Property

# texts -> (texts, d_clip) embeddings: a torch tensor on any device, or an array
TextEncoder = Callable[[list[str]], Any]


def as_array(embeddings: Any) -> np.ndarray:
    """Embeddings as float32 NumPy on the CPU (a torch tensor is moved there first)."""
    if hasattr(embeddings, "detach"):  # a torch tensor, recognised without importing torch
        embeddings = embeddings.detach().float().cpu()
    return np.asarray(embeddings, dtype=np.float32)


def normalise(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-12)


def description_vectors(prop: Property, encode_text: TextEncoder) -> np.ndarray:
    """``(k, d_clip)``: t_j of each of ``prop``'s descriptions over its templates."""
    prompts = [prompt for description in prop.descriptions for prompt in prop.prompts(description)]
    embedded = normalise(as_array(encode_text(prompts)))
    return normalise(embedded.reshape(len(prop.descriptions), len(prop.templates), -1).mean(1))


def embed_texts(encode_text: TextEncoder, texts: Sequence[str], templates: Sequence[str]) -> np.ndarray:
    """Text queries in the CLIP's space: per text, the normalised mean of its prompts'
    normalised embeddings. Needs only the text tower, so a search by text never loads the
    image model."""
    return description_vectors(Property("query", tuple(texts), tuple(templates)), encode_text)
