"""Removing a spurious feature by mean-ablating the components that carry it (docs/architecture.md, Search).

A linear head is fitted on the model's output z = Σ_i c_i over a training set where a
*spurious* attribute (the scene) agrees with the *label* (the shape) most of the time, so the
head learns to lean on it and fails on the groups where the two disagree. Components are
scored by how much of their variance each attribute explains on the training set (the
label-variance share of :func:`mapping.rank.label_variance_share`: no text encoder needed)
and ranked by ``S_spurious − S_label``; the top k are replaced by their training mean,
which removes what they say about the image and keeps z's average. The head is then reused
as it was, or refitted on the ablated training set, and the accuracy of every (label,
spurious) group of a test set is reported before and after.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from compsearch.mapping.align.features import component_contributions
from compsearch.mapping.errors import CompsearchError
from compsearch.mapping.images import TableSource
from compsearch.mapping.models import LoadedModel
from compsearch.mapping.rank import label_variance_share, rank_components

HEAD_STEPS = 200
HEAD_WEIGHT_DECAY = 1e-3


@dataclass
class LabelledSet:
    """Component contributions of a set of images with two attributes per image."""

    contributions: torch.Tensor  # (images, components, dim)
    labels: list[str]
    spurious: list[str]

    def __post_init__(self) -> None:
        if not len(self.labels) == len(self.spurious) == len(self.contributions):
            raise ValueError("one label and one spurious value per image")


@dataclass
class GroupAccuracy:
    """Accuracy per (label, spurious) group, the worst of them, and over all images."""

    groups: dict[tuple[str, str], float]
    sizes: dict[tuple[str, str], int]
    worst: float
    average: float


@dataclass
class AblationStep:
    ablated: list[str]
    reused_head: GroupAccuracy
    refit_head: GroupAccuracy


@dataclass
class DebiasReport:
    ranking: list[tuple[str, float]]  # components by S_spurious − S_label, best first
    before: GroupAccuracy
    steps: list[AblationStep] = field(default_factory=list)


@dataclass
class LinearHead:
    """Multinomial logistic regression on standardised features."""

    classes: list[str]
    mean: torch.Tensor
    scale: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    @classmethod
    def fit(cls, features: torch.Tensor, labels: Sequence[str]) -> LinearHead:
        classes = sorted(set(labels))
        targets = torch.tensor([classes.index(label) for label in labels])
        features = features.double()
        mean, scale = features.mean(0), features.std(0).clamp_min(1e-8)
        standard = (features - mean) / scale
        weight = torch.zeros(standard.shape[1], len(classes), dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(len(classes), dtype=torch.float64, requires_grad=True)
        optimiser = torch.optim.LBFGS([weight, bias], max_iter=HEAD_STEPS, line_search_fn="strong_wolfe")

        def loss() -> torch.Tensor:
            optimiser.zero_grad()
            value = F.cross_entropy(standard @ weight + bias, targets) + HEAD_WEIGHT_DECAY * weight.pow(2).sum()
            value.backward()
            return value

        with torch.inference_mode(False), torch.enable_grad():
            optimiser.step(loss)
        return cls(classes, mean, scale, weight.detach(), bias.detach())

    def predict(self, features: torch.Tensor) -> list[str]:
        logits = ((features.double() - self.mean) / self.scale) @ self.weight + self.bias
        return [self.classes[index] for index in logits.argmax(1).tolist()]


def group_accuracy(predicted: Sequence[str], labelled: LabelledSet) -> GroupAccuracy:
    correct: dict[tuple[str, str], list[bool]] = {}
    for guess, label, spurious in zip(predicted, labelled.labels, labelled.spurious):
        correct.setdefault((label, spurious), []).append(guess == label)
    groups = {group: sum(hits) / len(hits) for group, hits in sorted(correct.items())}
    hits = [hit for group_hits in correct.values() for hit in group_hits]
    return GroupAccuracy(groups, {group: len(hits) for group, hits in sorted(correct.items())},
                         min(groups.values()), sum(hits) / len(hits))


def spurious_ranking(names: Sequence[str], train: LabelledSet) -> list[tuple[str, float]]:
    """Components by ``S_spurious − S_label`` on the training set, best first."""
    spurious = label_variance_share(train.contributions, _codes(train.spurious))
    core = label_variance_share(train.contributions, _codes(train.labels))
    return rank_components(spurious - core, list(names))


def _codes(values: Sequence[str]) -> torch.Tensor:
    vocabulary = sorted(set(values))
    return torch.tensor([vocabulary.index(value) for value in values])


def mean_ablated(contributions: torch.Tensor, columns: Sequence[int], means: torch.Tensor) -> torch.Tensor:
    """z with the ``columns`` components replaced by their (training) ``means`` (components, dim)."""
    z = contributions.double().sum(1)
    if not columns:
        return z
    columns = list(columns)
    return z - (contributions[:, columns].double() - means[columns].double()).sum(1)


def debias(names: Sequence[str], train: LabelledSet, test: LabelledSet, counts: Sequence[int] = (10,)) -> DebiasReport:
    """Ablate the top ``counts`` components for the spurious attribute; the head before and after."""
    if len(set(train.spurious)) < 2 or len(set(train.labels)) < 2:
        raise CompsearchError("the training set needs two values or more of both the label and the spurious attribute",
                              "check the --label and --spurious columns")
    ranking = spurious_ranking(names, train)
    means = train.contributions.double().mean(0)
    head = LinearHead.fit(mean_ablated(train.contributions, [], means), train.labels)
    report = DebiasReport(ranking, group_accuracy(head.predict(mean_ablated(test.contributions, [], means)), test))
    for count in counts:
        ablated = [name for name, _ in ranking[:count]]
        columns = [list(names).index(name) for name in ablated]
        test_z = mean_ablated(test.contributions, columns, means)
        refit = LinearHead.fit(mean_ablated(train.contributions, columns, means), train.labels)
        report.steps.append(AblationStep(ablated, group_accuracy(head.predict(test_z), test),
                                         group_accuracy(refit.predict(test_z), test)))
    return report


def read_labelled_table(
    model: LoadedModel, table: str | Path, label: str, spurious: str, first_block: str | int | None = None,
    batch_size: int = 32,
) -> tuple[list[str], LabelledSet]:
    """Decompose the images a Parquet/CSV table lists (``path``/``file`` column) with their
    ``label`` and ``spurious`` columns (the world's labels tables have both). A folder stands
    for the table beside it, as `compsearch world render` writes them (``OUT/train`` and
    ``OUT/train.parquet``)."""
    table = Path(table)
    if table.is_dir():
        beside = table.with_name(table.name + ".parquet")
        if not beside.is_file():
            raise CompsearchError(f"{table} is a folder without a labels table beside it ({beside.name})",
                                  "pass a Parquet/CSV file with a path column and the attribute columns")
        table = beside
    records = list(TableSource(table).records())
    for column in (label, spurious):
        if not records or column not in records[0].metadata:
            columns = ", ".join(records[0].metadata) if records else "none: the table is empty"
            raise CompsearchError(f"{table} has no column {column!r} (columns: {columns})",
                                  "name the label and spurious attributes by their column names")
    names, contributions = component_contributions(model, [record.path for record in records], first_block, batch_size)
    return names, LabelledSet(contributions, [str(record.metadata[label]) for record in records],
                              [str(record.metadata[spurious]) for record in records])
