"""Shared test fixtures: where the project's shared real data lives, and skips without it."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
DEIT_TINY_WEIGHTS = SHARED / "models" / "deit_tiny_patch16_224.in1k.safetensors"
IMAGENET_SAMPLE = SHARED / "data" / "imagenet-sample"


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.fixture
def deit_tiny_weights() -> Path:
    if not DEIT_TINY_WEIGHTS.exists():
        pytest.skip(f"real DeiT-tiny weights not found at {DEIT_TINY_WEIGHTS} (only beside the project checkout)")
    return DEIT_TINY_WEIGHTS


@pytest.fixture
def imagenet_sample() -> Path:
    if not IMAGENET_SAMPLE.is_dir():
        pytest.skip(f"ImageNet sample photos not found at {IMAGENET_SAMPLE} (only beside the project checkout)")
    return IMAGENET_SAMPLE


@pytest.fixture(scope="session")
def fixture_clip() -> Path:
    """The world-trained reference CLIP, a ``local-dir:`` folder (written from the copy the
    package ships, then cached; retrain with ``compsearch world fixture-clip --rebuild``)."""
    from compsearch.indexer.world.fixture_clip import fixture_clip_dir

    return fixture_clip_dir()


@pytest.fixture(scope="module")
def clip(fixture_clip: Path):
    """The fixture CLIP loaded, once per test module (a module may mutate it: hooks, precision)."""
    from compsearch.mapping.models import load_model

    return load_model(f"local-dir:{fixture_clip}")
