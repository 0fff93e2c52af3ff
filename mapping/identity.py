"""What makes two encoders produce comparable vectors, as plain data: recorded in index
manifests and compared before a query touches an index. Torch-free, so reading a manifest
(``compsearch info``, id queries) never imports the model libraries."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

RANDOM_INIT = "random-init"  # the weights id of a randomly initialised model: nothing can make its vectors again

# The arithmetic vectors are computed in: part of an encoder's identity, since bf16 vectors
# differ from fp32 ones in the third digit and a query should land where its image was indexed.
Precision = Literal["fp32", "bf16"]


@dataclass(frozen=True)
class EncoderIdentity:
    """The model, weights, range, space, aligner, CLIP, precision and components of an encoder."""

    model_name: str
    model_weights_id: str
    first_block: str
    space: str  # "clip" (aligned) or "model"
    aligner_id: str | None
    clip_name: str | None
    clip_weights_id: str | None
    precision: Precision
    properties: dict[str, list[str]] = field(default_factory=dict)  # property → summed components
