"""The synthetic world: deterministic, labels match the pixels, splits disjoint, files round-trip."""
from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from compsearch.indexer.world import (
    FACTORS, HELDOUT_PAIRS, SPLITS, Holdout, draw_item, get_split, is_heldout, read_labels, render,
    write_split,
)
from compsearch.indexer.world.factors import COLOURS
from compsearch.indexer.world.render import OUTLINE_RGB, SECONDARY_SHADE, render_scene
from compsearch.mapping.errors import CompsearchError
from compsearch.search.cli import cli

SIZE = 64


def test_same_seed_and_index_give_identical_pixels() -> None:
    assert np.array_equal(render(draw_item(3, 5), SIZE), render(draw_item(3, 5), SIZE))


@pytest.mark.parametrize("other", [(3, 6), (4, 5)])
def test_different_seed_or_index_give_different_pixels(other: tuple[int, int]) -> None:
    assert not np.array_equal(render(draw_item(3, 5), SIZE), render(draw_item(*other), SIZE))


def _shape_pixels(item, size: int = SIZE) -> np.ndarray:
    """The pixels where the rendered image differs from its scene alone: the shape and its rim."""
    image = render(item, size)
    scene = np.clip(np.rint(render_scene(item, size)), 0, 255).astype(np.uint8)
    return image[np.any(image != scene, axis=-1)]


@pytest.mark.parametrize("index", range(24))
def test_shape_pixels_are_the_labelled_colour_its_shade_or_the_rim(index: int) -> None:
    item = draw_item(0, index)
    pixels = _shape_pixels(item)
    colour = np.array(COLOURS[item.colour])
    shade = np.rint(colour * SECONDARY_SHADE)
    is_colour = np.all(pixels == colour, axis=1)
    is_shade = np.all(pixels == shade, axis=1)
    is_rim = np.all(pixels == OUTLINE_RGB, axis=1)
    assert np.all(is_colour | is_shade | is_rim)
    assert is_colour.mean() > 0.25
    if item.pattern == "plain":
        assert not is_shade.any()
    else:
        assert is_shade.mean() > 0.05


def test_scene_pixels_match_the_scene_label() -> None:
    for index in range(40):
        item = draw_item(0, index)
        scene = render_scene(item, SIZE)
        red, green, blue = scene.reshape(-1, 3).mean(axis=0)
        if item.scene == "beach":
            assert scene[0, :, 2].mean() > scene[0, :, 0].mean()  # sky on top
            assert scene[-1, :, 0].mean() > scene[-1, :, 2].mean()  # sand below
        elif item.scene == "water":
            assert blue > red and blue > green
        elif item.scene == "forest":
            assert green > red and green > blue
        elif item.scene == "city":
            assert scene[-1].std(axis=-1).mean() < 10  # grey buildings
            assert scene.std() > 20
        else:
            assert scene.std(axis=(0, 1)).max() < 1e-6


def test_background_outside_the_shape_is_the_scene() -> None:
    item = draw_item(0, 7)
    image = render(item, SIZE)
    assert np.array_equal(image[0, 0], np.rint(render_scene(item, SIZE)[0, 0]).astype(np.uint8))
    assert 0.1 < len(_shape_pixels(item)) / SIZE**2 < 0.7


def test_splits_are_disjoint() -> None:
    assert len({split.seed for split in SPLITS.values()}) == len(SPLITS)
    hashes = {
        name: {render(item, 32).tobytes() for item in split.items(40)} for name, split in SPLITS.items()
    }
    names = list(hashes)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not hashes[a] & hashes[b], (a, b)


def test_compositional_holdout_is_respected() -> None:
    train = [item.factors() for item in SPLITS["train"].items(500)]
    test = [item.factors() for item in SPLITS["test"].items(200)]
    compositional = [item.factors() for item in SPLITS["compositional"].items(500)]
    assert not any(is_heldout(f) for f in train + test)
    assert all(is_heldout(f) for f in compositional)
    for (a, b), pairs in HELDOUT_PAIRS.items():
        assert pairs <= {(f[a], f[b]) for f in compositional}
    for name, values in FACTORS.items():
        assert {f[name] for f in train} == set(values)  # every single value is still trained on


def test_get_split_with_a_new_seed_keeps_the_holdout() -> None:
    split = get_split("compositional", seed=11)
    assert split.seed == 11 and split.holdout is Holdout.ONLY
    with pytest.raises(CompsearchError):
        get_split("validation")


def test_parquet_round_trip_and_images_match(tmp_path) -> None:
    split = get_split("test")
    labels = read_labels(write_split(tmp_path, split, 5, size=32, progress=False))
    rows = labels.to_pylist()
    assert [row["index"] for row in rows] == list(range(5))
    for row, item in zip(rows, split.items(5)):
        assert {key: row[key] for key in item.as_row()} == item.as_row()
        assert item.shape in row["caption"] and item.colour in row["caption"]
        assert np.array_equal(np.asarray(Image.open(tmp_path / row["file"])), render(item, 32))
    assert labels.schema.metadata[b"resolution"] == b"32"


def test_writing_resumes_and_replaces_broken_images(tmp_path) -> None:
    split = get_split("train")
    write_split(tmp_path, split, 3, size=32, progress=False)
    kept, broken = tmp_path / "train" / "000000.png", tmp_path / "train" / "000001.png"
    os.utime(kept, (0, 0))
    broken.write_bytes(broken.read_bytes()[:40])
    write_split(tmp_path, split, 3, size=32, progress=False)
    assert kept.stat().st_mtime == 0
    assert np.array_equal(np.asarray(Image.open(broken)), render(split.item(1), 32))


@pytest.mark.parametrize("count, size", [(0, 32), (2, 8)])
def test_bad_requests_raise_user_errors(tmp_path, count: int, size: int) -> None:
    with pytest.raises(CompsearchError):
        write_split(tmp_path, get_split("train"), count, size=size, progress=False)


def test_output_that_is_a_file_is_a_user_error(tmp_path) -> None:
    target = tmp_path / "taken"
    target.write_text("")
    with pytest.raises(CompsearchError, match="is a file"):
        write_split(target, get_split("train"), 1, size=32, progress=False)


def test_cli_renders_a_split(tmp_path) -> None:
    result = CliRunner().invoke(cli, ["world", "render", str(tmp_path), "--split", "compositional",
                                      "--count", "3", "--size", "32"])
    assert result.exit_code == 0, result.output
    assert len(read_labels(tmp_path / "compositional.parquet")) == 3
