"""Scoring components for a property: pure functions on tensors (docs/architecture.md, Property vectors).

``mapped`` is always (images, components, d_clip): the aligned contributions f_i(c_i(x)) of
a probe set. Scores are per component, higher meaning "carries more of the property".
"""
from __future__ import annotations

import torch

# A component whose variance over the probe set is below this share of the most variable
# component's is image-independent (``bias``, or any other constant). float32 noise on a
# truly constant component sits many orders of magnitude lower; a component this quiet
# adds a fixed vector to every image and can carry no property.
CONSTANT_TOLERANCE = 1e-8


class ComponentVariance:
    """Each component's variance over images (summed over dimensions), accumulated batch by
    batch so a probe set of any size is never held whole. Sums are taken around the first
    image's values, so a constant component comes out exactly 0."""

    def __init__(self) -> None:
        self._shift: torch.Tensor | None = None
        self._sum: torch.Tensor | None = None
        self._squares: torch.Tensor | None = None
        self.count = 0

    def update(self, mapped: torch.Tensor) -> None:
        """Add a batch (images, components, dim)."""
        values = mapped.double()
        if self._shift is None:
            self._shift = values[0].clone()
            self._sum = torch.zeros_like(self._shift)
            self._squares = torch.zeros_like(self._shift)
        centred = values - self._shift
        self._sum += centred.sum(0)
        self._squares += centred.pow(2).sum(0)
        self.count += len(values)

    @property
    def variances(self) -> torch.Tensor:
        """(components,): Σ_d Var_x of each component's value, 0 before any image."""
        if self._sum is None:
            return torch.zeros(0, dtype=torch.float64)
        mean = self._sum / self.count
        return (self._squares / self.count - mean.pow(2)).clamp_min(0).sum(-1)


def component_variances(mapped: torch.Tensor) -> torch.Tensor:
    """:class:`ComponentVariance` of a probe set held in memory (images, components, dim)."""
    variance = ComponentVariance()
    variance.update(mapped)
    return variance.variances


def constant_components(variances: torch.Tensor, tolerance: float = CONSTANT_TOLERANCE) -> torch.Tensor:
    """Boolean mask (components,) of the image-independent components (see
    :data:`CONSTANT_TOLERANCE`); all of them when nothing varies (fewer than two distinct images)."""
    return variances <= tolerance * variances.max()


def _correlation(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson correlation over dim 0; 0 where either side is constant (no signal to share)."""
    x = x - x.mean(0)
    y = y - y.mean(0)
    denominator = (x.pow(2).sum(0) * y.pow(2).sum(0)).sqrt()
    correlation = (x * y).sum(0) / denominator
    return torch.where(denominator > 1e-12 * (1 + denominator.max()), correlation, torch.zeros_like(correlation))


def property_coordinates(mapped: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """a_i(x) = B_p f_i(c_i(x)): (images, components, k). Small, so a probe set can be
    projected batch by batch and only the coordinates kept."""
    return torch.einsum("ncd,kd->nck", mapped.double(), basis.double())


def scores_from_coordinates(coordinates: torch.Tensor) -> torch.Tensor:
    """S_p(i) = (1/k) Σ_m Corr_x(a_{i,m}(x), a_m(x)) with a = Σ_i a_i: (components,)."""
    total = coordinates.sum(1, keepdim=True)  # a(x)
    return _correlation(coordinates, total.expand_as(coordinates)).mean(-1).float()


def property_scores(mapped: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """S_p for every component of ``mapped`` (images, components, d_clip) given B_p (k, d_clip)."""
    return scores_from_coordinates(property_coordinates(mapped, basis))


def contrast_scores(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """S_p(i) − max_{q≠p} S_q(i) for every property; a lone property keeps its own scores."""
    if len(scores) < 2:
        return dict(scores)
    stacked = torch.stack(list(scores.values()))
    contrasted = {}
    for position, name in enumerate(scores):
        others = torch.cat([stacked[:position], stacked[position + 1:]])
        contrasted[name] = stacked[position] - others.max(0).values
    return contrasted


def label_variance_share(contributions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The share of each component's variance a label explains, corrected for chance (ω²,
    summed over dimensions): (images, components, dim), (images,) → (components,), ≤ 1.

    The plain share η² = SS_between / SS_total is biased upwards: with no relation at all its
    expected value is (C−1)/(N−1) for C values over N images — about 0.25 for 150 values of 4
    images each, 0.01 for 6 values of 100 — so a label with many values would beat every
    other property on every component. Under no relation E[SS_between] = (C−1)·σ² and the
    within-class mean square MS_within = SS_within / (N−C) estimates σ², so

        ω² = (SS_between − (C−1)·MS_within) / (SS_total + MS_within)

    has expectation ≈ 0 for an unrelated label whatever C and N, and ≈ η² for a strong one.
    ω² (Hays's fixed-effects estimator) rather than the adjusted η² = 1 − (1−η²)(N−1)/(N−C),
    which is the same numerator over SS_total: adding MS_within makes the denominator, like
    the numerator, an estimate of a population variance component; the two differ by under
    1/(N−C) of the score, so the choice never reorders components much.
    It is slightly negative when a label explains less than chance; 0 for a constant component
    and when every image has its own value (N = C: nothing left to estimate σ² from).
    Needs no text encoder, so it scores properties given only by labelled example images.
    """
    values = contributions.double()
    centred = values - values.mean(0)
    total = centred.pow(2).sum((0, 2))
    classes, labels = torch.unique(labels, return_inverse=True)
    counts = torch.bincount(labels, minlength=len(classes)).double()
    sums = torch.zeros(len(classes), *centred.shape[1:], dtype=torch.float64).index_add_(0, labels, centred)
    between = (sums.pow(2).sum(-1) / counts[:, None]).sum(0)  # Σ_c n_c ‖μ_c − μ‖²
    images, values_count = len(labels), len(classes)
    if images <= values_count:
        return torch.zeros_like(total).float()
    mean_within = (total - between).clamp_min(0) / (images - values_count)
    omega = (between - (values_count - 1) * mean_within) / (total + mean_within).clamp_min(1e-300)
    return torch.where(total > 0, omega, torch.zeros_like(total)).float()


def rank_components(scores: torch.Tensor, names: list[str]) -> list[tuple[str, float]]:
    """``(name, score)`` best first; ties keep the decomposition's order."""
    order = torch.argsort(scores, descending=True, stable=True)
    return [(names[i], scores[i].item()) for i in order.tolist()]
