"""RepDecompose on open_clip CLIP models: exactness of the head and head×token splits."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP
from torch import nn

from mapping.decompose import Decomposition, adapter_for, decompose
from mapping.errors import CompsearchError, UnsupportedModelError

TOLERANCE = 1e-5
IMAGE_SIZE = 32
TINY_TEXT = CLIPTextCfg(context_length=8, vocab_size=64, width=16, heads=2, layers=1)
BLOCKS = "visual.transformer.resblocks"


def tiny_clip(model_class: type[nn.Module] = CLIP, **vision: Any) -> nn.Module:
    config = dict(layers=3, width=32, head_width=8, patch_size=8, image_size=IMAGE_SIZE, ls_init_value=0.5)
    return perturbed(model_class(embed_dim=24, vision_cfg=CLIPVisionCfg(**{**config, **vision}), text_cfg=TINY_TEXT))


def perturbed(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with its image tower's norms, biases and scales far from their inits.

    Default inits (γ = 1, β = 0, zero biases, LayerScale constant) would hide a wrongly
    placed or missing term, so every one of them is perturbed.
    """
    with torch.no_grad():
        for name, parameter in model.visual.named_parameters():
            if any(key in name for key in ("ln", "bias", "gamma", "scale")):
                parameter.add_(0.5 * torch.randn_like(parameter))
    return model.eval()


def images(batch: int = 3, size: int = IMAGE_SIZE) -> torch.Tensor:
    return torch.randn(batch, 3, size, size)


def assert_exact(split: Decomposition) -> None:
    assert split.relative_error().max().item() <= TOLERANCE


def tokens_summed(split: Decomposition) -> Decomposition:
    """The decomposition with every head replaced by the sum of its tokens."""
    contributions = split.contributions.clone()
    for token_split in split.token_splits:
        columns = [split.index(name) for name in token_split.component_names]
        contributions[:, columns] = token_split.contributions.sum(2)
    return Decomposition(split.model_name, split.names, contributions, split.output)


@pytest.mark.parametrize("first_block", [None, "all"])
def test_head_split_sums_to_the_normalised_image_embedding(first_block: str | None) -> None:
    model, batch = tiny_clip(layers=6), images()
    split = decompose(model, batch, first_block)
    assert_exact(split)
    torch.testing.assert_close(split.output, model.encode_image(batch, normalize=True))
    assert split.output.norm(dim=-1).allclose(torch.ones(len(batch)))


@pytest.mark.parametrize("first_block", [None, "all"])
def test_token_split_sums_to_the_heads_and_to_z(first_block: str | None) -> None:
    model = tiny_clip(layers=6)
    split = decompose(model, images(), first_block, split_tokens=True)
    decomposed = 5 if first_block is None else 6
    assert [s.block for s in split.token_splits] == [f"{BLOCKS}.{i}" for i in range(6 - decomposed, 6)]
    for token_split in split.token_splits:
        assert token_split.contributions.shape == (3, 4, 1 + 4 * 4, 24)
        assert token_split.grid == (4, 4) and token_split.num_prefix_tokens == 1
    assert_exact(tokens_summed(split))


def test_token_split_only_on_request() -> None:
    assert decompose(tiny_clip(), images()).token_splits is None


def test_components_are_named_by_module_path_in_forward_order() -> None:
    model = tiny_clip(layers=7)
    split = decompose(model, images())
    blocks = [f"{BLOCKS}.{i}" for i in range(2, 7)]  # default: the last five blocks
    expected = ["init"]
    for block in blocks:
        expected += [f"{block}.attn.h{h}" for h in range(4)] + [f"{block}.mlp"]
    assert split.names == expected + ["bias"]
    adapter = adapter_for(model, "tiny")
    assert adapter.block_names() == [f"{BLOCKS}.{i}" for i in range(7)]
    assert adapter.resolve_first_block(-2) == f"{BLOCKS}.5"


def test_a_short_tower_is_decomposed_whole_by_default() -> None:
    split = decompose(tiny_clip(layers=2), images())
    assert split.names[1] == f"{BLOCKS}.0.attn.h0"


def test_components_match_the_branches_the_blocks_add() -> None:
    """A block's MLP component and the sum of its heads are its hooked branch outputs,
    carried through linearised ln_post, ``proj`` and the division by ‖·‖."""
    model, batch = tiny_clip(), images()
    visual = model.visual
    block = visual.transformer.resblocks[1]
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        block.ls_1.register_forward_hook(lambda m, a, out: seen.__setitem__("attn", out[:, 0])),
        block.ls_2.register_forward_hook(lambda m, a, out: seen.__setitem__("mlp", out[:, 0])),
        visual.ln_post.register_forward_pre_hook(lambda m, a: seen.__setitem__("stream", a[0][:, 0])),
    ]
    with torch.no_grad():
        features = visual(batch)
    for hook in hooks:
        hook.remove()

    def in_embedding(branch: torch.Tensor) -> torch.Tensor:
        sigma = (seen["stream"].var(-1, unbiased=False, keepdim=True) + visual.ln_post.eps).sqrt()
        normalised = (branch - branch.mean(-1, keepdim=True)) / sigma * visual.ln_post.weight
        return normalised @ visual.proj / features.norm(dim=-1, keepdim=True)

    split = decompose(model, batch, "all")
    heads = [split.index(f"{BLOCKS}.1.attn.h{h}") for h in range(4)]
    torch.testing.assert_close(split.contributions[:, heads].sum(1), in_embedding(seen["attn"]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(split.component(f"{BLOCKS}.1.mlp"), in_embedding(seen["mlp"]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        split.component("bias"), (visual.ln_post.bias @ visual.proj / features.norm(dim=-1, keepdim=True))
    )


@pytest.mark.parametrize(
    "variant",
    [
        dict(qk_norm=True),
        dict(scale_heads=True),
        dict(final_ln_after_pool=True, no_ln_pre=True, ls_init_value=None),
    ],
    ids=["qk_norm", "head_scales", "ln_after_pool"],
)
def test_tower_variants_are_exact(variant: dict[str, Any]) -> None:
    model = tiny_clip(**variant)
    split = decompose(model, images(), "all", split_tokens=True)
    assert_exact(split)
    assert_exact(tokens_summed(split))


def test_sequence_first_transformer_is_exact() -> None:
    """Older open_clip runs the blocks on (tokens, batch, width): CLS is then row 0 of dim 0."""
    batch_first, sequence_first = tiny_clip(), tiny_clip()
    sequence_first.load_state_dict(batch_first.state_dict())
    sequence_first.visual.transformer.batch_first = False
    for block in sequence_first.visual.transformer.resblocks:
        block.attn.batch_first = False
    batch = images()
    split = decompose(sequence_first, batch, "all", split_tokens=True)
    assert_exact(split)
    assert_exact(tokens_summed(split))
    torch.testing.assert_close(split.contributions, decompose(batch_first, batch, "all").contributions)


def test_custom_text_clip_is_supported() -> None:
    assert_exact(decompose(tiny_clip(CustomTextCLIP), images()))


def test_hooks_are_removed() -> None:
    model = tiny_clip()
    decompose(model, images(), "all", split_tokens=True)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_patch_dropout_in_training_mode_is_refused() -> None:
    model = tiny_clip(patch_dropout=0.5).train()
    with pytest.raises(CompsearchError, match="patch dropout"):
        decompose(model, images())
    assert_exact(decompose(model.eval(), images()))


@pytest.mark.parametrize(
    ("variant", "problem"),
    [
        (dict(layers=(1, 1, 1, 1), width=8), "not an open_clip VisionTransformer"),
        (dict(attentional_pool=True), "attentional pooler"),
        (dict(pool_type="avg"), "pool_type='avg'"),
        (dict(scale_attn=True), "cannot split per head"),
        (dict(scale_attn_inner=True), "cannot split per head"),
    ],
)
def test_unsupported_towers_fail_clearly(variant: dict[str, Any], problem: str) -> None:
    with pytest.raises(UnsupportedModelError) as error:
        decompose(tiny_clip(**variant), images())
    assert problem in error.value.problem and error.value.hint


def test_fixture_clip_architecture_is_exact() -> None:
    """The project's world-trained fixture CLIP architecture, randomly initialised."""
    from indexer.world.fixture_clip import build_untrained, model_config

    vision = model_config()["vision_cfg"]
    side = vision["image_size"] // vision["patch_size"]
    model = perturbed(build_untrained()[0])
    split = decompose(model, images(size=vision["image_size"]), split_tokens=True)
    assert split.names[1] == f"{BLOCKS}.0.attn.h0"  # fewer than five blocks: all of them
    assert split.token_splits[0].grid == (side, side)
    assert_exact(split)
    assert_exact(tokens_summed(split))


@pytest.mark.slow
def test_trained_fixture_clip_is_exact(fixture_clip: Path) -> None:
    from mapping.models import load_model

    loaded = load_model(f"local-dir:{fixture_clip}")
    split = decompose(loaded.model, images(8, size=loaded.model.visual.image_size[0]), split_tokens=True)
    assert_exact(split)
    assert_exact(tokens_summed(split))


@pytest.mark.slow
def test_vit_b_16_at_real_size_is_exact() -> None:
    import open_clip

    model = open_clip.create_model("ViT-B-16", pretrained=None).eval()
    batch = images(2, 224)
    for first_block in (None, "all"):
        split = decompose(model, batch, first_block, split_tokens=True)
        assert_exact(split)
        assert_exact(tokens_summed(split))
    assert split.token_splits[0].grid == (14, 14)
    assert len(split.names) == 1 + 12 * 13 + 1
