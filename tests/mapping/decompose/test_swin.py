"""RepDecompose on timm Swin Transformers: exactness of the head and head×token splits."""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformer, window_reverse

from mapping.decompose import Decomposition, adapter_for, decompose, linearised_layer_norm
from mapping.decompose.families.swin import SwinAdapter
from mapping.errors import CompsearchError, UnsupportedModelError

TOLERANCE = 1e-5
# 64 px, patch 2: stage grids 32, 16, 8, 4 with window 4, so stages 0–2 run shifted windows
# in their odd blocks, and three PatchMergings separate stage 0 from the output.
TINY = dict(img_size=64, patch_size=2, window_size=4, embed_dim=16, depths=(2, 1, 2, 1), num_heads=(2, 2, 4, 4))


def tiny_swin(**overrides: object) -> SwinTransformer:
    """A tiny random Swin whose norms and biases are far from their inits.

    Default inits (γ = 1, β = 0, zero biases) would hide a wrongly placed or missing term.
    """
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, **{**TINY, **overrides})
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name or "bias" in name:
                parameter.add_(0.5 * torch.randn_like(parameter))
    return model.eval()


@pytest.fixture(scope="module")
def model() -> SwinTransformer:
    torch.manual_seed(0)
    return tiny_swin()


def images(batch: int = 3, size: int = 64) -> torch.Tensor:
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


def test_the_tiny_model_exercises_shifted_windows_in_every_merged_stage(model: SwinTransformer) -> None:
    assert [any(any(block.shift_size) for block in layer.blocks) for layer in model.layers] == [True, False, True, False]


@pytest.mark.parametrize("first_block", [None, "all", "layers.1.blocks.0", "layers.3.blocks.0"])
def test_head_split_sums_to_z(model: SwinTransformer, first_block: str | None) -> None:
    batch = images()
    split = decompose(model, batch, first_block)
    assert_exact(split)
    torch.testing.assert_close(split.output, model.forward_head(model.forward_features(batch), pre_logits=True))


@pytest.mark.parametrize("first_block", [None, "all"])
def test_token_split_sums_to_the_heads_and_to_z(model: SwinTransformer, first_block: str | None) -> None:
    split = decompose(model, images(), first_block, split_tokens=True)
    blocks = ["layers.2.blocks.0", "layers.2.blocks.1", "layers.3.blocks.0"]
    if first_block == "all":
        blocks = ["layers.0.blocks.0", "layers.0.blocks.1", "layers.1.blocks.0", *blocks]
    assert [token_split.block for token_split in split.token_splits] == blocks
    grids = {"0": (32, 32), "1": (16, 16), "2": (8, 8), "3": (4, 4)}
    for token_split in split.token_splits:
        stage = token_split.block.split(".")[1]
        heads = TINY["num_heads"][int(stage)]
        assert token_split.grid == grids[stage] and token_split.num_prefix_tokens == 0
        assert token_split.contributions.shape == (3, heads, grids[stage][0] * grids[stage][1], 128)
        torch.testing.assert_close(
            token_split.contributions.sum(2), split.contributions[:, [split.index(n) for n in token_split.component_names]],
            rtol=1e-5, atol=1e-6,
        )
    assert_exact(tokens_summed(split))


def test_token_split_only_on_request_and_restores_the_fused_attention_switch(model: SwinTransformer) -> None:
    assert decompose(model, images()).token_splits is None
    switches = [block.attn.fused_attn for layer in model.layers for block in layer.blocks]
    decompose(model, images(), "all", split_tokens=True)
    assert [block.attn.fused_attn for layer in model.layers for block in layer.blocks] == switches


def test_components_are_named_by_module_path_in_forward_order(model: SwinTransformer) -> None:
    split = decompose(model, images())
    expected = ["init"]
    for block, heads in (("layers.2.blocks.0", 4), ("layers.2.blocks.1", 4), ("layers.3.blocks.0", 4)):
        expected += [f"{block}.attn.h{head}" for head in range(heads)] + [f"{block}.mlp"]
    assert split.names == expected + ["bias"]
    assert adapter_for(model, "tiny").block_names()[0] == "layers.0.blocks.0"


@pytest.mark.parametrize(
    ("depths", "first_block"),
    [((2, 2, 18, 2), "layers.2.blocks.14"), ((1, 1, 6, 1), "layers.2.blocks.2"), ((1, 1, 2, 1), "layers.2.blocks.0")],
)
def test_default_range_is_the_last_four_blocks_of_the_penultimate_stage(depths: tuple[int, ...], first_block: str) -> None:
    model = timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, img_size=32, window_size=2, embed_dim=8, depths=depths, num_heads=(1, 1, 1, 1)
    )
    assert SwinAdapter(model, "swin").default_first_block() == first_block


@torch.no_grad()
def per_token_readout(model: SwinTransformer, stage: int, branch: torch.Tensor, streams: dict[str, torch.Tensor]) -> torch.Tensor:
    """The reference route: carry a per-token branch (batch, H, W, dim) through every later
    PatchMerging and the final norm, each linearised per token, then take the token mean."""
    for later in range(stage + 1, len(model.layers)):
        merge = model.layers[later].downsample
        batch, height, width, dim = branch.shape
        branch = F.pad(branch, (0, 0, 0, width % 2, 0, height % 2))
        gathered = branch.reshape(batch, (height + 1) // 2, 2, (width + 1) // 2, 2, dim).permute(0, 1, 3, 4, 2, 5).flatten(3)
        normalised, _ = linearised_layer_norm(gathered.unsqueeze(-2), streams[f"merge{later}"], merge.norm)
        branch = merge.reduction(normalised.squeeze(-2))
    normalised, _ = linearised_layer_norm(branch.unsqueeze(-2), streams["final"], model.norm)
    return normalised.squeeze(-2).mean((1, 2))


@pytest.mark.parametrize("block_name", ["layers.2.blocks.1", "layers.3.blocks.0", "layers.0.blocks.1"])
def test_components_match_the_hooked_branches_read_out_per_token(model: SwinTransformer, block_name: str) -> None:
    """A block's MLP component, and the sum of its heads, equal its hooked branch outputs carried
    token by token to z — the direct route that the adapter's pooled per-slot readout avoids."""
    _, stage, _, index = block_name.split(".")
    stage = int(stage)
    block = model.layers[stage].blocks[int(index)]
    streams: dict[str, torch.Tensor] = {}
    handles = [
        block.register_forward_pre_hook(lambda m, args: streams.__setitem__("in", args[0])),
        block.register_forward_hook(lambda m, args, out: streams.__setitem__("out", out)),
        block.mlp.register_forward_hook(lambda m, args, out: streams.__setitem__("mlp", out)),
        model.norm.register_forward_pre_hook(lambda m, args: streams.__setitem__("final", args[0])),
    ]
    for later in range(stage + 1, len(model.layers)):
        handles.append(model.layers[later].downsample.norm.register_forward_pre_hook(
            lambda m, args, key=f"merge{later}": streams.__setitem__(key, args[0])
        ))
    batch = images()
    with torch.inference_mode():
        split = decompose(model, batch, block_name)
        model.forward_features(batch)
    for handle in handles:
        handle.remove()
    mlp = streams["mlp"].view_as(streams["in"])
    attention = streams["out"] - streams["in"] - mlp  # the attention branch, on the grid
    heads = [split.index(f"{block_name}.attn.h{head}") for head in range(block.attn.num_heads)]
    torch.testing.assert_close(split.component(f"{block_name}.mlp"), per_token_readout(model, stage, mlp, streams), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(split.contributions[:, heads].sum(1), per_token_readout(model, stage, attention, streams), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("index", [0, 1])
def test_key_tokens_of_a_window_carry_what_its_queries_output(model: SwinTransformer, index: int) -> None:
    """Window attention: a key token feeds only the queries of its own window. In stage 2
    (8×8 grid, 4×4 windows; ``blocks.1`` shifted by 2, so its windows wrap around the grid),
    the token split summed over one window's keys equals the heads' outputs at that window's
    queries, read out per token."""
    block_name, block = f"layers.2.blocks.{index}", model.layers[2].blocks[index]
    shift = block.shift_size[0]
    assert shift == 2 * index and block.window_size == (4, 4)
    streams: dict[str, torch.Tensor] = {}
    handles = [
        block.attn.proj.register_forward_pre_hook(lambda m, args: streams.__setitem__("mixed", args[0])),
        model.layers[3].downsample.norm.register_forward_pre_hook(lambda m, args: streams.__setitem__("merge3", args[0])),
        model.norm.register_forward_pre_hook(lambda m, args: streams.__setitem__("final", args[0])),
    ]
    batch = images()
    with torch.inference_mode():
        split = decompose(model, batch, block_name, split_tokens=True)
        model.forward_features(batch)
        heads, proj = block.attn.num_heads, block.attn.proj
        per_head = torch.einsum("wnhk,chk->wnhc", streams["mixed"].unflatten(-1, (heads, -1)), proj.weight.unflatten(1, (heads, -1)))
        # Back to the grid as the block itself does it: window_reverse, then undo the cyclic shift.
        per_head = window_reverse((per_head + proj.bias / heads).flatten(2).unflatten(1, (4, 4)), (4, 4), 8, 8)
        per_head = torch.roll(per_head, (shift, shift), (1, 2)).unflatten(-1, (heads, -1)).movedim(3, 1)
    for handle in handles:
        handle.remove()
    keys = split.token_splits[0].contributions.unflatten(2, (8, 8))
    window_of = (torch.arange(8) - shift) % 8 // 4  # window row (or column) of each grid row (or column)
    for window in [(0, 0), (1, 0), (0, 1)]:
        inside = (window_of[:, None] == window[0]) & (window_of[None, :] == window[1])  # (8, 8)
        queries = per_head * inside[:, :, None]
        read_out = per_token_readout(model, 2, queries.flatten(0, 1), {k: v.repeat_interleave(heads, 0) for k, v in streams.items()})
        torch.testing.assert_close(keys[:, :, inside].sum(2), read_out.unflatten(0, (-1, heads)), rtol=1e-4, atol=1e-5)


def test_odd_grids_and_padded_windows_split_exactly_but_refuse_the_token_split() -> None:
    # 40 px, patch 2: grids 20, 10, 5, 3; window 4 pads stages 1 and 2, and 5 → 3 merges a padded row.
    model = tiny_swin(img_size=40)
    batch = images(size=40)
    assert_exact(decompose(model, batch, "all"))
    with pytest.raises(CompsearchError, match="multiples of the window size"):
        decompose(model, batch, "all", split_tokens=True)


def test_training_mode_is_refused() -> None:
    with pytest.raises(CompsearchError, match="model.eval"):
        decompose(tiny_swin().train(), images())


def test_non_mean_pooling_is_refused() -> None:
    with pytest.raises(UnsupportedModelError, match="global_pool='max'"):
        decompose(tiny_swin(global_pool="max"), images())


def test_unknown_first_block_is_a_user_error(model: SwinTransformer) -> None:
    with pytest.raises(CompsearchError, match="not a decomposable block"):
        decompose(model, images(), "blocks.3")


@pytest.mark.slow
@pytest.mark.parametrize("first_block", [None, "all"])
def test_real_size_swin_base_is_exact(first_block: str | None) -> None:
    model = timm.create_model("swin_base_patch4_window7_224", pretrained=False).eval()
    split = decompose(model, torch.randn(2, 3, 224, 224), first_block, split_tokens=first_block is None)
    assert_exact(split)
    if first_block is None:
        assert split.names[1] == "layers.2.blocks.14.attn.h0" and len(split.names) == 2 + 4 * 17 + 2 * 33
        assert [s.contributions.shape[1:3] for s in split.token_splits] == [(16, 196)] * 4 + [(32, 49)] * 2
        assert_exact(tokens_summed(split))
