"""RepDecompose on timm MaxViT: where z stops, names, pooling through downsampling, token-split
order (the contract every adapter keeps is in test_contract.py)."""
from __future__ import annotations

import dataclasses

import pytest
import timm
import torch
from timm.models.maxxvit import MaxxVit, model_cfgs

from compsearch.mapping.decompose import decompose, linearised_layer_norm
from compsearch.mapping.decompose.families.maxvit import MaxVitAdapter
from compsearch.mapping.errors import CompsearchError, UnsupportedModelError
from tests.mapping.decompose.exactness import assert_exact
from tests.mapping.decompose.tiny_models import (
    MAXVIT_IMAGE_SIZE,
    MAXVIT_VARIANTS,
    maxvit_pre_logits_input,
    tiny_maxvit,
)


@pytest.fixture(scope="module", params=list(MAXVIT_VARIANTS))
def model(request: pytest.FixtureRequest) -> MaxxVit:
    torch.manual_seed(0)
    return tiny_maxvit(**MAXVIT_VARIANTS[request.param])


@pytest.fixture(scope="module")
def tf_model() -> MaxxVit:
    torch.manual_seed(0)
    return tiny_maxvit()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(3, 3, MAXVIT_IMAGE_SIZE, MAXVIT_IMAGE_SIZE)


def hooked_outputs(model: MaxxVit, images: torch.Tensor, modules: dict[str, str]) -> dict[str, torch.Tensor]:
    """Outputs of the named submodules in a plain forward pass."""
    kept: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(path).register_forward_hook(
            lambda _m, _a, output, key=key: kept.__setitem__(key, output)
        )
        for key, path in modules.items()
    ]
    with torch.inference_mode():
        model(images)
    for handle in handles:
        handle.remove()
    return kept


# Ranges starting at a stage's downsampling block (init is pooled and projected through its
# shortcut), and the last block alone.
@pytest.mark.parametrize("first_block", ["stages.3.blocks.0", -1])
@pytest.mark.parametrize("split_tokens", [False, True])
def test_short_ranges_are_exact(
    model: MaxxVit, images: torch.Tensor, first_block: str | int, split_tokens: bool
) -> None:
    decomposition = decompose(model, images, first_block=first_block, split_tokens=split_tokens)
    with torch.inference_mode():
        assert_exact(decomposition, maxvit_pre_logits_input(model, images))


def test_z_is_the_input_of_the_tanh_pre_logits_layer(tf_model: MaxxVit, images: torch.Tensor) -> None:
    """z stops before the tf head's Linear + tanh: a tanh of a sum is no sum of per-component
    terms. timm's ``forward_head(pre_logits=True)`` is that layer's output, tanh(fc(z))."""
    z = MaxVitAdapter(tf_model, "tiny").output(images)
    with torch.inference_mode():
        torch.testing.assert_close(z, maxvit_pre_logits_input(tf_model, images), rtol=0, atol=0)
        timm_pre_logits = tf_model.forward_head(tf_model.forward_features(images), pre_logits=True)
        torch.testing.assert_close(timm_pre_logits, torch.tanh(tf_model.head.pre_logits.fc(z)))


def test_names_follow_the_forward_order(tf_model: MaxxVit, images: torch.Tensor) -> None:
    adapter = MaxVitAdapter(tf_model, "tiny")
    assert adapter.default_first_block() == "stages.2.blocks.3"  # depths 2, 2, 5, 2 as MaxViT-S
    decomposition = decompose(tf_model, images)
    expected = ["init"]
    for block in ["stages.2.blocks.3", "stages.2.blocks.4", "stages.3.blocks.0", "stages.3.blocks.1"]:
        heads = tf_model.get_submodule(block).attn_grid.attn.num_heads  # 4 at width 32, 6 at 48
        expected.append(f"{block}.conv")
        for partition in ("attn_block", "attn_grid"):
            expected += [f"{block}.{partition}.attn.h{k}" for k in range(heads)] + [f"{block}.{partition}.mlp"]
    assert decomposition.names == expected + ["bias"]


def test_components_match_hooked_branches(tf_model: MaxxVit, images: torch.Tensor) -> None:
    """Branches pooled by hand: mean over positions, the stage-3 shortcut's 1×1 conv for
    stage-2 branches, then the head norm linearised with the pooled stream."""
    kept = hooked_outputs(tf_model, images, {
        "conv": "stages.2.blocks.4.conv.conv3_1x1",  # the MBConv branch (drop_path is identity)
        "attention": "stages.3.blocks.1.attn_block.ls1",  # the window-attention branch
        "mlp": "stages.3.blocks.1.attn_grid.mlp",
        "pooled": "head.global_pool",
    })
    expand = tf_model.stages[3].blocks[0].conv.shortcut.expand.weight.flatten(1)
    pooled = {
        "stages.2.blocks.4.conv": kept["conv"].mean((2, 3)) @ expand.T,
        "stages.3.blocks.1.attn_grid.mlp": kept["mlp"].mean((1, 2)),
        "stages.3.blocks.1.attn_block.attn": kept["attention"].mean((1, 2)),
    }
    expected, _ = linearised_layer_norm(
        torch.stack(list(pooled.values()), 1), kept["pooled"].flatten(1), tf_model.head.norm
    )
    decomposition = decompose(tf_model, images, first_block="all")
    heads = [i for i, name in enumerate(decomposition.names) if name.startswith("stages.3.blocks.1.attn_block.attn.h")]
    actual = torch.stack([
        decomposition.component("stages.2.blocks.4.conv"),
        decomposition.component("stages.3.blocks.1.attn_grid.mlp"),
        decomposition.contributions[:, heads].sum(1),
    ], 1)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def test_token_split_is_in_row_major_order_of_the_feature_map(images: torch.Tensor) -> None:
    """With q = k = 0 and no position bias, A is uniform in every window, so head h's share of
    key t is (W_O^h v_t + b_O/H) / (H·W): it must line up with the values at position t."""
    torch.manual_seed(0)
    model = tiny_maxvit()
    block = model.stages[2].blocks[4].attn_block  # 4×4 map: four 2×2 windows
    with torch.no_grad():
        dim_attn = block.attn.proj.in_features
        block.attn.qkv.weight[: 2 * dim_attn] = 0  # head_first=False: q of all heads, k, then v
        block.attn.qkv.bias[: 2 * dim_attn] = 0
        block.attn.rel_pos.relative_position_bias_table.zero_()
    kept = hooked_outputs(model, images, {"normed": "stages.2.blocks.4.attn_block.norm1", "pooled": "head.global_pool"})
    decomposition = decompose(model, images, first_block="stages.2.blocks.4", split_tokens=True)
    split = next(s for s in decomposition.token_splits if s.block == "stages.2.blocks.4.attn_block")
    assert split.grid == (4, 4) and split.num_prefix_tokens == 0

    attn, heads = block.attn, block.attn.num_heads
    values = torch.nn.functional.linear(kept["normed"], attn.qkv.weight[2 * dim_attn:], attn.qkv.bias[2 * dim_attn:])
    values = values.flatten(1, 2).unflatten(-1, (heads, attn.dim_head))  # (B, 16 positions row-major, heads, d)
    per_head_out = attn.proj.weight.unflatten(1, (heads, attn.dim_head))
    per_token = (torch.einsum("bthd,chd->bhtc", values, per_head_out) + attn.proj.bias / heads) / 16
    expand = model.stages[3].blocks[0].conv.shortcut.expand.weight.flatten(1)
    expected, _ = linearised_layer_norm(
        (per_token @ expand.T).flatten(1, 2), kept["pooled"].flatten(1), model.head.norm
    )
    torch.testing.assert_close(split.contributions, expected.view_as(split.contributions), rtol=1e-4, atol=1e-6)


def test_per_position_norm_heads_are_refused() -> None:
    """maxvit_*_rw models normalise every position before pooling: not a pooled-vector LN."""
    cfg = dataclasses.replace(model_cfgs["maxvit_nano_rw"], embed_dim=(32,) * 4, depths=(1,) * 4, stem_width=8)
    model = MaxxVit(cfg, img_size=64).eval()
    with pytest.raises(UnsupportedModelError) as raised:
        decompose(model, torch.randn(1, 3, 64, 64))
    assert raised.value.hint and "maxvit_" in raised.value.hint


def test_unknown_first_block_is_a_user_error(tf_model: MaxxVit, images: torch.Tensor) -> None:
    with pytest.raises(CompsearchError, match="stages.9.blocks.0"):
        decompose(tf_model, images, first_block="stages.9.blocks.0")


@pytest.mark.slow
def test_real_size_maxvit_small_is_exact() -> None:
    torch.manual_seed(0)
    model = timm.create_model("maxvit_small_tf_224", pretrained=False).eval()
    images = torch.randn(2, 3, 224, 224)
    adapter = MaxVitAdapter(model, "maxvit_small_tf_224")
    assert adapter.default_first_block() == "stages.2.blocks.3"
    with torch.inference_mode():
        reference = maxvit_pre_logits_input(model, images)
    for first_block, split_tokens in [(None, True), ("all", False)]:
        decomposition = decompose(model, images, first_block=first_block, split_tokens=split_tokens)
        assert_exact(decomposition, reference)
