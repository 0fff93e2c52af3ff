"""Component scores on planted data where the right answer is known by construction."""
from __future__ import annotations

import json

import pytest
import torch

from compsearch.mapping.rank import (
    ComponentVariance,
    PropertyRanking,
    Ranking,
    component_variances,
    constant_components,
    contrast_scores,
    default_k,
    label_variance_share,
    model_family,
    property_rankings,
    property_scores,
)
from compsearch.mapping.errors import CompsearchError
from compsearch.mapping.rank.auto_k import HeldOut, KCurve, held_out_mask, k_curve

NAMES = [f"c{i}" for i in range(8)]
COLOUR_BASIS = torch.eye(16)[0:2]
SHAPE_BASIS = torch.eye(16)[2:4]


def _planted(images: int = 400) -> torch.Tensor:
    """8 components in a 16-d space: c3 carries colour (dims 0-1), c5 shape (dims 2-3), c6 both,
    c7 is a constant (a bias), the rest is weak noise everywhere."""
    mapped = 0.3 * torch.randn(images, 8, 16)
    colour, shape = torch.randn(images, 2), torch.randn(images, 2)
    mapped[:, 3, 0:2] += 2 * colour
    mapped[:, 5, 2:4] += 2 * shape
    mapped[:, 6, 0:2] += 2 * torch.randn(images, 2)
    mapped[:, 6, 2:4] += 2 * torch.randn(images, 2)
    mapped[:, 7] = torch.linspace(-1, 1, 16)
    return mapped


def test_the_carrier_of_a_property_scores_highest() -> None:
    mapped = _planted()
    colour, shape = property_scores(mapped, COLOUR_BASIS), property_scores(mapped, SHAPE_BASIS)
    assert colour.shape == (8,)
    assert set(colour.topk(2).indices.tolist()) == {3, 6} and set(shape.topk(2).indices.tolist()) == {5, 6}
    assert colour[[0, 1, 2, 4, 5]].abs().max() < 0.2 < colour[3]
    assert colour[7] == 0 and shape[7] == 0  # a constant component correlates with nothing


def test_contrast_demotes_components_that_carry_every_property() -> None:
    mapped = _planted()
    contrasted = contrast_scores({"colour": property_scores(mapped, COLOUR_BASIS),
                                  "shape": property_scores(mapped, SHAPE_BASIS)})
    assert contrasted["colour"].argmax().item() == 3 and contrasted["shape"].argmax().item() == 5
    assert contrasted["colour"][6] < 0.3 * contrasted["colour"][3]
    lone = {"colour": torch.tensor([0.1, 0.5])}
    assert torch.equal(contrast_scores(lone)["colour"], lone["colour"])


def test_contrast_is_against_the_strongest_other_property() -> None:
    scores = {"a": torch.tensor([0.9, 0.2]), "b": torch.tensor([0.1, 0.6]), "c": torch.tensor([0.5, 0.0])}
    contrasted = contrast_scores(scores)
    assert torch.allclose(contrasted["a"], torch.tensor([0.4, -0.4]))
    assert torch.allclose(contrasted["b"], torch.tensor([-0.8, 0.4]))


def test_label_variance_share_finds_the_component_that_follows_the_label() -> None:
    labels = torch.arange(300) % 3
    contributions = torch.randn(300, 5, 8)
    contributions[:, 2] = 3 * torch.randn(3, 8)[labels] + 0.1 * torch.randn(300, 8)
    contributions[:, 4] = torch.randn(3, 8)[labels]  # a pure function of the label
    share = label_variance_share(contributions, labels)
    assert share[4].item() == pytest.approx(1.0, abs=1e-6)
    assert share[2] > 0.95 and share[[0, 1, 3]].max() < 0.05
    assert label_variance_share(torch.ones(6, 1, 2), torch.tensor([0, 1] * 3)).item() == 0.0


def _labelled(images: int = 600, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """12 components: c0-c2 follow a 6-valued label (strength 3, 2, 1.5), c3-c5 a 4-valued one
    (3, 2, 1.5), the rest is noise; labels independent of each other."""
    generator = generator or torch.Generator().manual_seed(0)
    labels = {"colour": torch.randint(6, (images,), generator=generator),
              "shape": torch.randint(4, (images,), generator=generator)}
    mapped = torch.randn(images, 12, 8, generator=generator)
    for offset, name in ((0, "colour"), (3, "shape")):
        for component, strength in zip(range(offset, offset + 3), (3.0, 2.0, 1.5)):
            centres = torch.randn(int(labels[name].max()) + 1, 8, generator=generator)
            mapped[:, component] += strength * centres[labels[name]]
    return mapped, labels


def _example_rankings(mapped: torch.Tensor, labels: dict[str, torch.Tensor], k: int = 3) -> dict[str, PropertyRanking]:
    names = [f"c{i}" for i in range(mapped.shape[1])]
    shares = {name: label_variance_share(mapped, label) for name, label in labels.items()}
    variances = {name: component_variances(mapped) for name in labels}
    rankings = property_rankings(names, shares, "examples", {name: [] for name in labels},
                                 {name: k for name in labels}, variances)
    return {prop.name: prop for prop in rankings}


def test_a_label_with_many_values_does_not_win_by_chance() -> None:
    mapped, labels = _labelled()
    unrelated = torch.randperm(600, generator=torch.Generator().manual_seed(1)) % 150  # 150 values × 4 images
    share = label_variance_share(mapped, unrelated)
    assert share.abs().max() < 0.05  # η² would be ≈ (C−1)/(N−1) = 0.25 on every component
    colour = label_variance_share(mapped, labels["colour"])
    assert colour[0] > 0.8 and colour[3:].abs().max() < 0.05  # a real signal still scores high
    alone = _example_rankings(mapped, labels)
    assert {name: prop.top for name, prop in alone.items()} == {"colour": ["c0", "c1", "c2"], "shape": ["c3", "c4", "c5"]}
    together = _example_rankings(mapped, {**labels, "unrelated": unrelated})
    for name, prop in alone.items():
        assert together[name].top == prop.top
        # With η² the unrelated label's ≈ 0.25 everywhere would lower every contrast by as much.
        assert together[name].scores[:3] == pytest.approx(prop.scores[:3], abs=0.06)


def test_label_variance_share_is_zero_without_room_for_chance() -> None:
    """Every image its own value: nothing estimates the within-value variance, so no claim."""
    assert torch.equal(label_variance_share(torch.randn(5, 2, 3), torch.arange(5)), torch.zeros(2))


def test_rankings_choose_k_and_round_trip(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    mapped = _planted()
    scores = {"colour": property_scores(mapped, COLOUR_BASIS), "shape": property_scores(mapped, SHAPE_BASIS)}
    values = {"colour": ["red", "blue"], "shape": ["round", "square"]}
    variances = {"colour": component_variances(mapped), "shape": component_variances(mapped)}
    colour, shape = property_rankings(NAMES, scores, "text", values, {"colour": 2, "shape": 50}, variances)
    assert "k=50 for 'shape' exceeds the 7 components that vary" in caplog.text
    assert colour.top == ["c3", colour.components[1]] and colour.k == 2 and shape.k == len(NAMES) - 1
    assert colour.constant == ["c7"] and "c7" not in colour.components + shape.components
    assert colour.scores == sorted(colour.scores, reverse=True)
    assert colour.own_scores[0] == pytest.approx(scores["colour"][3].item())
    colour.k_curve = KCurve([1, 2], [0.5, 0.6], [0.0, 0.1], 100)
    ranking = Ranking("deit_tiny_patch16_224", "abc", "a.safetensors", "clip", "blocks.7", 400, [colour, shape])
    loaded = Ranking.load(ranking.save(tmp_path / "ranking.json"))
    assert loaded == ranking and loaded.top("shape")[0] == "c5" and loaded.get("colour").k_curve.best_k() == 1
    with pytest.raises(CompsearchError, match="no property 'fabric'"):
        loaded.top("fabric")


def test_reference_top_k_by_family() -> None:
    assert model_family("vit_small_patch14_dinov2.lvd142m") == "dinov2"
    assert model_family("vit_base_patch16_224.dino") == "dino"
    assert default_k("vit_base_patch14_dinov2.lvd142m", "colour") == 1
    assert default_k("vit_base_patch16_224.dino", "pattern") == 5
    assert default_k("swin_base_patch4_window7_224", "pattern") == 12
    assert default_k("maxvit_small_tf_224.in1k", "colour") == 12
    assert default_k("deit_base_patch16_224", "shape") == 3
    assert default_k("ViT-B-16:laion2b_s34b_b88k", "animal") == 3  # unknown family: global default


def test_a_file_that_is_not_a_ranking_is_refused(tmp_path) -> None:
    (tmp_path / "x.json").write_text('{"model_name": "m"}')
    with pytest.raises(CompsearchError, match="not a compsearch ranking"):
        Ranking.load(tmp_path / "x.json")


def test_constant_components_are_found_batch_by_batch() -> None:
    mapped = _planted()
    mapped[:, 1] = 1e3 * torch.randn(16)  # a large constant: no cancellation may hide it
    mapped[:, 2] *= 1e-3  # quiet but image-dependent: std 1e-3 of the others' is kept
    streamed = ComponentVariance()
    for batch in mapped.split(37):
        streamed.update(batch)
    assert streamed.count == len(mapped)
    assert torch.allclose(streamed.variances, component_variances(mapped), rtol=1e-9, atol=0)
    assert streamed.variances[7] == 0 and streamed.variances[1] == 0
    assert torch.allclose(streamed.variances[3], mapped[:, 3].double().var(0, unbiased=False).sum(), rtol=1e-9)
    assert constant_components(streamed.variances).nonzero().flatten().tolist() == [1, 7]


def test_a_constant_component_is_never_ranked_even_when_every_real_contrast_is_negative() -> None:
    """Every real component carries more of another property than of ``colour``, so each
    one's contrast for colour is negative; the constant ``bias`` (score 0 by definition)
    would come first if it were ranked."""
    images = 300
    mapped = 0.1 * torch.randn(images, 4, 16)
    for component in range(3):  # all three carry shape strongly and colour weakly
        mapped[:, component, 2:4] += 2 * torch.randn(images, 2)
        mapped[:, component, 0:2] += 0.3 * torch.randn(images, 2)
    mapped[:, 3] = torch.linspace(-1, 1, 16)  # bias: the same vector for every image
    names = ["blocks.0.attn.h0", "blocks.0.attn.h1", "blocks.0.mlp", "bias"]
    scores = {"colour": property_scores(mapped, COLOUR_BASIS), "shape": property_scores(mapped, SHAPE_BASIS)}
    assert (contrast_scores(scores)["colour"][:3] < 0).all()  # the planted case holds
    variances = component_variances(mapped)
    colour, shape = property_rankings(names, scores, "text", {"colour": ["red"], "shape": ["round"]},
                                      {"colour": 3, "shape": 3}, {"colour": variances, "shape": variances})
    for prop in (colour, shape):
        assert "bias" not in prop.components and prop.constant == ["bias"]
        assert sorted(prop.components) == sorted(names[:3]) and len(prop.scores) == 3
    assert all(score < 0 for score in colour.scores)


def test_nothing_to_rank_when_no_component_varies() -> None:
    mapped = torch.ones(5, 3, 16)
    scores = {"colour": property_scores(mapped, COLOUR_BASIS)}
    with pytest.raises(CompsearchError, match="at least two different images"):
        property_rankings(["a", "b", "c"], scores, "text", {"colour": ["red"]}, {"colour": 3},
                          {"colour": component_variances(mapped)})


def test_rankings_written_before_the_constant_field_still_load(tmp_path) -> None:
    entry = {"name": "colour", "source": "text", "values": ["red"], "components": ["a", "b"],
             "scores": [0.2, 0.1], "own_scores": [0.3, 0.2], "k": 1}
    (tmp_path / "old.json").write_text(json.dumps({
        "format_version": 1, "model_name": "m", "model_weights_id": "w", "aligner": None, "clip_name": None,
        "first_block": "blocks.7", "probe_images": 10, "properties": [entry]}))
    loaded = Ranking.load(tmp_path / "old.json")
    assert loaded.get("colour").constant == [] and loaded.top("colour") == ["a"]
    assert loaded.get("colour").k_curve is None and loaded.example_images == 0


def _carriers(labels: dict[str, torch.Tensor], carriers: dict[str, range], generator: torch.Generator) -> torch.Tensor:
    """12 components in 8 dimensions: each property's value adds its centre to every one of its
    ``carriers``, over noise of the same size in every component."""
    mapped = 1.5 * torch.randn(len(next(iter(labels.values()))), 12, 8, generator=generator)
    for name, components in carriers.items():
        centres = torch.randn(int(labels[name].max()) + 1, 8, generator=generator)
        mapped[:, list(components)] += centres[labels[name]][:, None]
    return mapped


def test_auto_k_finds_how_many_components_carry_the_property() -> None:
    """Colour is spread over c0-c2 (each alone weak), shape over c3-c5: colour's vector gets
    better with each of its carriers, then takes in shape (leakage) or noise."""
    generator = torch.Generator().manual_seed(0)
    carriers = {"colour": range(0, 3), "shape": range(3, 6)}
    held_out = {}
    for name in carriers:  # each property's own held-out images, the other property drawn at random
        labels = {"colour": torch.randint(6, (120,), generator=generator),
                  "shape": torch.randint(4, (120,), generator=generator)}
        held_out[name] = HeldOut(_carriers(labels, carriers, generator), labels[name])
    colour = k_curve("colour", [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], held_out)
    assert colour.ks == list(range(1, 13)) and colour.held_out_images == 120
    assert colour.best_k() == 3
    assert colour.own[2] > colour.own[0] + 0.1 and colour.leakage[5] > colour.leakage[2] + 0.1
    shape = k_curve("shape", [3, 4, 5, 0, 1, 2, 6, 7, 8, 9, 10, 11], held_out, max_k=8)
    assert shape.ks == list(range(1, 9)) and shape.best_k() == 3
    lone = k_curve("colour", [0, 1, 2, 6, 7, 8], {"colour": held_out["colour"]})
    assert lone.leakage == [0.0] * 6 and lone.best_k() == 3


def test_held_out_images_cover_every_value() -> None:
    labels = torch.tensor([0] * 8 + [1] * 5 + [2] * 3)
    held = held_out_mask(labels)
    assert held.tolist() == [False, False, False, True] * 2 + [False, False, False, True, False] + [False] * 3
