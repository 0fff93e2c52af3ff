"""``compsearch debias``: mean-ablate the components that carry a spurious attribute."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import click

from compsearch.mapping.commands.options import first_block_option, json_option, load_model_from_options, model_options

if TYPE_CHECKING:
    from compsearch.mapping.explain.debias import DebiasReport, GroupAccuracy

RANKED_SHOWN = 5


def _accuracy_line(name: str, accuracy: GroupAccuracy) -> str:
    groups = "  ".join(f"{group}: {value:.3f}" for group, value in accuracy.groups.items())
    return f"  {name:<12} worst group {accuracy.worst:.3f}  average {accuracy.average:.3f}  |  {groups}"


def format_report(report: DebiasReport) -> str:
    lines = ["components by S_spurious − S_label:",
             *(f"  {name:<32} {score:+.4f}" for name, score in report.ranking[:RANKED_SHOWN]),
             "", "before", _accuracy_line("head", report.before)]
    for step in report.steps:
        lines += ["", f"ablating {len(step.ablated)}: {', '.join(step.ablated)}",
                  _accuracy_line("same head", step.reused_head), _accuracy_line("refit head", step.refit_head)]
    return "\n".join(lines)


def _as_json(report: DebiasReport) -> dict:
    """Group keys (label, spurious) as "label|spurious" strings: JSON objects need string keys."""
    def groups(accuracy: GroupAccuracy) -> dict:
        data = asdict(accuracy)
        for key in ("groups", "sizes"):
            data[key] = {"|".join(group): value for group, value in data[key].items()}
        return data

    return {"ranking": report.ranking, "before": groups(report.before),
            "steps": [{"ablated": step.ablated, "reused_head": groups(step.reused_head),
                       "refit_head": groups(step.refit_head)} for step in report.steps]}


@click.command("debias")
@model_options
@click.option("--train", "train_table", required=True, type=click.Path(exists=True, path_type=Path),
              help="Parquet/CSV of training images: a path (or file) column and the two attribute columns; or a "
                   "world split folder (OUT/train, read through OUT/train.parquet).")
@click.option("--test", "test_table", required=True, type=click.Path(exists=True, path_type=Path),
              help="The same for the test images (ideally balanced over the groups).")
@click.option("--label", required=True, help="Column of the attribute to predict, e.g. shape.")
@click.option("--spurious", required=True, help="Column of the attribute the head should not use, e.g. scene.")
@click.option("--ablate", "counts", multiple=True, type=click.IntRange(min=1), default=(10,), show_default=True,
              help="How many top components to mean-ablate (repeat to sweep).")
@first_block_option
@json_option
def debias_command(
    model_name: str, weights: Path | None, random_init: bool, device: str, batch_size: int, train_table: Path,
    test_table: Path, label: str, spurious: str, counts: tuple[int, ...], first_block: str | None, as_json: bool,
) -> None:
    """Fit a linear head for LABEL, mean-ablate the components ranked by S_spurious − S_label,
    and report per-group, worst-group and average test accuracy before → after."""
    from compsearch.mapping.explain.debias import debias, read_labelled_table

    model = load_model_from_options(model_name, weights, random_init, device)
    names, train = read_labelled_table(model, train_table, label, spurious, first_block, batch_size)
    _, test = read_labelled_table(model, test_table, label, spurious, first_block, batch_size)
    report = debias(names, train, test, counts)
    click.echo(json.dumps(_as_json(report)) if as_json else format_report(report))
