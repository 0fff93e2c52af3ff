"""Spurious-feature removal on a constructed case where one component carries the spurious factor."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from compsearch.indexer.world import SPLITS, render_image
from compsearch.mapping.errors import CompsearchError
from compsearch.mapping.explain.debias import LabelledSet, debias, group_accuracy, mean_ablated
from compsearch.search.cli import cli

NAMES = ["core", "spurious", "noise.a", "noise.b", "noise.c"]


def constructed(count: int, agreement: float, seed: int) -> LabelledSet:
    """Label y and spurious s in {0, 1}, s = y with probability ``agreement`` (balanced groups
    when 0.5). Component ``core`` says y, noisily, on axis 0; ``spurious`` says s, cleanly, on
    axis 1; the others are noise on axes 2 and 3."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (count,), generator=generator)
    agree = torch.rand(count, generator=generator) < agreement
    spurious = torch.where(agree, labels, 1 - labels)
    contributions = torch.zeros(count, len(NAMES), 4)
    contributions[:, 0, 0] = 2.0 * labels - 1 + torch.randn(count, generator=generator)  # about 84 % alone
    contributions[:, 1, 1] = 2.0 * spurious - 1 + 0.1 * torch.randn(count, generator=generator)
    contributions[:, 2:, 2:] = torch.randn(count, len(NAMES) - 2, 2, generator=generator)
    return LabelledSet(contributions, [f"y{v}" for v in labels.tolist()], [f"s{v}" for v in spurious.tolist()])


def test_ablating_the_component_that_carries_the_spurious_factor_removes_it() -> None:
    train, test = constructed(600, 0.95, seed=0), constructed(800, 0.5, seed=1)
    report = debias(NAMES, train, test, counts=(1,))
    assert report.ranking[0][0] == "spurious"
    assert report.before.worst < 0.5  # the head leans on the spurious component
    (step,) = report.steps
    assert step.ablated == ["spurious"]
    assert step.refit_head.worst > 0.7 and step.refit_head.worst > report.before.worst + 0.3
    minority = [group for group in report.before.groups if group[0][1] != group[1][1]]
    assert all(step.refit_head.groups[group] > report.before.groups[group] for group in minority)


def test_mean_ablation_keeps_the_average_and_removes_the_variation() -> None:
    data = constructed(50, 0.5, seed=2)
    means = data.contributions.double().mean(0)
    ablated = mean_ablated(data.contributions, [1], means)
    assert torch.allclose(ablated.mean(0), data.contributions.double().sum(1).mean(0))
    assert torch.allclose(ablated[:, 1], ablated[0, 1] + data.contributions[:, (0, 2, 3, 4), 1].double().sum(1)
                          - data.contributions[0, (0, 2, 3, 4), 1].double().sum())


def test_group_accuracy_reports_every_group_and_the_worst() -> None:
    labelled = LabelledSet(torch.zeros(4, 1, 1), ["a", "a", "b", "b"], ["x", "y", "x", "y"])
    accuracy = group_accuracy(["a", "b", "b", "b"], labelled)
    assert accuracy.groups == {("a", "x"): 1.0, ("a", "y"): 0.0, ("b", "x"): 1.0, ("b", "y"): 1.0}
    assert accuracy.worst == 0.0 and accuracy.average == 0.75


def test_one_valued_attributes_are_refused() -> None:
    data = constructed(20, 1.0, seed=3)
    data.spurious = ["s0"] * 20
    with pytest.raises(CompsearchError, match="two values"):
        debias(NAMES, data, data)


def test_cli_reads_labelled_tables_and_prints_the_groups(tmp_path) -> None:
    rows = []
    for item in SPLITS["train"].items(12):
        render_image(item, 32).save(tmp_path / f"{item.index}.png")
        rows.append({"file": f"{item.index}.png", "shape": "round" if item.index % 2 else "angular",
                     "scene": "water" if item.index % 3 else "land"})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "set.parquet")
    base = ["debias", "--model", "deit_tiny_patch16_224", "--random-init", "--train", str(tmp_path / "set.parquet"),
            "--test", str(tmp_path / "set.parquet"), "--label", "shape"]
    result = CliRunner().invoke(cli, [*base, "--spurious", "scene", "--ablate", "1", "--ablate", "3"])
    assert result.exit_code == 0, result.output
    assert "worst group" in result.output and "('angular', 'land')" in result.output
    assert "ablating 3" in result.output
    refused = CliRunner().invoke(cli, [*base, "--spurious", "colour"])
    assert refused.exit_code != 0 and "no column 'colour'" in str(refused.exception)


def test_a_world_split_folder_reads_through_its_labels_table(tmp_path) -> None:
    from compsearch.indexer.world import get_split, write_split
    from compsearch.mapping.explain.debias import read_labelled_table
    from compsearch.mapping.models import load_model

    write_split(tmp_path, get_split("train"), 6, size=32, progress=False)
    model = load_model("deit_tiny_patch16_224", pretrained=False)
    _, from_folder = read_labelled_table(model, tmp_path / "train", "shape", "scene")
    _, from_table = read_labelled_table(model, tmp_path / "train.parquet", "shape", "scene")
    assert from_folder.labels == from_table.labels and len(from_folder.labels) == 6
    torch.testing.assert_close(from_folder.contributions, from_table.contributions)
    (tmp_path / "lonely").mkdir()
    with pytest.raises(CompsearchError, match="without a labels table"):
        read_labelled_table(model, tmp_path / "lonely", "shape", "scene")
