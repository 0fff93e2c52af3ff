"""Slow end to end: a real DeiT-tiny aligned to a target with a known exact solution, and
properties ranked on the world-trained fixture CLIP keep their own factor."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compsearch.indexer.world.captions import PATTERN_WORDS
from compsearch.indexer.world.factors import COLOURS, SHAPES
from compsearch.indexer.world.render import render_image
from compsearch.indexer.world.splits import get_split
from compsearch.indexer.world.zero_shot import class_embeddings
from compsearch.mapping.align import TrainSettings, align
from compsearch.mapping.align.cache import FeatureCache
from compsearch.mapping.align.features import aligned_batches
from compsearch.mapping.models import LoadedModel, load_model
from compsearch.mapping.properties import Property
from compsearch.mapping.rank import rank

pytestmark = pytest.mark.slow

# The world's own words, so the fixture CLIP (trained on world captions) knows them.
WORLD_PROPERTIES = [
    Property("colour", tuple(COLOURS), ("a {} shape", "a {} object", "a {} thing")),
    Property("shape", SHAPES, ("a {}", "a {} on a blank background")),
    Property("pattern", tuple(words[0] for words in PATTERN_WORDS.values()), ("a {} shape", "a {} object")),
]


def _render(folder: Path, split: str, count: int) -> list:
    folder.mkdir()
    items = get_split(split).items(count)
    for item in items:
        render_image(item, size=96).save(folder / f"{item.index:04d}.png")
    return items


class _ProjectedModel(torch.nn.Module):
    """A stand-in CLIP whose image embedding is a fixed partial isometry P of DeiT's own z,
    so an exact aligner exists (every W_i = P, zero regulariser) and must be found."""

    def __init__(self, model: torch.nn.Module, projection: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("projection", projection)

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        z = self.model.forward_head(self.model.forward_features(images), pre_logits=True) @ self.projection
        return torch.nn.functional.normalize(z, dim=-1) if normalize else z


class _ProjectedCLIP(LoadedModel):
    """The stand-in loaded as a CLIP: its z is its own image embedding (no adapter decomposes it,
    and none needs to: it is only the alignment's target)."""

    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(batch.to(self.device), normalize=False)


def test_real_deit_tiny_finds_a_planted_exact_alignment(tmp_path: Path, deit_tiny_weights: Path,
                                                        imagenet_sample: Path) -> None:
    model = load_model("deit_tiny_patch16_224", weights=deit_tiny_weights)
    projection = torch.linalg.qr(torch.randn(192, 64))[0]
    target = _ProjectedCLIP("projected-deit", _ProjectedModel(model.model, projection).eval(), model.preprocess,
                            None, "planted", is_clip=True)
    images = tmp_path / "images"
    images.mkdir()
    for photo in sorted(imagenet_sample.iterdir())[:240]:
        (images / photo.name).symlink_to(photo)
    settings = TrainSettings(learning_rate=1e-3, max_epochs=60, heldout_fraction=0.2)
    aligner = align(model, target, images, tmp_path / "deit", settings=settings, progress=False)
    # Baseline: predicting the mean training target for every held-out image.
    cache = FeatureCache(tmp_path / "deit.cache", settings.heldout_fraction)
    mean_target = torch.cat([t for _, t in cache.batches(256, heldout=False)]).mean(0)
    heldout_targets = torch.cat([t for _, t in cache.batches(256, heldout=True)])
    baseline = torch.nn.functional.cosine_similarity(heldout_targets, mean_target[None], dim=-1).mean().item()
    print(f"DeiT-tiny → planted projection: held-out cosine {aligner.meta.heldout_cosine:.4f} (mean-target "
          f"baseline {baseline:.4f}) on {aligner.meta.heldout_images} images, final training loss "
          f"{aligner.meta.final_loss:.4f}, {aligner.meta.settings['batches']} batches")
    assert aligner.meta.final_loss < 0.1  # the training rows are fitted: cache rows and targets agree
    assert aligner.meta.heldout_cosine > baseline + 0.1  # and it generalises beyond the mean direction


def _zero_shot(vectors: torch.Tensor, clip, factor: str, labels: list[str], values: tuple[str, ...]) -> float:
    predicted = (torch.nn.functional.normalize(vectors, dim=-1) @ class_embeddings(clip, factor).T).argmax(1)
    return (predicted == torch.tensor([values.index(label) for label in labels])).float().mean().item()


def test_top_components_keep_their_property_on_the_fixture_clip(tmp_path: Path, fixture_clip: Path) -> None:
    clip = load_model(f"local-dir:{fixture_clip}")
    _render(tmp_path / "probe", "train", 300)
    aligner = align(clip, clip, tmp_path / "probe", tmp_path / "identity", first_block="all", progress=False)
    ranking = rank(clip, aligner, tmp_path / "probe", WORLD_PROPERTIES, encode_text=clip.encode_text, k=4)
    test_items = _render(tmp_path / "test", "test", 300)
    paths = sorted((tmp_path / "test").glob("*.png"))
    mapped = torch.cat([batch for _, batch in aligned_batches(clip, aligner, paths)])
    colours = [item.colour for item in test_items]
    accuracy = {}
    for prop in ranking.properties:
        columns = [aligner.component_names.index(name) for name in prop.top]
        accuracy[prop.name] = _zero_shot(mapped[:, columns].sum(1), clip, "colour", colours, tuple(COLOURS))
    full = _zero_shot(mapped.sum(1), clip, "colour", colours, tuple(COLOURS))
    print(f"colour zero-shot accuracy from v_p: {accuracy}, full embedding {full:.3f}; top colour "
          f"components {ranking.top('colour')}, shape {ranking.top('shape')}")
    assert accuracy["colour"] > 0.8 * full
    assert accuracy["colour"] > accuracy["shape"] + 0.2
