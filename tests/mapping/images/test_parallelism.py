"""Decoding workers and model threads chosen from the cores; the index command's auto options."""
from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from compsearch.mapping.images.parallelism import Parallelism, choose_parallelism, usable_cores
from compsearch.search.cli import cli


@pytest.mark.parametrize(("device", "cores", "expected"), [
    ("cpu", 1, Parallelism(0, 1)),  # nothing to overlap with: decode between forwards
    ("cpu", 2, Parallelism(1, 2)),  # one worker prefetches, the model gets the cores
    ("cpu", 16, Parallelism(1, 16)),
    ("cuda", 2, Parallelism(1, 1)),  # on a GPU the cores decode
    ("cuda", 16, Parallelism(8, 1)),
])
def test_auto_from_the_cores(device: str, cores: int, expected: Parallelism) -> None:
    assert choose_parallelism(device, cores=cores) == expected


def test_given_counts_are_kept() -> None:
    assert choose_parallelism("cpu", workers=0, threads=3, cores=2) == Parallelism(0, 3)
    assert choose_parallelism("cpu", workers=2, cores=2) == Parallelism(2, 2)


def test_usable_cores_is_the_affinity_mask() -> None:
    assert usable_cores() == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("option", ["--workers", "--threads"])
def test_a_count_that_is_not_auto_or_a_number_is_a_usage_error(option: str, tmp_path) -> None:
    result = CliRunner().invoke(cli, ["index", str(tmp_path), "--out", str(tmp_path / "i"), "--random-init",
                                      option, "many"])
    assert result.exit_code == 2 and "is not auto or a whole number" in result.output
