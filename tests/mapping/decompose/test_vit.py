"""RepDecompose on timm's plain ViTs: naming, default range, token-split layout, refusals, real
DeiT-tiny weights (the contract every adapter keeps is in test_contract.py)."""
from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from timm.models.vision_transformer import ParallelScalingBlock, ResPostBlock, VisionTransformer

from compsearch.mapping.decompose import decompose, linearised_layer_norm
from compsearch.mapping.decompose.families.vit import VitAdapter
from compsearch.mapping.errors import UnsupportedModelError
from compsearch.mapping.models import load_model
from tests.mapping.decompose.exactness import assert_exact
from tests.mapping.decompose.tiny_models import VIT, VIT_VARIANTS, timm_pre_logits, tiny_vit


def test_names_follow_forward_order_with_absolute_indices() -> None:
    decomposition = decompose(tiny_vit(depth=12), torch.randn(1, 3, 32, 32))
    expected = ["init"]
    for block in range(7, 12):
        expected += [f"blocks.{block}.attn.h{head}" for head in range(4)] + [f"blocks.{block}.mlp"]
    assert decomposition.names == expected + ["bias"]
    assert decomposition.contributions.shape == (1, len(expected) + 1, 32)


def test_default_range_is_the_last_five_blocks_or_all_of_a_shallow_model() -> None:
    assert VitAdapter(tiny_vit(depth=12), "deep").default_first_block() == "blocks.7"
    assert VitAdapter(tiny_vit(depth=3), "shallow").default_first_block() == "blocks.0"
    assert decompose(tiny_vit(depth=3), torch.randn(1, 3, 32, 32)).names[1] == "blocks.0.attn.h0"


def test_bias_is_the_final_norm_beta() -> None:
    model = tiny_vit()
    decomposition = decompose(model, torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(decomposition.component("bias"), model.norm.bias.expand(2, -1))


@pytest.mark.parametrize("variant", ["dinov2-reg", "avg-pool"])
def test_components_match_the_hooked_branch_outputs(variant: str) -> None:
    """A block's MLP component and the sum of its heads are its real branch outputs,
    pooled and carried through the final norm (linearised with the real stream)."""
    model = tiny_vit(**VIT_VARIANTS[variant])
    block = model.blocks[4]

    def pool(tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, 0] if model.global_pool == "token" else tokens[:, model.num_prefix_tokens:].mean(1)

    hooked: dict[str, torch.Tensor] = {}
    handles = [
        block.ls1.register_forward_hook(lambda m, a, out: hooked.__setitem__("attn", pool(out))),
        block.ls2.register_forward_hook(lambda m, a, out: hooked.__setitem__("mlp", pool(out))),
        model.blocks.register_forward_hook(lambda m, a, out: hooked.__setitem__("stream", pool(out))),
    ]
    decomposition = decompose(model, torch.randn(2, 3, 32, 32), "blocks.2")
    for handle in handles:
        handle.remove()
    final_norm = model.fc_norm if variant == "avg-pool" else model.norm
    branches = torch.stack([hooked["attn"], hooked["mlp"]], dim=1)
    expected, _ = linearised_layer_norm(branches, hooked["stream"], final_norm)
    heads = [decomposition.index(f"blocks.4.attn.h{head}") for head in range(4)]
    torch.testing.assert_close(decomposition.contributions[:, heads].sum(1), expected[:, 0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(decomposition.component("blocks.4.mlp"), expected[:, 1], rtol=1e-4, atol=1e-5)


def test_token_split_layout() -> None:
    model = tiny_vit(**VIT_VARIANTS["dinov2-reg"])
    decomposition = decompose(model, torch.randn(2, 3, 32, 32), "blocks.3", split_tokens=True)
    splits = decomposition.token_splits
    assert [split.block for split in splits] == ["blocks.3", "blocks.4", "blocks.5"]
    split = splits[0]
    assert split.component_names == [f"blocks.3.attn.h{head}" for head in range(4)]
    assert split.grid == (4, 4) and split.num_prefix_tokens == 5
    assert split.contributions.shape == (2, 4, 5 + 16, 32)
    assert decompose(model, torch.randn(2, 3, 32, 32)).token_splits is None


def test_token_split_grid_follows_the_image_size_of_a_dynamic_model() -> None:
    model = tiny_vit(dynamic_img_size=True)
    images = torch.randn(1, 3, 40, 24)
    decomposition = decompose(model, images, split_tokens=True)
    assert decomposition.token_splits[0].grid == (5, 3)
    assert decomposition.token_splits[0].contributions.shape[2] == 1 + 15
    with torch.no_grad():
        assert_exact(decomposition, timm_pre_logits(model, images))


@pytest.mark.parametrize(
    "overrides",
    [
        dict(block_fn=ResPostBlock),
        dict(block_fn=ParallelScalingBlock),
        dict(global_pool="map"),
        dict(global_pool="max"),
        dict(global_pool="avg", fc_norm=False),  # per-token norm before the mean
    ],
    ids=["res-post", "parallel", "map", "max", "avg-token-norm"],
)
def test_other_architectures_are_refused_clearly(overrides: dict) -> None:
    model = VisionTransformer(**{**VIT, **overrides}).eval()
    with pytest.raises(UnsupportedModelError) as error:
        decompose(model, torch.randn(1, 3, 32, 32))
    assert error.value.hint


def test_a_model_changed_in_place_is_checked_again() -> None:
    """The adapter kept on the model re-checks it: timm's reset_classifier can switch the pooling."""
    model, images = tiny_vit(), torch.randn(1, 3, 32, 32)
    decompose(model, images)
    model.reset_classifier(0, global_pool="max")
    with pytest.raises(UnsupportedModelError, match="global_pool='max'"):
        decompose(model, images)


def test_distilled_deit_is_refused() -> None:
    model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, **VIT).eval()
    with pytest.raises(UnsupportedModelError, match="VisionTransformerDistilled"):
        decompose(model, torch.randn(1, 3, 32, 32))


def test_real_deit_tiny_on_real_photos(deit_tiny_weights: Path, imagenet_sample: Path) -> None:
    loaded = load_model("deit_tiny_patch16_224", weights=deit_tiny_weights)
    model = loaded.model
    files = sorted(imagenet_sample.glob("*.JPEG"))[::100]
    images = torch.stack([loaded.preprocess(Image.open(file).convert("RGB")) for file in files])

    decomposition = decompose(model, images, split_tokens=True)
    with torch.no_grad():
        assert_exact(decomposition, timm_pre_logits(model, images))
    assert_exact(decompose(model, images, "all"))

    # The file names carry the wnid; timm's ImageNet info maps class index -> wnid.
    info = timm.data.ImageNetInfo()
    with torch.inference_mode():  # z is an inference tensor
        predicted = model.head(decomposition.output).argmax(-1).tolist()
    correct = sum(info.index_to_label_name(index) == file.name.split("_")[0] for index, file in zip(predicted, files))
    assert correct >= 0.6 * len(files)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, size",
    [
        ("deit_base_patch16_224", 224),
        ("vit_base_patch16_224.dino", 224),
        ("vit_small_patch14_dinov2.lvd142m", 518),
        ("vit_small_patch14_reg4_dinov2.lvd142m", 518),
    ],
)
def test_reference_models_at_full_size(name: str, size: int) -> None:
    model = timm.create_model(name, pretrained=False).eval()
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        reference = timm_pre_logits(model, images)
    for first_block in (None, "all"):
        for split_tokens in (False, True):
            assert_exact(decompose(model, images, first_block, split_tokens=split_tokens), reference)
