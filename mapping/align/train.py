"""Training an aligner: Adam on the CompAlign objective with batch-level early stopping."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from tqdm import tqdm

from compsearch.mapping.align.aligner import alignment_loss, mapped_sum
from compsearch.mapping.align.settings import TrainSettings
from compsearch.mapping.errors import CompsearchError

Batch = tuple[torch.Tensor, torch.Tensor]  # contributions (rows, C, d_model), targets (rows, d_clip)


class FeatureSource(Protocol):
    """Row-aligned (contributions, targets) batches, split into training and held-out rows."""

    def batches(self, batch_size: int, heldout: bool, generator: torch.Generator | None = None) -> Iterator[Batch]:
        ...

    def count(self, heldout: bool) -> int:
        """How many training (``heldout=False``) or held-out rows :meth:`batches` yields."""
        ...


@dataclass
class TensorSource:
    """A :class:`FeatureSource` over tensors in memory (tests, benchmarks, small probe sets)."""

    contributions: torch.Tensor
    targets: torch.Tensor
    heldout_mask: torch.Tensor  # (rows,) bool

    def count(self, heldout: bool) -> int:
        return int((self.heldout_mask == heldout).sum())

    def batches(self, batch_size: int, heldout: bool, generator: torch.Generator | None = None) -> Iterator[Batch]:
        rows = (self.heldout_mask == heldout).nonzero().squeeze(1)
        if generator is not None:
            rows = rows[torch.randperm(len(rows), generator=generator)]
        for start in range(0, len(rows), batch_size):
            chosen = rows[start:start + batch_size]
            yield self.contributions[chosen].float(), self.targets[chosen].float()


@dataclass
class TrainResult:
    weight: torch.Tensor
    bias: torch.Tensor
    final_loss: float  # mean training loss over the last `patience` batches
    best_batch_loss: float
    heldout_cosine: float | None  # None when no row is held out
    batches: int
    epochs: int
    stopped_early: bool


def heldout_cosine(weight: torch.Tensor, bias: torch.Tensor, source: FeatureSource, batch_size: int = 256) -> float | None:
    """Mean cos(Σ_i f_i(c_i), ẑ_CLIP) over the source's held-out rows."""
    total, count = 0.0, 0
    with torch.no_grad():
        for contributions, targets in source.batches(batch_size, heldout=True):
            total += F.cosine_similarity(mapped_sum(weight, bias, contributions), targets, dim=-1).sum().item()
            count += len(targets)
    return total / count if count else None


def train_aligner(
    source: FeatureSource, components: int, model_dim: int, clip_dim: int,
    settings: TrainSettings = TrainSettings(), progress: bool = True,
) -> TrainResult:
    """Fit ``W`` (components, model_dim, clip_dim) and the shared bias ``b`` on ``source``.

    Stops after ``settings.patience`` consecutive batches whose loss does not beat the best
    so far, or after ``settings.max_epochs``.
    """
    generator = torch.Generator().manual_seed(settings.seed)
    weight = (torch.randn(components, model_dim, clip_dim, generator=generator) * settings.init_std).requires_grad_()
    bias = torch.zeros(clip_dim, requires_grad=True)
    optimiser = torch.optim.Adam([weight, bias], lr=settings.learning_rate, weight_decay=settings.weight_decay)
    best, since_best, batches, recent = float("inf"), 0, 0, []
    stopped_early = False
    # Per training image, over every epoch allowed: an early stop ends the bar short of its total.
    bar = tqdm(desc="aligning", unit="img", total=settings.max_epochs * source.count(heldout=False),
               disable=not progress)
    epoch = 0
    for epoch in range(1, settings.max_epochs + 1):
        for contributions, targets in source.batches(settings.batch_size, heldout=False, generator=generator):
            loss, _ = alignment_loss(weight, bias, contributions, targets, settings.regularisation)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            value = loss.item()
            batches += 1
            recent = (recent + [value])[-settings.patience:]
            bar.update(len(targets))
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", epoch=epoch)
            if value < best:
                best, since_best = value, 0
            else:
                since_best += 1
            if since_best >= settings.patience:
                stopped_early = True
                break
        if stopped_early:
            break
    bar.close()
    if not batches:
        raise CompsearchError(
            "no training rows: every image was held out or the image set is empty",
            "use more images or a smaller held-out fraction",
        )
    weight, bias = weight.detach(), bias.detach()
    return TrainResult(
        weight, bias, sum(recent) / len(recent), best, heldout_cosine(weight, bias, source),
        batches, epoch, stopped_early,
    )
