"""Zero-shot classification of world images, one factor at a time, with any CLIP model."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from compsearch.indexer.world.captions import zero_shot_prompts
from compsearch.indexer.world.factors import FACTORS, WorldItem
from compsearch.indexer.world.render import render_image
from compsearch.mapping.models import LoadedModel


@torch.no_grad()
def class_embeddings(model: LoadedModel, factor: str) -> torch.Tensor:
    """(values, d): per value, the normalised mean of its normalised prompt embeddings."""
    rows = [model.encode_text(zero_shot_prompts(factor, value)).mean(dim=0) for value in FACTORS[factor]]
    return torch.nn.functional.normalize(torch.stack(rows), dim=-1)


@torch.no_grad()
def encode_items(model: LoadedModel, items: Sequence[WorldItem], size: int = 224, batch_size: int = 64) -> torch.Tensor:
    """``model.encode_images`` of the items rendered at ``size`` and put through the model's preprocess."""
    chunks = []
    for start in range(0, len(items), batch_size):
        batch = torch.stack([model.preprocess(render_image(item, size)) for item in items[start:start + batch_size]])
        chunks.append(model.encode_images(batch))
    return torch.cat(chunks)


def zero_shot_accuracy(model: LoadedModel, items: Sequence[WorldItem], size: int = 224) -> dict[str, float]:
    """Share of items whose nearest class prompt is the right value, per factor."""
    images = encode_items(model, items, size)
    accuracy = {}
    for factor, values in FACTORS.items():
        predicted = (images @ class_embeddings(model, factor).T).argmax(dim=1).numpy()
        truth = np.array([values.index(getattr(item, factor)) for item in items])
        accuracy[factor] = float((predicted == truth).mean())
    return accuracy
