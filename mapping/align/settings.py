"""An aligner's training settings: plain data without torch, so the command line shows their
defaults in ``--help`` without loading the model libraries."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainSettings:
    """The reference settings (docs/architecture.md, Alignment); ``patience`` counts batches, not epochs."""

    learning_rate: float = 3e-4
    weight_decay: float = 1e-6
    batch_size: int = 32
    regularisation: float = 1.0
    init_std: float = 0.02
    patience: int = 50
    max_epochs: int = 20
    heldout_fraction: float = 0.1
    seed: int = 0
