"""load_model: name forms, weights resolution, strict loading, clear errors, real DeiT-tiny."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import open_clip
import PIL.Image
import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.data import ImageNetInfo

from compsearch.mapping.errors import ModelLoadError
from compsearch.mapping.images import preprocess_batch
from compsearch.mapping.models import RANDOM_INIT, WEIGHTS_DIR_ENV, load_model

DEIT_TINY = "deit_tiny_patch16_224"
# A CLIP small enough to build in a unit test (the text tower keeps open_clip's vocabulary).
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}


@pytest.fixture(autouse=True)
def _no_weights_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)


@pytest.fixture
def offline_empty_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A machine without network and with empty hub caches, whatever this one has."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr("compsearch.mapping.models._hub_reachable", lambda: False)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


def _save_random_deit(path: Path) -> dict[str, torch.Tensor]:
    state = timm.create_model(DEIT_TINY).state_dict()
    save_file(state, str(path))
    return state


def test_real_deit_tiny_classifies_photos(deit_tiny_weights: Path, imagenet_sample: Path) -> None:
    loaded = load_model(DEIT_TINY, weights=deit_tiny_weights)
    assert loaded.weights_id == hashlib.sha256(deit_tiny_weights.read_bytes()).hexdigest()[:16]
    photos = sorted(imagenet_sample.glob("*.JPEG"))[::50]  # 16 photos of 16 classes
    batch = preprocess_batch(photos, loaded)
    with torch.no_grad():
        logits = loaded.model(batch)
    wnids = ImageNetInfo().label_names()
    predicted = [wnids[i] for i in logits.argmax(-1).tolist()]
    accuracy = sum(p == photo.name.split("_")[0] for p, photo in zip(predicted, photos)) / len(photos)
    assert accuracy >= 0.6  # ≈0.80 on the whole sample
    # encode_images is the pre-logits z that the classifier head reads.
    z = loaded.encode_images(batch)
    assert z.shape == (len(photos), 192)
    torch.testing.assert_close(loaded.model.head(z), logits, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_real_deit_tiny_accuracy_on_whole_sample(deit_tiny_weights: Path, imagenet_sample: Path) -> None:
    loaded = load_model(DEIT_TINY, weights=deit_tiny_weights)
    wnids = ImageNetInfo().label_names()
    photos = sorted(imagenet_sample.glob("*.JPEG"))
    correct = 0
    for start in range(0, len(photos), 64):
        chunk = photos[start:start + 64]
        with torch.no_grad():
            predicted = loaded.model(preprocess_batch(chunk, loaded)).argmax(-1).tolist()
        correct += sum(wnids[p] == photo.name.split("_")[0] for p, photo in zip(predicted, chunk))
    assert correct / len(photos) >= 0.75  # the shared weights' documented ≈0.80


def test_weights_load_without_init_bit_identical_to_init_then_load(deit_tiny_weights: Path) -> None:
    """The model built on the meta device with the weights assigned computes exactly what the
    model initialised at random and then loaded computes (nothing left uninitialised)."""
    loaded = load_model(DEIT_TINY, weights=deit_tiny_weights)
    reference = timm.create_model(DEIT_TINY, pretrained=True,
                                  pretrained_cfg_overlay={"file": str(deit_tiny_weights)}).eval()
    assert not any(t.is_meta for t in (*loaded.model.parameters(), *loaded.model.buffers()))
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded.model(images), reference(images))
        assert torch.equal(loaded.encode_images(images), reference.forward_head(reference.forward_features(images),
                                                                                 pre_logits=True))


@pytest.mark.parametrize("kind", ["non-persistent buffer", "tensor attribute"])
def test_state_computed_at_construction_is_seen_as_unloaded(kind: str) -> None:
    """What the weights do not hold (a rotary table, a causal mask) stays on the meta device
    after assigning them, and is detected, so such a model is built and initialised as before."""
    from compsearch.mapping.models import _holds_meta

    class WithTable(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(2))
            if kind == "tensor attribute":
                self.table = torch.arange(3.0)
            else:
                self.register_buffer("table", torch.arange(3.0), persistent=False)

    with torch.device("meta"):
        built = WithTable()
    built.load_state_dict({"weight": torch.zeros(2)}, assign=True)
    assert _holds_meta(built)
    assert not _holds_meta(WithTable())


def test_random_init_model_is_named_and_in_eval_mode() -> None:
    loaded = load_model(DEIT_TINY, pretrained=False)
    assert loaded.weights_id == RANDOM_INIT and not loaded.is_clip and loaded.tokenizer is None
    assert loaded.model.compsearch_name == DEIT_TINY and not loaded.model.training
    with pytest.raises(ModelLoadError, match="no text encoder"):
        loaded.encode_text(["a photo"])


def test_weights_dir_env_var_is_searched(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    state = _save_random_deit(tmp_path / f"{DEIT_TINY}.in1k.safetensors")
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path))
    loaded = load_model(DEIT_TINY)
    torch.testing.assert_close(loaded.model.state_dict()["cls_token"], state["cls_token"])
    assert loaded.weights_id != RANDOM_INIT


def test_explicit_folder_wins_and_must_be_unambiguous(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env_folder = tmp_path / "env"  # would fail differently ("could not load") if it were used
    env_folder.mkdir()
    (env_folder / f"{DEIT_TINY}.safetensors").touch()
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(env_folder))
    (tmp_path / f"{DEIT_TINY}.a.safetensors").touch()
    (tmp_path / f"{DEIT_TINY}.b.pth").touch()
    with pytest.raises(ModelLoadError, match="several weights files"):
        load_model(DEIT_TINY, weights=tmp_path)
    with pytest.raises(ModelLoadError, match=f"expected a file named {DEIT_TINY}.fb_in1k"):
        load_model(f"{DEIT_TINY}.fb_in1k", weights=tmp_path)


def test_weights_load_strictly(tmp_path: Path) -> None:
    state = timm.create_model(DEIT_TINY).state_dict()
    del state["blocks.3.mlp.fc1.bias"]
    save_file(state, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ModelLoadError, match="blocks.3.mlp.fc1.bias"):
        load_model(DEIT_TINY, weights=tmp_path / "partial.safetensors")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="could not load"):
        load_model(DEIT_TINY, weights=tmp_path / "garbage.pth")


def test_missing_weights_fail_fast_offline(offline_empty_cache: None) -> None:
    started = time.perf_counter()
    with pytest.raises(ModelLoadError, match=f"--weights PATH.*{WEIGHTS_DIR_ENV}"):
        load_model(DEIT_TINY)
    with pytest.raises(ModelLoadError, match="not in the hub cache"):
        load_model("ViT-B-16:laion2b_s34b_b88k")
    assert time.perf_counter() - started < 10


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("deit_tinny_patch16_224", "did you mean deit_tiny_patch16_224"),
        ("ViT-B-61:laion2b_s34b_b88k", "unknown model"),
        (f"{DEIT_TINY}.in1k", "known tags: fb_in1k"),
        ("ViT-B-16:laion9b", "known tags: .*laion2b_s34b_b88k"),
        ("local-dir:/nowhere", "no open_clip_config.json"),
    ],
)
def test_bad_names_say_what_exists(name: str, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        load_model(name)


def _save_tiny_clip_folder(folder: Path) -> dict[str, torch.Tensor]:
    folder.mkdir()
    state = open_clip.model.CLIP(**TINY_CLIP_CONFIG).state_dict()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP_CONFIG, "preprocess_cfg": {}}))
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return state


def test_local_dir_clip_loads_with_its_weights_and_tokenizer(tmp_path: Path) -> None:
    state = _save_tiny_clip_folder(tmp_path / "clip")
    loaded = load_model(f"local-dir:{tmp_path / 'clip'}")
    assert loaded.is_clip and loaded.weights_id != RANDOM_INIT
    torch.testing.assert_close(loaded.model.state_dict()["visual.proj"], state["visual.proj"])
    image = loaded.preprocess(PIL.Image.new("RGB", (50, 40), "red"))
    assert image.shape == (3, 32, 32)
    images = loaded.encode_images(image[None])
    texts = loaded.encode_text(["a red square", "a blue circle"])
    assert images.shape == (1, 32) and texts.shape == (2, 32)
    torch.testing.assert_close(texts.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(images.norm(dim=-1), torch.ones(1))
    with pytest.raises(ModelLoadError, match="takes its weights from its folder"):
        load_model(f"local-dir:{tmp_path / 'clip'}", weights=tmp_path)


def test_open_clip_name_with_local_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "compsearch-tiny-clip.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(tmp_path / "compsearch-tiny-clip.json")
    state = open_clip.model.CLIP(**TINY_CLIP_CONFIG).state_dict()
    save_file(state, str(tmp_path / "compsearch-tiny-clip.safetensors"))
    loaded = load_model("compsearch-tiny-clip", weights=tmp_path)
    torch.testing.assert_close(loaded.model.state_dict()["text_projection"], state["text_projection"])
    random_init = load_model("compsearch-tiny-clip", pretrained=False)
    assert random_init.weights_id == RANDOM_INIT and random_init.weights_id != loaded.weights_id
