"""RepDecompose on open_clip CLIP models: the normalised embedding, token-split layout, layouts and
towers it accepts or refuses (the contract every adapter keeps is in test_contract.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from compsearch.mapping.decompose import adapter_for, decompose, model_output
from compsearch.mapping.errors import CompsearchError, UnsupportedModelError
from tests.mapping.decompose.exactness import assert_exact
from tests.mapping.decompose.tiny_models import CLIP_IMAGE_SIZE, tiny_clip

BLOCKS = "visual.transformer.resblocks"


def images(batch: int = 3, size: int = CLIP_IMAGE_SIZE) -> torch.Tensor:
    return torch.randn(batch, 3, size, size)


def test_z_is_the_unit_norm_image_embedding() -> None:
    split = decompose(tiny_clip(), images())
    assert split.output.norm(dim=-1).allclose(torch.ones(3))


@pytest.mark.parametrize("first_block", [None, "all"])
def test_token_split_layout(first_block: str | None) -> None:
    model = tiny_clip(layers=6)
    split = decompose(model, images(), first_block, split_tokens=True)
    decomposed = 5 if first_block is None else 6
    assert [s.block for s in split.token_splits] == [f"{BLOCKS}.{i}" for i in range(6 - decomposed, 6)]
    for token_split in split.token_splits:
        assert token_split.contributions.shape == (3, 4, 1 + 4 * 4, 24)
        assert token_split.grid == (4, 4) and token_split.num_prefix_tokens == 1


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
    torch.testing.assert_close(split.contributions, decompose(batch_first, batch, "all").contributions)


def test_z_is_defined_for_a_tower_that_cannot_be_split() -> None:
    """A CLIP with a ResNet tower still has z (an alignment target needs only that)."""
    model, batch = tiny_clip(layers=(1, 1, 1, 1), width=8), images()
    with torch.no_grad():
        torch.testing.assert_close(model_output(model, batch), model.encode_image(batch, normalize=True))
    with pytest.raises(UnsupportedModelError, match="not an open_clip VisionTransformer"):
        decompose(model, batch)


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
        (dict(scale_attn=True), "mixing its heads"),
        (dict(scale_attn_inner=True), "mixing its heads"),
    ],
)
def test_unsupported_towers_fail_clearly(variant: dict[str, Any], problem: str) -> None:
    with pytest.raises(UnsupportedModelError) as error:
        decompose(tiny_clip(**variant), images())
    assert problem in error.value.problem and error.value.hint


@pytest.mark.slow
def test_trained_fixture_clip_is_exact(fixture_clip: Path) -> None:
    from compsearch.mapping.models import load_model

    loaded = load_model(f"local-dir:{fixture_clip}")
    split = decompose(loaded.model, images(8, size=loaded.model.visual.image_size[0]), split_tokens=True)
    assert_exact(split)


@pytest.mark.slow
def test_vit_b_16_at_real_size_is_exact() -> None:
    import open_clip

    model = open_clip.create_model("ViT-B-16", pretrained=None).eval()
    batch = images(2, 224)
    for first_block in (None, "all"):
        split = decompose(model, batch, first_block, split_tokens=True)
        assert_exact(split)
    assert split.token_splits[0].grid == (14, 14)
    assert len(split.names) == 1 + 12 * 13 + 1
