"""The world-trained reference CLIP: its loss, its cache, and its quality through the project loader."""
from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch
from click.testing import CliRunner
from open_clip.transformer import VisionTransformer

from indexer.world import FACTORS, SPLITS
from indexer.world.fixture_clip import (
    CACHE_ENV, MODEL_NAME, REPORT_NAME, TrainingConfig, _batch_sampler, _learning_rate, build_untrained, fixture_clip_dir,
    fixture_key, multi_positive_loss, positive_pairs,
)
from indexer.world.zero_shot import encode_items, zero_shot_accuracy
from mapping.models import RANDOM_INIT, load_model
from search.cli import cli

TINY = TrainingConfig(steps=2, batch_size=8, group_size=2, warmup_steps=1, train_images=16, captions_per_image=2, eval_images=4)


def test_a_caption_is_positive_for_every_image_it_is_true_of() -> None:
    images = torch.tensor([[0, 1, 2, 3], [0, 2, 2, 3], [1, 1, 2, 3]])
    captions = images.clone()
    named = torch.tensor([[True, False, False, False],  # "a <shape 0>"
                          [True, True, True, True],  # full caption of image 1
                          [False, False, True, True]])  # pattern 2 and scene 3
    assert positive_pairs(images, captions, named).tolist() == [
        [True, False, True], [True, True, True], [False, False, True],
    ]


def test_loss_prefers_logits_that_rank_true_captions_first() -> None:
    labels = torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 0, 1]])
    named = torch.tensor([[True, False, False, False], [True, True, True, True], [False, True, False, True]])
    truth = positive_pairs(labels, labels, named).float()
    assert multi_positive_loss(10 * truth, labels, labels, named) < multi_positive_loss(10 * (1 - truth), labels, labels, named)


def test_batches_are_groups_sharing_colour_and_scene() -> None:
    labels = torch.randint(0, 5, (400, len(FACTORS)), generator=torch.Generator().manual_seed(0))
    config = TrainingConfig(batch_size=32, group_size=4)
    batch = _batch_sampler(labels, config, torch.Generator().manual_seed(0))()
    assert batch.shape == (32,)
    colour_and_scene = labels[batch][:, [1, 3]].view(8, 4, 2)
    assert (colour_and_scene == colour_and_scene[:, :1]).all()
    assert len({tuple(group[0].tolist()) for group in colour_and_scene}) > 1


def test_learning_rate_warms_up_then_decays_to_zero() -> None:
    config = TrainingConfig(steps=100, warmup_steps=10, learning_rate=1.0)
    rates = [_learning_rate(step, config) for step in range(config.steps + 1)]
    assert rates[0] < rates[5] < rates[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:])) and rates[-1] == pytest.approx(0.0)


def test_cache_key_follows_the_training_config() -> None:
    assert fixture_key(TrainingConfig()) == fixture_key(TrainingConfig())
    assert fixture_key(TrainingConfig()) != fixture_key(TrainingConfig(seed=1))


def test_architecture_is_registered_with_open_clip_and_has_a_vit_image_tower() -> None:
    model, _, _ = build_untrained()
    assert MODEL_NAME in open_clip.list_models()
    assert isinstance(model.visual, VisionTransformer)


def test_training_writes_a_local_dir_folder_once_and_reuses_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    folder = fixture_clip_dir(TINY)
    assert folder.parent == tmp_path / "fixtures"
    report = folder / REPORT_NAME
    stamp = report.stat().st_mtime_ns
    assert fixture_clip_dir(TINY) == folder and report.stat().st_mtime_ns == stamp
    loaded = load_model(f"local-dir:{folder}")
    assert loaded.is_clip and loaded.weights_id != RANDOM_INIT
    trained = build_untrained()[0]
    trained.load_state_dict(loaded.model.state_dict())  # same architecture, strictly


def test_fixture_reloads_through_the_loader_and_beats_chance_on_every_factor(fixture_clip: Path) -> None:
    loaded = load_model(f"local-dir:{fixture_clip}")
    assert isinstance(loaded.model.visual, VisionTransformer)
    accuracy = zero_shot_accuracy(loaded, SPLITS["test"].items(150))
    for factor, values in FACTORS.items():
        chance = 1 / len(values)
        assert accuracy[factor] > chance + 0.5 * (1 - chance), (factor, accuracy)


def test_cli_prints_the_cached_fixture_folder(fixture_clip: Path) -> None:
    result = CliRunner().invoke(cli, ["world", "fixture-clip"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(f"local-dir:{fixture_clip}")


def test_real_deit_tiny_embeds_world_images(deit_tiny_weights: Path) -> None:
    loaded = load_model("deit_tiny_patch16_224", weights=deit_tiny_weights)
    embeddings = encode_items(loaded, SPLITS["test"].items(4), size=224)
    assert embeddings.shape == (4, 192) and torch.isfinite(embeddings).all()
    assert not torch.allclose(embeddings[0], embeddings[1])
