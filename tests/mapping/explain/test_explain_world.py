"""Heatmaps where the answer is known: world images, whose object masks are exact."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from click.testing import CliRunner

from compsearch.indexer.world import SPLITS, render_image, render_mask
from compsearch.mapping.align import align
from compsearch.mapping.explain import Query, explain_images, split_transform
from compsearch.mapping.models import LoadedModel, load_model
from compsearch.mapping.properties import builtin_property
from compsearch.mapping.rank import rank
from compsearch.search.cli import cli

ITEMS = SPLITS["test"].items(60)


def object_and_background_heat(model: LoadedModel, queries: list[Query]) -> np.ndarray:
    """(images, 2): mean heat per object pixel and per background pixel, one query per image."""
    transform = split_transform(model.preprocess)
    densities = []
    for item, query in zip(ITEMS, queries):
        (explanation,) = explain_images(model, [render_image(item)], query, encode_text=model.encode_text)
        heat, mask = explanation.pixel_heat(), transform.mask(render_mask(item))
        densities.append((heat[mask].mean(), heat[~mask].mean()))
    return np.array(densities)


def test_colour_text_heat_lies_on_the_object(clip: LoadedModel) -> None:
    densities = object_and_background_heat(clip, [Query(text=f"a {item.colour} shape") for item in ITEMS])
    assert densities[:, 0].mean() > 2 * densities[:, 1].mean()
    assert (densities[:, 0] > densities[:, 1]).mean() >= 0.85


def test_shape_property_heat_lies_on_the_object_more_than_scene_heat(clip: LoadedModel) -> None:
    shape = object_and_background_heat(clip, [Query(property=builtin_property("shape"))] * len(ITEMS))
    scene = object_and_background_heat(clip, [Query(property=builtin_property("location"))] * len(ITEMS))
    shape_ratio, scene_ratio = (densities[:, 0].mean() / densities[:, 1].mean() for densities in (shape, scene))
    assert shape_ratio > 1.3
    assert scene_ratio < shape_ratio


def _in_top_left_quadrant(item_index: int) -> tuple[PIL.Image.Image, np.ndarray]:
    """A world object shrunk into the top-left quarter of a blank canvas, and that quarter's mask."""
    canvas = PIL.Image.new("RGB", (224, 224), (210, 210, 210))
    canvas.paste(render_image(ITEMS[item_index], 112), (0, 0))
    quadrant = np.zeros((224, 224), dtype=bool)
    quadrant[:112, :112] = True
    return canvas, quadrant


def test_real_deit_class_heat_follows_the_object_to_its_corner(deit_tiny_weights: Path) -> None:
    model = load_model("deit_tiny_patch16_224", weights=deit_tiny_weights)
    transform = split_transform(model.preprocess)
    pictures, quadrants = zip(*(_in_top_left_quadrant(index) for index in range(8)))
    shares = []
    for explanation, quadrant in zip(explain_images(model, list(pictures)), quadrants):
        heat = np.clip(explanation.pixel_heat(), 0, None)
        shares.append(heat[transform.mask(quadrant)].sum() / heat.sum())
    assert np.mean(shares) > 0.7, shares  # a fifth of the input (after the crop) holds most positive heat


def test_cli_writes_the_png_and_the_grid(tmp_path: Path) -> None:
    image = tmp_path / "star.png"
    render_image(ITEMS[0]).save(image)
    out = tmp_path / "heat.png"
    args = ["explain", str(image), "--model", "deit_tiny_patch16_224", "--random-init", "--out", str(out)]
    result = CliRunner().invoke(cli, [*args, "--components", "blocks.11.attn.*", "--class", "3", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["grid_shape"] == [14, 14] and report["target"] == "class 3"
    assert report["located"] == report["components"] == [f"blocks.11.attn.h{head}" for head in range(3)]
    assert sum(map(sum, report["grid"])) + report["prefix"] + report["unlocated"] == pytest.approx(report["total"], rel=1e-4)
    with PIL.Image.open(out) as png:
        assert png.width > 224 and png.height > 224


@pytest.mark.parametrize("extra, message", [
    (["--property", "shape"], "--ranking and --property go together"),
    (["--class", "1", "--text", "a star"], "--class and --text"),
    (["--text", "a star"], "no text side"),
    (["--components", "blocks.99.*"], "no component matches"),
])
def test_cli_refuses_unclear_queries_in_one_line(tmp_path: Path, extra: list[str], message: str) -> None:
    image = tmp_path / "star.png"
    render_image(ITEMS[0], 64).save(image)
    result = CliRunner().invoke(cli, ["explain", str(image), "--model", "deit_tiny_patch16_224", "--random-init",
                                      "--out", str(tmp_path / "heat.png"), *extra])
    assert result.exit_code != 0 and message in str(result.exception or result.output)


def test_cli_explains_a_rankings_property_through_its_aligner(tmp_path: Path, fixture_clip: Path) -> None:
    model = load_model(f"local-dir:{fixture_clip}")
    probe = tmp_path / "probe"
    probe.mkdir()
    for item in SPLITS["train"].items(40):
        render_image(item, 64).save(probe / f"{item.index:03d}.png")
    aligner = align(model, model, probe, tmp_path / "identity", first_block="all", progress=False)
    properties = [builtin_property("colour"), builtin_property("shape")]
    ranking = rank(model, aligner, probe, properties, encode_text=model.encode_text, k=3,
                   aligner_path=tmp_path / "identity")
    ranking.save(tmp_path / "ranking.json")
    image = tmp_path / "item.png"
    render_image(ITEMS[0]).save(image)
    result = CliRunner().invoke(cli, ["explain", str(image), "--model", f"local-dir:{fixture_clip}",
                                      "--ranking", str(tmp_path / "ranking.json"), "--property", "colour",
                                      "--out", str(tmp_path / "heat.png"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["components"] == ranking.top("colour") and report["target"] == "property colour"
    assert report["grid_shape"] == list(model.model.visual.grid_size) and report["total"] > 0  # ‖B v‖: the size of v's part in the subspace
